// Structured output and tool calls, as the OpenAI API asks for them: response_format (json_object,
// json_schema), llama.cpp's `grammar` (GBNF), and tools with tool_choice. Requests become grammars (compiled
// once per distinct constraint and kept in a GrammarCache); model output becomes tool_calls (ToolCallParser).
// No sockets here.
#pragma once

#include <list>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "grammar/matcher.h"
#include "server/json_body.h"

namespace rill::openai {

struct ModelInfo;

// Compiled grammars by their constraint's text, so that a schema many requests share is compiled (and its
// token sets computed) once. Thread-safe; the least recently used go first beyond `capacity`.
class GrammarCache {
 public:
  explicit GrammarCache(size_t capacity = 64) : capacity_(capacity) {}
  std::shared_ptr<const grammar::CompiledGrammar> get(
      const std::string& key, const std::function<grammar::Grammar()>& build,
      const std::shared_ptr<const grammar::Vocabulary>& vocab);

 private:
  size_t capacity_;
  std::mutex mu_;
  std::list<std::pair<std::string, std::shared_ptr<const grammar::CompiledGrammar>>> lru_;
  std::unordered_map<std::string, decltype(lru_)::iterator> index_;
};

// How a chat template's model writes tool calls: Hermes/Qwen style (<tool_call>{"name": ..., "arguments":
// ...}
// </tool_call>, as many as it likes) or Llama 3 style (the whole answer one JSON object {"name": ...,
// "parameters": ...}). Chosen from the template: one that mentions <tool_call> is Hermes.
enum class ToolStyle { Hermes, Json };
ToolStyle tool_style_of(const std::string& template_source);

// What a chat request asks about tools, read from tools / tool_choice / parallel_tool_calls.
struct ToolRequest {
  bool render = false;  // the template sees the tools
  bool parse = false;   // the output is parsed for tool calls
};

// The grammar a request's body asks for (response_format, grammar, or tool_choice "required" / a named
// function), or null; 400 naming the parameter for anything invalid or unsupported (a JSON Schema keyword is
// named in the message). `tools` is filled for chat requests.
std::shared_ptr<const grammar::CompiledGrammar> parse_constraint(const json& body, bool chat,
                                                                 const ModelInfo& model, ToolRequest* tools);

// Splits streamed model output into content and tool calls. feed() returns the content that can be sent now
// (holding back what may begin a call); calls() are the calls completed so far, each {"id", "type":
// "function", "function": {"name", "arguments"}} with arguments as JSON text.
class ToolCallParser {
 public:
  explicit ToolCallParser(ToolStyle style) : style_(style) {}
  std::string feed(const std::string& text);
  std::string finish();  // the end of the output: what is left (an unfinished call is content)
  const std::vector<json>& calls() const { return calls_; }

 private:
  bool add_call(const std::string& body);  // false: not a call
  ToolStyle style_;
  std::string pending_;
  bool inside_ = false;  // Hermes: between <tool_call> and </tool_call>
  int json_mode_ =
      -1;  // Json style: -1 undecided (only whitespace so far), 0 content, 1 a call being buffered
  std::vector<json> calls_;
};

}  // namespace rill::openai
