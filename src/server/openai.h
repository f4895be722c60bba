// The OpenAI API as rill speaks it: request bodies -> engine requests (validated, every error naming its
// parameter), stop strings matched across token boundaries, and response objects. No sockets here: the
// HTTP layer (http_server) calls these. No model logic either: tokens come from the engine.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "engine/sequence.h"
#include "kv/kv_policy.h"
#include "template/chat_template.h"
#include "tokenizer/tokenizer.h"

namespace rill::openai {

using json = nlohmann::ordered_json;

// An error with its HTTP status and OpenAI error type; `param` names the offending field when there is one.
class ApiError : public Error {
 public:
  ApiError(int status, std::string type, std::string message, std::string param = "")
      : Error(message), status(status), type(std::move(type)), param(std::move(param)) {}
  int status;
  std::string type;
  std::string param;
  json body() const;  // {"error": {"message", "type", "param", "code"}}
};
ApiError bad_request(const std::string& message, const std::string& param = "");

// What the server knows about its model.
struct ModelInfo {
  std::string name;
  const Tokenizer* tokenizer = nullptr;
  const ChatTemplate* chat_template = nullptr;  // null: chat completions are refused
  std::string bos_token, eos_token;
  std::vector<int32_t> stop_ids;  // e.g. the template's end-of-turn token
  int max_model_len = 0;
  int block_size = 16;
  KvPolicy default_kv_policy;  // for requests without "kv_policy" (rill serve --kv-policy)
};

struct CompletionRequest {
  bool chat = false;
  bool stream = false, include_usage = false, echo = false;
  int n = 1;
  int logprobs = -1;  // completions: logprobs=k; chat: top_logprobs when logprobs is true
  std::vector<Request> prompts;            // one engine request per prompt (n copies are made later)
  std::vector<std::string> prompt_texts;   // the prompt as text (echo)
  std::vector<std::string> stop;
  std::string user;
};

// The "kv_policy" extension field ({"type": "dense" | "sink" | "window", "sinks": 4, "window": 1024}), or the
// server's default when absent. 400 naming kv_policy when invalid.
KvPolicy parse_kv_policy(const json& body, const ModelInfo& model);

// The sampling and generation parameters shared by the completion and session routes (temperature, top_p,
// top_k, min_p, penalties, seed, ignore_eos, kv_policy), validated; 400 naming the parameter.
Request parse_request_params(const json& body, const ModelInfo& model);
// "stop": a string or up to 16 strings.
std::vector<std::string> parse_stop(const json& body);
// Range-checked integer field (fallback when absent or null); 400 naming `key`.
int64_t integer(const json& b, const char* key, int64_t fallback, int64_t lo, int64_t hi);
bool boolean(const json& b, const char* key, bool fallback);
// A list of token ids inside the model's vocabulary; 400 naming `param` otherwise.
std::vector<int32_t> token_array(const json& a, const ModelInfo& model, const std::string& param);

// Parses and validates a /v1/completions (chat=false) or /v1/chat/completions body.
CompletionRequest parse_completion(const json& body, bool chat, const ModelInfo& model);

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

// The `logprobs` object of a choice for one token (chat or completions format).
json token_logprobs(const Tokenizer& tok, const Event& e, bool chat);

std::string finish_reason(FinishReason r);
json usage(int prompt_tokens, int completion_tokens, int cached_tokens);

}  // namespace rill::openai
