#include "server/session_routes.h"

#include <algorithm>
#include <cstdio>
#include <memory>
#include <mutex>
#include <unordered_map>

#include "server/completions.h"
#include "server/responses.h"

namespace rill {

using openai::json;

namespace {

// A session's name: "sess-" and 32 hex digits, its random id and secret (SessionStatus). Nothing but the name
// reaches a session, so one client cannot guess another's from its own.
std::string session_name(const SessionStatus& st) {
  char hex[33];
  std::snprintf(hex, sizeof hex, "%016llx%016llx", static_cast<unsigned long long>(st.id),
                static_cast<unsigned long long>(st.secret));
  return std::string("sess-") + hex;
}

// The key that made session `id` ("" without authentication, or when it is not known).
std::string owner_of(ServerContext& ctx, uint64_t id) {
  std::lock_guard<std::mutex> lk(ctx.owners.m);
  auto it = ctx.owners.by_session.find(id);
  return it == ctx.owners.by_session.end() ? std::string() : it->second;
}

// The engine's sessions that `caller` may see; forgets the owners of sessions that are gone (deleted,
// expired).
std::vector<SessionStatus> sessions_of(ServerContext& ctx, const std::string& caller) {
  std::vector<SessionStatus> all = ctx.engine.list_sessions(), mine;
  std::lock_guard<std::mutex> lk(ctx.owners.m);
  std::unordered_map<uint64_t, std::string> live;
  for (const auto& st : all) {
    auto it = ctx.owners.by_session.find(st.id);
    const std::string owner = it == ctx.owners.by_session.end() ? std::string() : it->second;
    if (it != ctx.owners.by_session.end()) live.emplace(st.id, owner);
    if (owner == caller) mine.push_back(st);
  }
  ctx.owners.by_session.swap(live);
  return mine;
}

// The status of the session `text` names, if `caller` made it; 404 for a malformed name, an unknown id, a
// wrong secret or another key's session alike.
SessionStatus session_named(ServerContext& ctx, const std::string& text, const std::string& caller) {
  const openai::ApiError missing(404, "not_found_error", "no session '" + text + "'");
  if (text.size() != 37 || text.rfind("sess-", 0) != 0 ||
      text.find_first_not_of("0123456789abcdef", 5) != std::string::npos)
    throw missing;
  const uint64_t id = std::stoull(text.substr(5, 16), nullptr, 16),
                 secret = std::stoull(text.substr(21), nullptr, 16);
  SessionStatus st;
  try {
    st = ctx.engine.session_status(id);
  } catch (const SessionNotFound&) {
    throw missing;
  }
  if (st.secret != secret || owner_of(ctx, id) != caller) throw missing;
  return st;
}

json policy_json(const KvPolicy& p) {
  if (!p.is_sink_window()) return {{"type", "dense"}};
  return {{"type", p.sinks > 0 ? "sink" : "window"}, {"sinks", p.sinks}, {"window", p.window}};
}

// The defaults a session was created with (kept by the engine as the JSON text of an object).
json defaults_of(const SessionStatus& st) {
  return st.defaults.empty() ? json::object() : json::parse(st.defaults);
}

json session_json(const ServerContext& ctx, const SessionStatus& st) {
  return {{"id", session_name(st)},
          {"object", "session"},
          {"model", ctx.model.name},
          {"kv_policy", policy_json(st.kv_policy)},
          {"tokens", st.tokens},
          {"tokens_cached", st.tokens_cached},
          {"pending_tokens", st.pending},
          {"kv_blocks", st.blocks},
          {"kv_bytes", st.kv_bytes},
          {"generating", st.generating},
          {"idle_seconds", st.idle_seconds},
          {"defaults", defaults_of(st)}};
}

// The tokens an append adds: exactly one of text, token ids, or chat messages rendered with the template (the
// BOS token only at the session's start).
std::vector<int32_t> append_tokens(ServerContext& ctx, uint64_t id, const json& b) {
  const openai::ModelInfo& model = ctx.model;
  auto first = [&] { return ctx.engine.session_status(id).tokens == 0; };
  (void)openai::boolean(b, "add_generation_prompt", false);  // checked whatever is appended
  const int keys = int(b.contains("text")) + int(b.contains("tokens")) + int(b.contains("messages"));
  if (keys != 1) throw openai::bad_request("give exactly one of 'text', 'tokens' or 'messages'");
  if (b.contains("text")) {
    if (!b["text"].is_string()) throw openai::bad_request("'text' must be a string", "text");
    return model.tokenizer->encode(b["text"].get<std::string>(), first());
  }
  if (b.contains("tokens")) return openai::token_array(b["tokens"], model.tokenizer->vocab_size(), "tokens");
  if (!model.chat_template)
    throw openai::bad_request("this model has no chat template: append 'text'", "messages");
  if (!b["messages"].is_array() || b["messages"].empty())
    throw openai::bad_request("'messages' must be a non-empty list", "messages");
  for (size_t i = 0; i < b["messages"].size(); ++i) {
    const json& msg = b["messages"][i];
    if (!msg.is_object() || !msg.contains("role") || !msg["role"].is_string() || !msg.contains("content") ||
        !msg["content"].is_string())
      throw openai::bad_request(
          "'messages[" + std::to_string(i) + "]' must be {\"role\": ..., \"content\": \"...\"}", "messages");
  }
  json ctx_vars = {{"messages", b["messages"]},
                   {"add_generation_prompt", openai::boolean(b, "add_generation_prompt", false)},
                   {"bos_token", first() ? model.bos_token : std::string()},
                   {"eos_token", model.eos_token}};
  std::string text;
  try {
    text = model.chat_template->render(ctx_vars);
  } catch (const Error& e) {
    throw openai::bad_request(std::string("the chat template rejected these messages: ") + e.what(),
                              "messages");
  }
  return model.tokenizer->encode(text, false);
}

// The reply to a whole generation, and the last chunk of a streamed one.
json generation_json(const ServerContext& ctx, const std::string& name, const openai::Choice& c) {
  return {{"id", name},
          {"object", "session.generation"},
          {"model", ctx.model.name},
          {"text", c.text},
          {"finish_reason", c.finish_reason()},
          {"usage",
           {{"prompt_tokens", c.end.prompt_tokens},
            {"completion_tokens", c.end.completion_tokens},
            {"total_tokens", c.end.prompt_tokens + c.end.completion_tokens}}}};
}

// Streams a generation's text as server-sent events; false once the client is gone.
bool stream_generation(ServerContext& ctx, const std::string& name, openai::Choice& c, http::Sink& sink,
                       Until deadline) {
  while (!c.done) {
    if (std::chrono::steady_clock::now() > deadline)
      return sink.write(stream_timeout_event(ctx) + "data: [DONE]\n\n");
    const auto e = c.stream->next(0.05);
    if (!e) {
      if (!sink.alive()) return false;  // the client left
      continue;
    }
    const std::string text = c.apply(*e, ctx.metrics);
    if (c.done && c.end.finish == FinishReason::Cancelled && !c.stopped_by_string)
      return sink.write(stream_error_event(c.end) + "data: [DONE]\n\n");
    if (text.empty()) continue;
    const json chunk = {{"id", name}, {"object", "session.chunk"}, {"model", ctx.model.name}, {"text", text}};
    const std::string line = "data: " + openai::dump(chunk) + "\n\n";
    if (!sink.write(line)) return false;
  }
  json last = generation_json(ctx, name, c);
  last["object"] = "session.chunk";
  last["text"] = "";
  const std::string line = "data: " + openai::dump(last) + "\n\ndata: [DONE]\n\n";
  return sink.write(line);
}

}  // namespace

void create_session(ServerContext& ctx, const http::Request& req, http::Response& res) {
  const json b = openai::parse_body(req.body);
  const openai::ModelInfo& model = ctx.model;
  if (b.contains("model") && (!b["model"].is_string() || b["model"].get<std::string>() != model.name))
    throw openai::ApiError(
        404, "not_found_error",
        "the model " + b["model"].dump() + " does not exist (this server has '" + model.name + "')", "model");
  // Sessions are unbounded streams: the sink policy unless the body (or the server default) says otherwise.
  openai::ModelInfo m = model;
  if (!m.default_kv_policy.is_sink_window())
    m.default_kv_policy = KvPolicy::parse("sink", 4, std::min(1024, model.max_model_len - 4));
  const KvPolicy policy = openai::parse_kv_policy(b, m);
  const json defaults = b.contains("defaults") ? b["defaults"] : json::object();
  if (!defaults.is_object())
    throw openai::bad_request("'defaults' must be an object of generation parameters", "defaults");
  openai::parse_session_generation(defaults, json::object(), model);  // validated now, used by every generate
  const std::string caller = ctx.caller(req.header("Authorization"));
  const size_t limit = ctx.config.max_sessions_per_key;
  if (limit > 0 && !ctx.config.api_keys.empty() && sessions_of(ctx, caller).size() >= limit)
    throw openai::ApiError(
        429, "rate_limit_exceeded",
        "this API key holds " + std::to_string(limit) + " sessions, its limit: delete one first");
  const uint64_t id = ctx.engine.create_session(policy, openai::dump(defaults));
  {
    std::lock_guard<std::mutex> lk(ctx.owners.m);
    ctx.owners.by_session[id] = caller;
  }
  res.set_content(openai::dump(session_json(ctx, ctx.engine.session_status(id))), "application/json");
}

void list_sessions(ServerContext& ctx, const http::Request& req, http::Response& res) {
  json data = json::array();
  for (const auto& st : sessions_of(ctx, ctx.caller(req.header("Authorization"))))
    data.push_back(session_json(ctx, st));
  res.set_content(openai::dump(json({{"object", "list"}, {"data", data}})), "application/json");
}

void get_session(ServerContext& ctx, const std::string& id, const http::Request& req, http::Response& res) {
  res.set_content(
      openai::dump(session_json(ctx, session_named(ctx, id, ctx.caller(req.header("Authorization"))))),
      "application/json");
}

void delete_session(ServerContext& ctx, const std::string& id, const http::Request& req,
                    http::Response& res) {
  const uint64_t sid = session_named(ctx, id, ctx.caller(req.header("Authorization"))).id;
  if (!ctx.engine.delete_session(sid))
    throw openai::ApiError(404, "not_found_error", "no session '" + id + "'");
  {
    std::lock_guard<std::mutex> lk(ctx.owners.m);
    ctx.owners.by_session.erase(sid);
  }
  res.set_content(openai::dump(json({{"id", id}, {"object", "session.deleted"}, {"deleted", true}})),
                  "application/json");
}

void append_session(ServerContext& ctx, const std::string& id, const http::Request& req,
                    http::Response& res) {
  const uint64_t sid = session_named(ctx, id, ctx.caller(req.header("Authorization"))).id;
  const json b = openai::parse_body(req.body);
  const std::vector<int32_t> ids = append_tokens(ctx, sid, b);
  json out = session_json(ctx, ctx.engine.append_session(sid, ids));
  out["appended_tokens"] = ids.size();
  res.set_content(openai::dump(out), "application/json");
}

void generate_session(ServerContext& ctx, const std::string& id, const http::Request& req,
                      http::Response& res) {
  const Until deadline = ctx.request_deadline();
  const SessionStatus st = session_named(ctx, id, ctx.caller(req.header("Authorization")));
  const uint64_t sid = st.id;
  const json call = openai::parse_body(req.body);
  openai::SessionGeneration g = openai::parse_session_generation(defaults_of(st), call, ctx.model);
  auto c = std::make_shared<openai::Choice>(*ctx.model.tokenizer, std::vector<int32_t>{}, std::move(g.stop));
  c->stream = ctx.engine.generate_session(sid, std::move(g.request));
  const std::string& name = id;
  if (!g.stream) {
    reply_when_done(
        ctx, req, res, deadline,
        [&ctx, c](Until until) {
          while (!c->done) {
            if (std::chrono::steady_clock::now() > until) return false;
            const auto e = c->stream->next(0.05);
            if (!e) return false;
            c->apply(*e, ctx.metrics);
          }
          return true;
        },
        [&ctx, c, name] {
          if (c->end.finish == FinishReason::Cancelled && !c->stopped_by_string)
            throw openai::ApiError(503, "server_shutting_down",
                                   "the server cancelled the generation: it is shutting down");
          return openai::dump(generation_json(ctx, name, *c));
        },
        [c] {
          if (!c->done) c->stream->cancel();  // the generation stops, the session stays
        });
    return;
  }
  res.set_header("Cache-Control", "no-cache");
  res.content_type = "text/event-stream";
  res.stream = [&ctx, c, name, deadline](http::Sink& sink) {
    try {
      return stream_generation(ctx, name, *c, sink, deadline);
    } catch (const std::exception& e) {
      std::fprintf(stderr, "rill: session stream %s failed: %s\n", name.c_str(), e.what());
      return false;
    }
  };
  res.finally = [c] {
    if (!c->done) c->stream->cancel();  // the client went away: the generation stops, the session stays
  };
}

}  // namespace rill
