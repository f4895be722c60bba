// What goes back to a client: each choice's text as the engine's tokens arrive (detokenized incrementally,
// held back where a stop string may begin), and the OpenAI reply objects built from it: streamed chunks,
// whole responses, usage and log-probabilities. No sockets here.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "engine/sequence.h"
#include "server/json_body.h"
#include "server/metrics.h"
#include "server/openai.h"
#include "tokenizer/tokenizer.h"

namespace rill::openai {

// Holds back text that might be the start of a stop string; stops at the first stop string.
class StopMatcher {
 public:
  explicit StopMatcher(std::vector<std::string> stops) : stops_(std::move(stops)) {}
  // Adds generated text; returns the text that can be sent now. Once stopped() is true, nothing more.
  std::string feed(const std::string& delta);
  std::string flush();  // the end of generation: whatever was held back
  bool stopped() const { return stopped_; }

 private:
  std::vector<std::string> stops_;
  std::string pending_;
  bool stopped_ = false;
};

// One choice of a completion (or a session's generation): its engine stream and the text it has produced so
// far.
struct Choice {
  Choice(const Tokenizer& tokenizer, const std::vector<int32_t>& prompt, std::vector<std::string> stops);

  // Applies one engine event: returns the text it adds, and records the token's latency in `metrics`. A stop
  // string ends the choice (its stream is cancelled).
  std::string apply(const Event& e, ServerMetrics& metrics);
  std::string finish_reason() const;  // "stop", "length", "tool_calls", ...

  int index = 0;
  int prompt_index = 0;
  std::shared_ptr<RequestStream> stream;
  std::unique_ptr<IncrementalDecoder> detok;
  std::unique_ptr<StopMatcher> stop;
  std::unique_ptr<ToolCallParser> tools;  // chat with tools: the output's tool calls
  size_t calls_sent = 0;                  // streaming: tool calls already sent
  std::string text;
  json logprobs = json::array();
  bool done = false, stopped_by_string = false;
  int stop_tokens = 0;  // stopped by a string: the tokens up to the one that completed it (usage counts these)
  Event end;
  double submitted = 0, last_token = 0;
  int tokens = 0;
};

double now_seconds();
int64_t unix_time();

// The `logprobs` object of a choice for one token (chat or completions format).
json token_logprobs(const Tokenizer& tok, const Event& e, bool chat);
std::string finish_reason(FinishReason r);
json usage(int prompt_tokens, int completion_tokens, int cached_tokens);

// A completion's reply objects. `id` and `created` are the completion's; `model` its model's name.
struct CompletionReply {
  const CompletionRequest& request;
  std::string id, model;
  int64_t created = 0;

  // One streamed chunk of choice `index`: its new text, its token's log-probabilities (or null), its finish
  // reason (or empty), and, for the first chat chunk, the assistant role.
  json chunk(int index, const std::string& text, const json& logprob, const std::string& finish,
             bool role) const;
  // A chunk of choice `index` with tool calls calls[from..] (delta.tool_calls, each with its index).
  json tool_calls_chunk(int index, const std::vector<json>& calls, size_t from) const;
  // The chunk after the last choice's with the usage of them all (stream_options.include_usage).
  json usage_chunk(const std::vector<Choice>& choices) const;
  // The whole response (not streamed); 500 when a choice failed.
  json response(const std::vector<Choice>& choices) const;
  json total_usage(const std::vector<Choice>& choices) const;
};

}  // namespace rill::openai
