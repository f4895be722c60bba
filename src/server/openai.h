// OpenAI requests as rill reads them: completion, chat and session bodies -> engine requests (validated,
// every error a 400 naming its parameter). No sockets here (http_server and the route files call these), and
// no model logic: the engine runs what these describe.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "engine/sequence.h"
#include "kv/kv_cache.h"
#include "kv/kv_policy.h"
#include "server/json_body.h"
#include "server/structured.h"
#include "template/chat_template.h"
#include "tokenizer/tokenizer.h"

namespace rill::openai {

inline constexpr int kDefaultMaxTokensLimit = 262144;

// What the server knows about its model, and the limits it puts on requests for it.
struct ModelInfo {
  std::string name;
  const Tokenizer* tokenizer = nullptr;
  const ChatTemplate* chat_template = nullptr;  // null: chat completions are refused
  std::string bos_token, eos_token;
  std::vector<int32_t> stop_ids;  // e.g. the template's end-of-turn token
  int max_model_len = 0;
  int block_size = kDefaultBlockSize;
  KvPolicy default_kv_policy;  // for requests without "kv_policy" (rill serve --kv-policy)
  // The largest max_tokens one request or session generation may ask for (rill serve --max-tokens-limit).
  // Under the dense policy the context bounds it anyway; under sink and window nothing else does.
  int max_tokens_limit = kDefaultMaxTokensLimit;
  // Constrained decoding: the tokens' bytes (null: response_format, grammar and forced tool calls are
  // refused), the compiled grammars, and how the chat template's model writes tool calls.
  std::shared_ptr<const grammar::Vocabulary> vocab;
  std::shared_ptr<GrammarCache> grammars;
  ToolStyle tool_style = ToolStyle::Json;
};

struct CompletionRequest {
  bool chat = false;
  bool stream = false, include_usage = false, echo = false;
  int n = 1;
  int logprobs = -1;                      // completions: logprobs=k; chat: top_logprobs when logprobs is true
  std::vector<Request> prompts;           // one engine request per prompt (n copies are made later)
  std::vector<std::string> prompt_texts;  // the prompt as text (echo)
  std::vector<std::string> stop;
  std::string user;
  ToolRequest tools;  // chat: whether the output is parsed for tool calls
};

// The "kv_policy" extension field ({"type": "dense" | "sink" | "window", "sinks": 4, "window": 1024}), or the
// server's default when absent. 400 naming kv_policy when invalid.
KvPolicy parse_kv_policy(const json& body, const ModelInfo& model);

// The sampling and generation parameters shared by the completion and session routes (temperature, top_p,
// top_k, min_p, penalties, seed, ignore_eos, kv_policy), validated; 400 naming the parameter.
Request parse_request_params(const json& body, const ModelInfo& model);
// A session generation's body over the session's defaults (both JSON objects): the parameters above plus
// max_tokens (default 256), the stop strings and whether it streams (default true). 400 naming the parameter.
struct SessionGeneration {
  Request request;
  std::vector<std::string> stop;
  bool stream = true;
};
SessionGeneration parse_session_generation(const json& defaults, const json& call, const ModelInfo& model);
// "stop": a string or up to 16 strings.
std::vector<std::string> parse_stop(const json& body);
// Parses and validates a /v1/completions (chat=false) or /v1/chat/completions body.
CompletionRequest parse_completion(const json& body, bool chat, const ModelInfo& model);

}  // namespace rill::openai
