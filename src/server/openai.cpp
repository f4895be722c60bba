#include "server/openai.h"

#include <algorithm>
#include <cstdint>

namespace rill::openai {

namespace {

// A prompt's tokens. Under the dense policy the context bounds the prompt, so tokenizing stops once it is
// passed: a 16 MiB prompt costs what max_model_len tokens cost, not 4M tokens of work and memory.
std::vector<int32_t> encode_prompt(const ModelInfo& m, const Request& r, const std::string& text,
                                   bool add_special, const char* param) {
  if (r.kv_policy.is_sink_window()) return m.tokenizer->encode(text, add_special);
  try {
    return m.tokenizer->encode_at_most(text, add_special, size_t(m.max_model_len));
  } catch (const TooManyTokens&) {
    throw bad_request("this model's maximum context length is " + std::to_string(m.max_model_len) +
                          " tokens; the prompt has more than that",
                      param);
  }
}

std::string message_text(const json& content, size_t index) {
  const std::string param = "messages[" + std::to_string(index) + "].content";
  if (content.is_string()) return content.get<std::string>();
  if (content.is_null()) return "";
  if (!content.is_array()) throw bad_request("'" + param + "' must be a string or a list of parts", param);
  std::string text;
  for (const auto& part : content) {
    if (!part.is_object() || part.value("type", "") != "text" || !part.contains("text") ||
        !part["text"].is_string())
      throw bad_request(
          "'" + param + "': only text parts ({\"type\": \"text\", \"text\": ...}) are supported", param);
    text += part["text"].get<std::string>();
  }
  return text;
}

}  // namespace

KvPolicy parse_kv_policy(const json& b, const ModelInfo& m) {
  if (!b.contains("kv_policy") || b["kv_policy"].is_null()) return m.default_kv_policy;
  const json& k = b["kv_policy"];
  if (!k.is_object() || !k.contains("type") || !k["type"].is_string())
    throw bad_request(
        "'kv_policy' must be an object like {\"type\": \"sink\", \"sinks\": 4, \"window\": 1024}",
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
    if (p.is_sink_window() && p.sinks == 0 && !k.contains("window"))
      p.window = std::min(1024, m.max_model_len);
    p.validate(m.block_size, m.max_model_len, "kv_policy");
    return p;
  } catch (const ApiError&) {
    throw;
  } catch (const Error& e) {
    throw bad_request(e.what(), "kv_policy");
  }
}

SessionGeneration parse_session_generation(const json& defaults, const json& call, const ModelInfo& model) {
  json b = defaults;
  for (const auto& [k, v] : call.items()) b[k] = v;  // the call's parameters over the defaults
  SessionGeneration g;
  g.request = parse_request_params(b, model);
  g.request.max_tokens =
      int(integer(b, "max_tokens", std::min(256, model.max_tokens_limit), 1, model.max_tokens_limit));
  g.stop = parse_stop(b);
  g.stream = boolean(b, "stream", true);
  g.request.grammar =
      parse_constraint(b, false, model, nullptr);  // response_format or grammar, as on completions
  return g;
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
  base.speculate = boolean(b, "speculative", true);  // rill: false opts out of the server's --spec
  base.stop_ids = m.stop_ids;
  base.kv_policy = parse_kv_policy(b, m);

  return base;
}

std::vector<std::string> parse_stop(const json& b) {
  std::vector<std::string> stop;
  if (b.contains("stop") && !b["stop"].is_null()) {
    const json& s = b["stop"];
    if (s.is_string())
      stop.push_back(s.get<std::string>());
    else if (s.is_array() && s.size() <= 16) {
      for (const auto& x : s) {
        if (!x.is_string())
          throw bad_request("'stop' must be a string or a list of up to 16 strings", "stop");
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
    throw ApiError(
        404, "not_found_error",
        "the model '" + b["model"].get<std::string>() + "' does not exist (this server has '" + m.name + "')",
        "model");
  CompletionRequest r;
  r.chat = chat;
  r.stream = boolean(b, "stream", false);
  if (b.contains("stream_options") && !b["stream_options"].is_null()) {
    if (!b["stream_options"].is_object())
      throw bad_request("'stream_options' must be an object", "stream_options");
    r.include_usage = boolean(b["stream_options"], "include_usage", false);
  }
  r.n = int(integer(b, "n", 1, 1, 16));
  if (b.contains("user") && !b["user"].is_null()) {
    if (!b["user"].is_string()) throw bad_request("'user' must be a string", "user");
    r.user = b["user"].get<std::string>();
  }

  Request base = parse_request_params(b, m);
  r.stop = parse_stop(b);
  base.grammar = parse_constraint(b, chat, m, &r.tools);

  if (chat) {
    if (boolean(b, "logprobs", false))
      r.logprobs = int(integer(b, "top_logprobs", 0, 0, 20));
    else if (b.contains("top_logprobs") && !b["top_logprobs"].is_null())
      throw bad_request("'top_logprobs' needs 'logprobs': true", "top_logprobs");
    if (!m.chat_template)
      throw bad_request("this model has no chat template: use /v1/completions", "messages");
    if (!b.contains("messages") || !b["messages"].is_array() || b["messages"].empty())
      throw bad_request("'messages' must be a non-empty list", "messages");
    json messages = json::array();
    for (size_t i = 0; i < b["messages"].size(); ++i) {
      const json& msg = b["messages"][i];
      const std::string param = "messages[" + std::to_string(i) + "]";
      if (!msg.is_object() || !msg.contains("role") || !msg["role"].is_string())
        throw bad_request("'" + param + "' must be an object with a 'role'", param);
      json copy = msg;  // keeps tool_calls and other fields the template may use
      if (msg.contains("content"))
        copy["content"] = msg["content"].is_null() ? json() : json(message_text(msg["content"], i));
      messages.push_back(copy);
    }
    json ctx = {
        {"messages", messages},     {"tools", r.tools.render ? b["tools"] : json()},
        {"documents", json()},      {"add_generation_prompt", boolean(b, "add_generation_prompt", true)},
        {"bos_token", m.bos_token}, {"eos_token", m.eos_token}};
    std::string text;
    try {
      text = m.chat_template->render(ctx);
    } catch (const Error& e) {
      throw bad_request(std::string("the chat template rejected these messages: ") + e.what(), "messages");
    }
    base.prompt = encode_prompt(m, base, text, false, "messages");
    r.prompt_texts.push_back(text);
    r.prompts.push_back(base);
  } else {
    r.logprobs = int(integer(b, "logprobs", -1, 0, 20));
    r.echo = boolean(b, "echo", false);
    if (!b.contains("prompt")) throw bad_request("'prompt' is required", "prompt");
    const json& p = b["prompt"];
    auto add = [&](std::vector<int32_t> ids, std::string text) {
      Request q = base;
      q.prompt = std::move(ids);
      r.prompts.push_back(std::move(q));
      r.prompt_texts.push_back(std::move(text));
    };
    auto add_text = [&](const std::string& text) { add(encode_prompt(m, base, text, true, "prompt"), text); };
    auto add_ids = [&](const json& a) {
      std::vector<int32_t> ids = token_array(a, m.tokenizer->vocab_size(), "prompt");
      std::string text = m.tokenizer->decode(ids);
      add(std::move(ids), std::move(text));
    };
    if (p.is_string()) {
      add_text(p.get<std::string>());
    } else if (p.is_array() && !p.empty() && p[0].is_number_integer()) {
      add_ids(p);
    } else if (p.is_array() && !p.empty()) {
      for (const auto& x : p) {
        if (x.is_string()) {
          add_text(x.get<std::string>());
        } else if (x.is_array()) {
          add_ids(x);
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
    if (q.prompt.empty())
      throw bad_request("the prompt is empty after tokenization", chat ? "messages" : "prompt");
    q.logprobs = r.logprobs;
    const int room = m.max_model_len - int(q.prompt.size());
    const char* key = b.contains("max_completion_tokens") && !b["max_completion_tokens"].is_null()
                          ? "max_completion_tokens"
                          : "max_tokens";
    // Under the sink-window KV policy there is no context limit: a chat answer defaults to the model's
    // context.
    const int64_t fallback = std::min<int64_t>(
        chat ? (q.kv_policy.is_sink_window() ? m.max_model_len : std::max(1, room)) : 16, m.max_tokens_limit);
    q.max_tokens = int(integer(b, key, fallback, 1, m.max_tokens_limit));
    if (key != std::string("max_tokens"))
      (void)integer(b, "max_tokens", 1, 1, m.max_tokens_limit);  // checked anyway
    if (!q.kv_policy.is_sink_window() && int64_t(q.prompt.size()) + q.max_tokens > m.max_model_len)
      throw bad_request("this model's maximum context length is " + std::to_string(m.max_model_len) +
                            " tokens; the prompt has " + std::to_string(q.prompt.size()) + " tokens and " +
                            key + " is " + std::to_string(q.max_tokens),
                        key);
  }
  return r;
}

}  // namespace rill::openai
