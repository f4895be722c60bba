#include "server/openai.h"

#include <cmath>

namespace rill::openai {

json ApiError::body() const {
  return {{"error", {{"message", what()}, {"type", type}, {"param", param.empty() ? json() : json(param)}, {"code", status}}}};
}

ApiError bad_request(const std::string& message, const std::string& param) {
  return ApiError(400, "invalid_request_error", message, param);
}

namespace {

// Typed field access: absent or null gives the fallback; a wrong type or range is a 400 naming the field.
double number(const json& b, const char* key, double fallback, double lo, double hi) {
  if (!b.contains(key) || b[key].is_null()) return fallback;
  if (!b[key].is_number()) throw bad_request(std::string("'") + key + "' must be a number", key);
  const double v = b[key].get<double>();
  if (!std::isfinite(v) || v < lo || v > hi)
    throw bad_request(std::string("'") + key + "' must be between " + json(lo).dump() + " and " + json(hi).dump() +
                          " (got " + json(v).dump() + ")",
                      key);
  return v;
}

}  // namespace

int64_t integer(const json& b, const char* key, int64_t fallback, int64_t lo, int64_t hi) {
  if (!b.contains(key) || b[key].is_null()) return fallback;
  if (!b[key].is_number_integer()) throw bad_request(std::string("'") + key + "' must be an integer", key);
  const int64_t v = b[key].get<int64_t>();
  if (v < lo || v > hi)
    throw bad_request(std::string("'") + key + "' must be between " + std::to_string(lo) + " and " + std::to_string(hi) +
                          " (got " + std::to_string(v) + ")",
                      key);
  return v;
}
std::vector<int32_t> token_array(const json& a, const ModelInfo& m, const std::string& param) {
  if (!a.is_array()) throw bad_request("'" + param + "' must be a list of token ids", param);
  std::vector<int32_t> ids;
  for (const auto& t : a) {
    if (!t.is_number_integer()) throw bad_request("'" + param + "' token arrays must hold integers", param);
    const int64_t v = t.get<int64_t>();
    if (v < 0 || v >= m.tokenizer->vocab_size())
      throw bad_request("'" + param + "' token " + std::to_string(v) + " is outside the vocabulary", param);
    ids.push_back(int32_t(v));
  }
  return ids;
}

bool boolean(const json& b, const char* key, bool fallback) {
  if (!b.contains(key) || b[key].is_null()) return fallback;
  if (!b[key].is_boolean()) throw bad_request(std::string("'") + key + "' must be true or false", key);
  return b[key].get<bool>();
}

namespace {

std::string message_text(const json& content, size_t index) {
  const std::string param = "messages[" + std::to_string(index) + "].content";
  if (content.is_string()) return content.get<std::string>();
  if (content.is_null()) return "";
  if (!content.is_array()) throw bad_request("'" + param + "' must be a string or a list of parts", param);
  std::string text;
  for (const auto& part : content) {
    if (!part.is_object() || part.value("type", "") != "text" || !part.contains("text") || !part["text"].is_string())
      throw bad_request("'" + param + "': only text parts ({\"type\": \"text\", \"text\": ...}) are supported", param);
    text += part["text"].get<std::string>();
  }
  return text;
}

}  // namespace

KvPolicy parse_kv_policy(const json& b, const ModelInfo& m) {
  if (!b.contains("kv_policy") || b["kv_policy"].is_null()) return m.default_kv_policy;
  const json& k = b["kv_policy"];
  if (!k.is_object() || !k.contains("type") || !k["type"].is_string())
    throw bad_request("'kv_policy' must be an object like {\"type\": \"sink\", \"sinks\": 4, \"window\": 1024}",
                      "kv_policy");
  int sinks = 0, window = 0;
  try {
    sinks = int(integer(k, "sinks", 4, 0, 1 << 20));
    window = int(integer(k, "window", std::min(1024, m.max_model_len - sinks), 1, 1 << 30));
  } catch (const ApiError& e) {
    throw bad_request(std::string("kv_policy: ") + e.what(), "kv_policy." + e.param);
  }
  try {
    KvPolicy p = KvPolicy::parse(k["type"].get<std::string>(), sinks, window, "kv_policy.type");
    if (p.is_sink_window() && p.sinks == 0 && !k.contains("window")) p.window = std::min(1024, m.max_model_len);
    p.validate(m.block_size, m.max_model_len, "kv_policy");
    return p;
  } catch (const ApiError&) {
    throw;
  } catch (const Error& e) {
    throw bad_request(e.what(), "kv_policy");
  }
}

Request parse_request_params(const json& b, const ModelInfo& m) {
  Request base;
  base.sampling.temperature = float(number(b, "temperature", 1.0, 0.0, 2.0));
  base.sampling.top_p = float(number(b, "top_p", 1.0, 0.0, 1.0));
  if (base.sampling.top_p <= 0) throw bad_request("'top_p' must be greater than 0", "top_p");
  base.sampling.top_k = int(integer(b, "top_k", 0, -1, 1 << 20));
  if (base.sampling.top_k < 0) base.sampling.top_k = 0;  // -1: off, as in vLLM
  base.sampling.min_p = float(number(b, "min_p", 0.0, 0.0, 1.0));
  base.sampling.presence_penalty = float(number(b, "presence_penalty", 0.0, -2.0, 2.0));
  base.sampling.frequency_penalty = float(number(b, "frequency_penalty", 0.0, -2.0, 2.0));
  base.sampling.repetition_penalty = float(number(b, "repetition_penalty", 1.0, 0.01, 10.0));
  if (b.contains("seed") && !b["seed"].is_null()) {
    base.sampling.seed = uint64_t(integer(b, "seed", 0, INT64_MIN, INT64_MAX));
    base.sampling.has_seed = true;
  }
  base.ignore_eos = boolean(b, "ignore_eos", false);
  base.stop_ids = m.stop_ids;
  base.kv_policy = parse_kv_policy(b, m);

  return base;
}

std::vector<std::string> parse_stop(const json& b) {
  std::vector<std::string> stop;
  if (b.contains("stop") && !b["stop"].is_null()) {
    const json& s = b["stop"];
    if (s.is_string()) stop.push_back(s.get<std::string>());
    else if (s.is_array() && s.size() <= 16) {
      for (const auto& x : s) {
        if (!x.is_string()) throw bad_request("'stop' must be a string or a list of up to 16 strings", "stop");
        stop.push_back(x.get<std::string>());
      }
    } else {
      throw bad_request("'stop' must be a string or a list of up to 16 strings", "stop");
    }
    for (const auto& x : stop)
      if (x.empty()) throw bad_request("'stop' strings must not be empty", "stop");
  }

  return stop;
}

CompletionRequest parse_completion(const json& b, bool chat, const ModelInfo& m) {
  if (!b.is_object()) throw bad_request("the request body must be a JSON object");
  if (b.contains("model") && !b["model"].is_string()) throw bad_request("'model' must be a string", "model");
  if (b.contains("model") && b["model"].get<std::string>() != m.name)
    throw ApiError(404, "not_found_error", "the model '" + b["model"].get<std::string>() + "' does not exist (this server has '" + m.name + "')", "model");
  CompletionRequest r;
  r.chat = chat;
  r.stream = boolean(b, "stream", false);
  if (b.contains("stream_options") && !b["stream_options"].is_null()) {
    if (!b["stream_options"].is_object()) throw bad_request("'stream_options' must be an object", "stream_options");
    r.include_usage = boolean(b["stream_options"], "include_usage", false);
  }
  r.n = int(integer(b, "n", 1, 1, 16));
  if (b.contains("user") && !b["user"].is_null()) {
    if (!b["user"].is_string()) throw bad_request("'user' must be a string", "user");
    r.user = b["user"].get<std::string>();
  }

  Request base = parse_request_params(b, m);
  r.stop = parse_stop(b);

  if (chat) {
    if (boolean(b, "logprobs", false)) r.logprobs = int(integer(b, "top_logprobs", 0, 0, 20));
    else if (b.contains("top_logprobs") && !b["top_logprobs"].is_null())
      throw bad_request("'top_logprobs' needs 'logprobs': true", "top_logprobs");
    if (!m.chat_template) throw bad_request("this model has no chat template: use /v1/completions", "messages");
    if (!b.contains("messages") || !b["messages"].is_array() || b["messages"].empty())
      throw bad_request("'messages' must be a non-empty list", "messages");
    json messages = json::array();
    for (size_t i = 0; i < b["messages"].size(); ++i) {
      const json& msg = b["messages"][i];
      const std::string param = "messages[" + std::to_string(i) + "]";
      if (!msg.is_object() || !msg.contains("role") || !msg["role"].is_string())
        throw bad_request("'" + param + "' must be an object with a 'role'", param);
      json copy = msg;  // keeps tool_calls and other fields the template may use
      if (msg.contains("content")) copy["content"] = msg["content"].is_null() ? json() : json(message_text(msg["content"], i));
      messages.push_back(copy);
    }
    json ctx = {{"messages", messages},
                {"tools", b.contains("tools") ? b["tools"] : json()},
                {"documents", json()},
                {"add_generation_prompt", boolean(b, "add_generation_prompt", true)},
                {"bos_token", m.bos_token},
                {"eos_token", m.eos_token}};
    std::string text;
    try {
      text = m.chat_template->render(ctx);
    } catch (const Error& e) {
      throw bad_request(std::string("the chat template rejected these messages: ") + e.what(), "messages");
    }
    base.prompt = m.tokenizer->encode(text, false);
    r.prompt_texts.push_back(text);
    r.prompts.push_back(base);
  } else {
    r.logprobs = int(integer(b, "logprobs", -1, 0, 20));
    r.echo = boolean(b, "echo", false);
    if (!b.contains("prompt")) throw bad_request("'prompt' is required", "prompt");
    const json& p = b["prompt"];
    auto add_text = [&](const std::string& text) {
      Request q = base;
      q.prompt = m.tokenizer->encode(text, true);
      r.prompts.push_back(q);
      r.prompt_texts.push_back(text);
    };
    if (p.is_string()) {
      add_text(p.get<std::string>());
    } else if (p.is_array() && !p.empty() && p[0].is_number_integer()) {
      Request q = base;
      q.prompt = token_array(p, m, "prompt");
      r.prompt_texts.push_back(m.tokenizer->decode(q.prompt));
      r.prompts.push_back(q);
    } else if (p.is_array() && !p.empty()) {
      for (const auto& x : p) {
        if (x.is_string()) {
          add_text(x.get<std::string>());
        } else if (x.is_array()) {
          Request q = base;
          q.prompt = token_array(x, m, "prompt");
          r.prompt_texts.push_back(m.tokenizer->decode(q.prompt));
          r.prompts.push_back(q);
        } else {
          throw bad_request("'prompt' must be a string, a list of strings, or token ids", "prompt");
        }
      }
    } else {
      throw bad_request("'prompt' must be a string, a list of strings, or token ids", "prompt");
    }
    if (r.prompts.size() > 64) throw bad_request("'prompt' may hold at most 64 prompts", "prompt");
  }
  for (auto& q : r.prompts) {
    if (q.prompt.empty()) throw bad_request("the prompt is empty after tokenization", chat ? "messages" : "prompt");
    q.logprobs = r.logprobs;
    const int room = m.max_model_len - int(q.prompt.size());
    const char* key = b.contains("max_completion_tokens") && !b["max_completion_tokens"].is_null() ? "max_completion_tokens" : "max_tokens";
    // Under the sink-window KV policy there is no context limit: a chat answer defaults to the model's context.
    const int64_t fallback = chat ? (q.kv_policy.is_sink_window() ? m.max_model_len : std::max(1, room)) : 16;
    q.max_tokens = int(integer(b, key, fallback, 1, 1 << 30));
    if (!q.kv_policy.is_sink_window() && int64_t(q.prompt.size()) + q.max_tokens > m.max_model_len)
      throw bad_request("this model's maximum context length is " + std::to_string(m.max_model_len) +
                            " tokens; the prompt has " + std::to_string(q.prompt.size()) + " tokens and " + key + " is " +
                            std::to_string(q.max_tokens),
                        key);
  }
  return r;
}

std::string StopMatcher::feed(const std::string& delta) {
  if (stopped_) return "";
  pending_ += delta;
  // The earliest stop string wins.
  size_t at = std::string::npos;
  for (const auto& s : stops_) at = std::min(at, pending_.find(s));
  if (at != std::string::npos) {
    stopped_ = true;
    std::string out = pending_.substr(0, at);
    pending_.clear();
    return out;
  }
  // Hold back the longest suffix that begins some stop string.
  size_t hold = 0;
  for (const auto& s : stops_)
    for (size_t k = std::min(s.size() - 1, pending_.size()); k > hold; --k)
      if (pending_.compare(pending_.size() - k, k, s, 0, k) == 0) {
        hold = k;
        break;
      }
  std::string out = pending_.substr(0, pending_.size() - hold);
  pending_.erase(0, pending_.size() - hold);
  return out;
}

std::string StopMatcher::flush() {
  std::string out;
  if (!stopped_) out.swap(pending_);
  return out;
}

json token_logprobs(const Tokenizer& tok, const Event& e, bool chat) {
  auto text = [&](int32_t id) { return tok.decode({id}, false); };
  if (chat) {
    json top = json::array();
    for (const auto& [id, lp] : e.top_logprobs) top.push_back({{"token", text(id)}, {"logprob", lp}});
    return {{"token", text(e.token)}, {"logprob", e.logprob}, {"top_logprobs", top}};
  }
  json top = json::object();
  for (const auto& [id, lp] : e.top_logprobs) top[text(id)] = lp;
  return {{"token", text(e.token)}, {"logprob", e.logprob}, {"top_logprobs", top}};
}

std::string finish_reason(FinishReason r) {
  switch (r) {
    case FinishReason::Stop: return "stop";
    case FinishReason::Length: return "length";
    case FinishReason::Cancelled: return "abort";
    case FinishReason::Error: return "error";
    default: return "";
  }
}

json usage(int prompt_tokens, int completion_tokens, int cached_tokens) {
  return {{"prompt_tokens", prompt_tokens},
          {"completion_tokens", completion_tokens},
          {"total_tokens", prompt_tokens + completion_tokens},
          {"prompt_tokens_details", {{"cached_tokens", cached_tokens}}}};
}

}  // namespace rill::openai
