#include "server/http_server.h"

#include <httplib.h>
#include <sys/socket.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <mutex>
#include <sstream>

namespace rill {

using openai::json;

namespace {

// Serializes, replacing invalid UTF-8 rather than throwing: text comes from token bytes.
std::string dump(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

double now_seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}
int64_t unix_time() { return int64_t(std::time(nullptr)); }

// A Prometheus histogram of durations in seconds.
class Histogram {
 public:
  void observe(double v) {
    for (size_t i = 0; i < kBounds.size(); ++i)
      if (v <= kBounds[i]) ++counts_[i];
    ++count_;
    sum_ += v;
  }
  void render(std::ostringstream& out, const std::string& name, const std::string& help) const {
    out << "# HELP " << name << " " << help << "\n# TYPE " << name << " histogram\n";
    for (size_t i = 0; i < kBounds.size(); ++i) out << name << "_bucket{le=\"" << kBounds[i] << "\"} " << counts_[i] << "\n";
    out << name << "_bucket{le=\"+Inf\"} " << count_ << "\n" << name << "_sum " << sum_ << "\n" << name << "_count " << count_ << "\n";
  }

 private:
  static constexpr std::array<double, 15> kBounds = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                                                    0.5,   1.0,    2.5,   5.0,  10.0,  30.0, 60.0};
  std::array<uint64_t, 15> counts_{};
  uint64_t count_ = 0;
  double sum_ = 0;
};

// One choice of a completion: its engine stream and the text it has produced so far.
struct Choice {
  int index = 0;
  int prompt_index = 0;
  std::shared_ptr<RequestStream> stream;
  std::unique_ptr<IncrementalDecoder> detok;
  std::unique_ptr<openai::StopMatcher> stop;
  std::string text;
  json logprobs = json::array();
  bool done = false, stopped_by_string = false;
  Event end;
  double submitted = 0, last_token = 0;
  int tokens = 0;
};

}  // namespace

struct HttpServer::Impl {
  Engine& engine;
  openai::ModelInfo model;
  ServerConfig config;
  httplib::Server svr;
  std::atomic<uint64_t> next_id{1};
  int bound_port = 0;
  int listen_fd = -1;

  std::mutex sessions_mu;
  std::map<uint64_t, json> session_defaults;  // generation parameters given at creation, by session

  std::mutex metrics_mu;
  Histogram ttft, itl, e2e;
  std::map<int, uint64_t> responses_by_status;

  Impl(Engine& e, openai::ModelInfo m, ServerConfig c) : engine(e), model(std::move(m)), config(std::move(c)) {}

  void count_status(int status) {
    std::lock_guard<std::mutex> lock(metrics_mu);
    ++responses_by_status[status];
  }

  static void send_error(httplib::Response& res, const openai::ApiError& e) {
    res.status = e.status;
    res.set_content(dump(e.body()), "application/json");
  }

  // Applies one engine event to a choice; returns the text it adds.
  std::string apply(Choice& c, const Event& e) {
    const double t = now_seconds();
    if (e.token < 0) {
      c.done = true;
      c.end = e;
      std::string tail;
      if (!c.stop->stopped()) tail = c.stop->feed(c.detok->finish()) + c.stop->flush();
      c.text += tail;
      std::lock_guard<std::mutex> lock(metrics_mu);
      e2e.observe(t - c.submitted);
      return tail;
    }
    {
      std::lock_guard<std::mutex> lock(metrics_mu);
      if (c.tokens == 0) ttft.observe(t - c.submitted);
      else itl.observe(t - c.last_token);
    }
    c.last_token = t;
    ++c.tokens;
    if (c.stop->stopped()) return "";  // tokens that raced the cancellation
    const std::string out = c.stop->feed(c.detok->add(e.token));
    if (c.stop->stopped()) {
      c.stopped_by_string = true;
      c.stream->cancel();
    }
    c.text += out;
    return out;
  }

  std::string finish_of(const Choice& c) const {
    if (c.stopped_by_string) return "stop";
    return openai::finish_reason(c.end.finish);
  }

  void completion(const httplib::Request& req, httplib::Response& res, bool chat) {
    const json body = parse_body(req);
    const openai::CompletionRequest cr = openai::parse_completion(body, chat, model);
    const std::string id = (chat ? "chatcmpl-" : "cmpl-") + std::to_string(next_id++);
    const int64_t created = unix_time();
    auto choices = std::make_shared<std::vector<Choice>>();
    try {
      for (size_t p = 0; p < cr.prompts.size(); ++p)
        for (int j = 0; j < cr.n; ++j) {
          Request r = cr.prompts[p];
          if (r.sampling.has_seed) r.sampling.seed += uint64_t(j);  // n samples, each reproducible
          Choice c;
          c.index = int(choices->size());
          c.prompt_index = int(p);
          c.detok = std::make_unique<IncrementalDecoder>(*model.tokenizer, true, r.prompt);
          c.stop = std::make_unique<openai::StopMatcher>(cr.stop);
          c.submitted = c.last_token = now_seconds();
          c.stream = engine.submit(std::move(r));
          choices->push_back(std::move(c));
        }
    } catch (const EngineFull& e) {
      for (auto& c : *choices) c.stream->cancel();
      res.set_header("Retry-After", "1");
      throw openai::ApiError(503, "server_overloaded", e.what());
    } catch (const openai::ApiError&) {
      for (auto& c : *choices) c.stream->cancel();
      throw;
    } catch (const Error& e) {
      for (auto& c : *choices) c.stream->cancel();
      throw openai::bad_request(e.what());
    }
    if (!cr.stream) {
      for (auto& c : *choices) {
        while (!c.done) {
          const Event e = *c.stream->next();
          apply(c, e);
          if (e.token >= 0 && cr.logprobs >= 0 && !c.stopped_by_string) c.logprobs.push_back(openai::token_logprobs(*model.tokenizer, e, true));
        }
      }
      res.set_content(dump(final_response(cr, *choices, id, created)), "application/json");
      return;
    }
    auto cr_copy = std::make_shared<openai::CompletionRequest>(cr);
    res.set_header("Cache-Control", "no-cache");
    res.set_chunked_content_provider(
        "text/event-stream",
        [this, choices, cr_copy, id, created](size_t, httplib::DataSink& sink) {
          try {
            return stream_events(*cr_copy, *choices, id, created, sink);
          } catch (const std::exception& e) {  // end this stream, never the server
            std::fprintf(stderr, "rill: stream %s failed: %s\n", id.c_str(), e.what());
            for (auto& c : *choices) c.stream->cancel();
            return false;
          }
        },
        [choices](bool) {
          for (auto& c : *choices)
            if (!c.done) c.stream->cancel();  // the client went away: free its blocks
        });
  }

  json chunk(const openai::CompletionRequest& cr, const std::string& id, int64_t created, int index, const std::string& text,
             const json& logprob, const std::string& finish, bool role) {
    json choice;
    if (cr.chat) {
      json delta = json::object();
      if (role) delta["role"] = "assistant";
      if (!text.empty() || role) delta["content"] = text;
      choice = {{"index", index}, {"delta", delta}, {"logprobs", logprob.is_null() ? json() : json{{"content", {logprob}}}},
                {"finish_reason", finish.empty() ? json() : json(finish)}};
    } else {
      json lp;
      if (!logprob.is_null())
        lp = {{"tokens", {logprob["token"]}}, {"token_logprobs", {logprob["logprob"]}}, {"top_logprobs", {completion_top(logprob)}}, {"text_offset", {0}}};
      choice = {{"index", index}, {"text", text}, {"logprobs", lp}, {"finish_reason", finish.empty() ? json() : json(finish)}};
    }
    json c = {{"id", id}, {"object", cr.chat ? "chat.completion.chunk" : "text_completion"}, {"created", created},
              {"model", model.name}, {"choices", {choice}}};
    if (cr.include_usage) c["usage"] = nullptr;
    return c;
  }

  static json completion_top(const json& chat_style) {
    json top = json::object();
    for (const auto& t : chat_style["top_logprobs"]) top[t["token"].get<std::string>()] = t["logprob"];
    return top;
  }

  bool stream_events(const openai::CompletionRequest& cr, std::vector<Choice>& choices, const std::string& id,
                     int64_t created, httplib::DataSink& sink) {
    auto send = [&](const json& j) {
      const std::string line = "data: " + dump(j) + "\n\n";
      return sink.write(line.data(), line.size());  // false once the client is gone
    };
    if (cr.chat)
      for (const auto& c : choices)
        if (!send(chunk(cr, id, created, c.index, "", json(), "", true))) return false;
    if (!cr.chat && cr.echo)
      for (const auto& c : choices)
        if (!send(chunk(cr, id, created, c.index, cr.prompt_texts[size_t(c.prompt_index)], json(), "", false))) return false;
    size_t open = choices.size();
    while (open > 0) {
      for (auto& c : choices) {
        if (c.done) continue;
        auto e = c.stream->next(choices.size() == 1 ? -1.0 : 0.002);
        if (!e) continue;
        const std::string text = apply(c, *e);
        const bool want_lp = e->token >= 0 && cr.logprobs >= 0 && !c.stopped_by_string;
        const json logprob = want_lp ? openai::token_logprobs(*model.tokenizer, *e, true) : json();
        if (c.done) {
          --open;
          if (!send(chunk(cr, id, created, c.index, text, json(), finish_of(c), false))) return false;
        } else if (!text.empty() || want_lp) {
          if (!send(chunk(cr, id, created, c.index, text, logprob, "", false))) return false;
        }
      }
    }
    if (cr.include_usage) {
      const json u = total_usage(cr, choices);
      json j = {{"id", id}, {"object", cr.chat ? "chat.completion.chunk" : "text_completion"}, {"created", created},
                {"model", model.name}, {"choices", json::array()}, {"usage", u}};
      if (!send(j)) return false;
    }
    const std::string done = "data: [DONE]\n\n";
    sink.write(done.data(), done.size());
    sink.done();
    return true;
  }

  json total_usage(const openai::CompletionRequest& cr, const std::vector<Choice>& choices) const {
    int prompt = 0, completion = 0, cached = 0;
    std::vector<bool> counted(cr.prompts.size(), false);
    for (const auto& c : choices) {
      completion += c.end.completion_tokens;
      if (!counted[size_t(c.prompt_index)]) {
        counted[size_t(c.prompt_index)] = true;
        prompt += int(cr.prompts[size_t(c.prompt_index)].prompt.size());
        cached += c.end.cached_tokens;
      }
    }
    return openai::usage(prompt, completion, cached);
  }

  json final_response(const openai::CompletionRequest& cr, std::vector<Choice>& choices, const std::string& id, int64_t created) {
    json out = json::array();
    for (auto& c : choices) {
      if (c.end.finish == FinishReason::Error && !c.stopped_by_string)
        throw openai::ApiError(500, "internal_error", "generation failed: " + c.end.error);
      if (cr.chat) {
        json lp;
        if (cr.logprobs >= 0) lp = {{"content", c.logprobs}};
        out.push_back({{"index", c.index}, {"message", {{"role", "assistant"}, {"content", c.text}}}, {"logprobs", lp},
                       {"finish_reason", finish_of(c)}});
      } else {
        json lp;
        if (cr.logprobs >= 0) {
          json tokens = json::array(), values = json::array(), tops = json::array(), offsets = json::array();
          size_t offset = cr.echo ? cr.prompt_texts[size_t(c.prompt_index)].size() : 0;
          for (const auto& t : c.logprobs) {
            tokens.push_back(t["token"]);
            values.push_back(t["logprob"]);
            tops.push_back(completion_top(t));
            offsets.push_back(offset);
            offset += t["token"].get<std::string>().size();
          }
          lp = {{"tokens", tokens}, {"token_logprobs", values}, {"top_logprobs", tops}, {"text_offset", offsets}};
        }
        const std::string text = (cr.echo ? cr.prompt_texts[size_t(c.prompt_index)] : "") + c.text;
        out.push_back({{"index", c.index}, {"text", text}, {"logprobs", lp}, {"finish_reason", finish_of(c)}});
      }
    }
    return {{"id", id}, {"object", cr.chat ? "chat.completion" : "text_completion"}, {"created", created},
            {"model", model.name}, {"choices", out}, {"usage", total_usage(cr, choices)}};
  }

  std::string metrics_text() {
    const EngineMetrics m = engine.metrics();
    std::ostringstream out;
    auto gauge = [&](const char* name, const char* help, double v) {
      out << "# HELP " << name << " " << help << "\n# TYPE " << name << " gauge\n" << name << " " << v << "\n";
    };
    auto counter = [&](const char* name, const char* help, double v) {
      out << "# HELP " << name << " " << help << "\n# TYPE " << name << " counter\n" << name << " " << v << "\n";
    };
    gauge("rill_requests_running", "Requests being generated.", m.running);
    gauge("rill_requests_waiting", "Requests waiting for admission.", m.waiting);
    gauge("rill_kv_blocks_total", "KV cache blocks.", m.blocks_total);
    gauge("rill_kv_blocks_used", "KV cache blocks held by requests.", m.blocks_total - m.blocks_free);
    gauge("rill_kv_blocks_free", "KV cache blocks free (including cached prefixes nobody uses).", m.blocks_free);
    gauge("rill_kv_blocks_cached_free", "Free blocks that still hold a reusable cached prefix.", m.blocks_cached_free);
    gauge("rill_prefix_cache_hit_rate", "Prompt tokens found in the prefix cache / prompt tokens looked up.",
          m.prefix_lookup_tokens ? double(m.prefix_hit_tokens) / double(m.prefix_lookup_tokens) : 0.0);
    counter("rill_prefix_cache_queries_tokens_total", "Prompt tokens looked up in the prefix cache.", double(m.prefix_lookup_tokens));
    counter("rill_prefix_cache_hits_tokens_total", "Prompt tokens found in the prefix cache.", double(m.prefix_hit_tokens));
    counter("rill_prompt_tokens_total", "Prompt tokens computed (cached ones excluded).", double(m.prompt_tokens));
    counter("rill_generation_tokens_total", "Tokens generated.", double(m.generated_tokens));
    counter("rill_requests_finished_total", "Engine requests finished (any reason).", double(m.requests_finished));
    counter("rill_preemptions_total", "Sequences preempted for lack of KV blocks.", double(m.preemptions));
    counter("rill_engine_steps_total", "Engine steps (forward passes).", double(m.steps));
    gauge("rill_sessions", "Streaming sessions open.", m.sessions);
    gauge("rill_session_kv_blocks", "KV blocks held by streaming sessions.", m.session_blocks);
    counter("rill_sessions_expired_total", "Sessions deleted after --session-ttl idle.", double(m.sessions_expired));
    std::lock_guard<std::mutex> lock(metrics_mu);
    ttft.render(out, "rill_time_to_first_token_seconds", "Time from request to its first token.");
    itl.render(out, "rill_inter_token_latency_seconds", "Time between consecutive tokens of a request.");
    e2e.render(out, "rill_e2e_request_latency_seconds", "Time from request to its last token.");
    out << "# HELP rill_http_responses_total HTTP responses by status.\n# TYPE rill_http_responses_total counter\n";
    for (const auto& [status, n] : responses_by_status) out << "rill_http_responses_total{status=\"" << status << "\"} " << n << "\n";
    return out.str();
  }

  // Runs a route, turning every exception into an OpenAI-style error response.
  void guarded(const httplib::Request& req, httplib::Response& res, const std::function<void()>& route) {
    try {
      route();
    } catch (const openai::ApiError& e) {
      send_error(res, e);
    } catch (const SessionNotFound& e) {
      send_error(res, openai::ApiError(404, "not_found_error", e.what()));
    } catch (const SessionBusy& e) {
      send_error(res, openai::ApiError(409, "conflict_error", e.what()));
    } catch (const EngineFull& e) {
      res.set_header("Retry-After", "1");
      send_error(res, openai::ApiError(503, "server_overloaded", e.what()));
    } catch (const Error& e) {
      send_error(res, openai::bad_request(e.what()));
    } catch (const std::exception& e) {
      send_error(res, openai::ApiError(500, "internal_error", e.what()));
    }
    count_status(res.status);
  }

  // ---- Streaming sessions ----

  static json parse_body(const httplib::Request& req) {
    try {
      json b = json::parse(req.body.empty() ? std::string("{}") : req.body);
      if (!b.is_object()) throw openai::bad_request("the request body must be a JSON object");
      return b;
    } catch (const json::exception& e) {
      throw openai::bad_request(std::string("the body is not valid JSON: ") + e.what());
    }
  }

  static uint64_t session_id(const std::string& text) {
    const std::string digits = text.rfind("sess-", 0) == 0 ? text.substr(5) : text;
    if (digits.empty() || digits.size() > 18 || digits.find_first_not_of("0123456789") != std::string::npos)
      throw openai::ApiError(404, "not_found_error", "no session '" + text + "'");
    return std::stoull(digits);
  }

  static json policy_json(const KvPolicy& p) {
    if (!p.is_sink_window()) return {{"type", "dense"}};
    return {{"type", p.sinks > 0 ? "sink" : "window"}, {"sinks", p.sinks}, {"window", p.window}};
  }

  json session_json(const SessionStatus& st) {
    json defaults;
    {
      std::lock_guard<std::mutex> lock(sessions_mu);
      auto it = session_defaults.find(st.id);
      if (it != session_defaults.end()) defaults = it->second;
    }
    return {{"id", "sess-" + std::to_string(st.id)}, {"object", "session"}, {"model", model.name},
            {"kv_policy", policy_json(st.kv_policy)}, {"tokens", st.tokens}, {"tokens_cached", st.tokens_cached},
            {"pending_tokens", st.pending}, {"kv_blocks", st.blocks}, {"kv_bytes", st.kv_bytes},
            {"generating", st.generating}, {"idle_seconds", st.idle_seconds}, {"defaults", defaults}};
  }

  void create_session(const httplib::Request& req, httplib::Response& res) {
    json b = parse_body(req);
    if (b.contains("model") && (!b["model"].is_string() || b["model"].get<std::string>() != model.name))
      throw openai::ApiError(404, "not_found_error", "the model " + b["model"].dump() + " does not exist (this server has '" + model.name + "')", "model");
    // Sessions are unbounded streams: the sink policy unless the body (or the server default) says otherwise.
    openai::ModelInfo m = model;
    if (!m.default_kv_policy.is_sink_window()) m.default_kv_policy = KvPolicy::parse("sink", 4, std::min(1024, model.max_model_len - 4));
    const KvPolicy policy = openai::parse_kv_policy(b, m);
    json defaults = b.contains("defaults") ? b["defaults"] : json::object();
    if (!defaults.is_object()) throw openai::bad_request("'defaults' must be an object of generation parameters", "defaults");
    openai::parse_request_params(defaults, model);  // validated now, used by every generate
    openai::parse_stop(defaults);
    const uint64_t id = engine.create_session(policy);
    const auto open = engine.list_sessions();
    {
      std::lock_guard<std::mutex> lock(sessions_mu);
      session_defaults[id] = defaults;
      for (auto it = session_defaults.begin(); it != session_defaults.end();)  // forget expired sessions
        it = std::any_of(open.begin(), open.end(), [&](const SessionStatus& st) { return st.id == it->first; })
                 ? std::next(it) : session_defaults.erase(it);
    }
    res.set_content(dump(session_json(engine.session_status(id))), "application/json");
  }

  void append_session(const std::string& sid, const httplib::Request& req, httplib::Response& res) {
    const uint64_t id = session_id(sid);
    json b = parse_body(req);
    std::vector<int32_t> ids;
    const int keys = int(b.contains("text")) + int(b.contains("tokens")) + int(b.contains("messages"));
    if (keys != 1) throw openai::bad_request("give exactly one of 'text', 'tokens' or 'messages'");
    if (b.contains("text")) {
      if (!b["text"].is_string()) throw openai::bad_request("'text' must be a string", "text");
      // BOS (if the tokenizer adds one) only at the very start of the session.
      ids = model.tokenizer->encode(b["text"].get<std::string>(), engine.session_status(id).tokens == 0);
    } else if (b.contains("tokens")) {
      ids = openai::token_array(b["tokens"], model, "tokens");
    } else {
      if (!model.chat_template) throw openai::bad_request("this model has no chat template: append 'text'", "messages");
      if (!b["messages"].is_array() || b["messages"].empty()) throw openai::bad_request("'messages' must be a non-empty list", "messages");
      for (size_t i = 0; i < b["messages"].size(); ++i) {
        const json& msg = b["messages"][i];
        if (!msg.is_object() || !msg.contains("role") || !msg["role"].is_string() || !msg.contains("content") || !msg["content"].is_string())
          throw openai::bad_request("'messages[" + std::to_string(i) + "]' must be {\"role\": ..., \"content\": \"...\"}", "messages");
      }
      const bool first = engine.session_status(id).tokens == 0;
      json ctx = {{"messages", b["messages"]}, {"add_generation_prompt", openai::boolean(b, "add_generation_prompt", false)},
                  {"bos_token", first ? model.bos_token : std::string()}, {"eos_token", model.eos_token}};
      std::string text;
      try {
        text = model.chat_template->render(ctx);
      } catch (const Error& e) {
        throw openai::bad_request(std::string("the chat template rejected these messages: ") + e.what(), "messages");
      }
      ids = model.tokenizer->encode(text, false);
    }
    const SessionStatus st = engine.append_session(id, ids);
    json out = session_json(st);
    out["appended_tokens"] = ids.size();
    res.set_content(dump(out), "application/json");
  }

  void generate_session(const std::string& sid, const httplib::Request& req, httplib::Response& res) {
    const uint64_t id = session_id(sid);
    json b;
    {
      std::lock_guard<std::mutex> lock(sessions_mu);
      auto it = session_defaults.find(id);
      b = it != session_defaults.end() ? it->second : json::object();
    }
    const json call = parse_body(req);
    for (const auto& [k, v] : call.items()) b[k] = v;  // the call's parameters over the defaults
    Request r = openai::parse_request_params(b, model);
    const std::vector<std::string> stop = openai::parse_stop(b);
    r.max_tokens = int(openai::integer(b, "max_tokens", 256, 1, 1 << 30));
    const bool stream = openai::boolean(b, "stream", true);
    Choice c;
    c.detok = std::make_unique<IncrementalDecoder>(*model.tokenizer, true, std::vector<int32_t>{});
    c.stop = std::make_unique<openai::StopMatcher>(stop);
    c.submitted = c.last_token = now_seconds();
    c.stream = engine.generate_session(id, std::move(r));
    const std::string name = "sess-" + std::to_string(id);
    auto result = [this, name](const Choice& ch) {
      return json{{"id", name}, {"object", "session.generation"}, {"model", model.name}, {"text", ch.text},
                  {"finish_reason", finish_of(ch)},
                  {"usage", {{"prompt_tokens", ch.end.prompt_tokens}, {"completion_tokens", ch.end.completion_tokens},
                             {"total_tokens", ch.end.prompt_tokens + ch.end.completion_tokens}}}};
    };
    if (!stream) {
      while (!c.done) apply(c, *c.stream->next());
      res.set_content(dump(result(c)), "application/json");
      return;
    }
    auto ch = std::make_shared<Choice>(std::move(c));
    res.set_header("Cache-Control", "no-cache");
    res.set_chunked_content_provider(
        "text/event-stream",
        [this, ch, name, result](size_t, httplib::DataSink& sink) {
          try {
            while (!ch->done) {
              const auto e = ch->stream->next(0.05);
              if (!e) return sink.is_writable();  // keep the connection; check for a disconnected client
              const std::string text = apply(*ch, *e);
              if (!text.empty()) {
                const json chunk = {{"id", name}, {"object", "session.chunk"}, {"model", model.name}, {"text", text}};
                const std::string line = "data: " + dump(chunk) + "\n\n";
                if (!sink.write(line.data(), line.size())) return false;
              }
            }
            json last = result(*ch);
            last["object"] = "session.chunk";
            last["text"] = "";
            const std::string line = "data: " + dump(last) + "\n\ndata: [DONE]\n\n";
            sink.write(line.data(), line.size());
            sink.done();
            return true;
          } catch (const std::exception& e) {
            std::fprintf(stderr, "rill: session stream %s failed: %s\n", name.c_str(), e.what());
            ch->stream->cancel();
            return false;
          }
        },
        [ch](bool) {
          if (!ch->done) ch->stream->cancel();  // the client went away: the generation stops, the session stays
        });
  }

  void session_routes() {
    svr.Post("/v1/sessions", [this](const httplib::Request& req, httplib::Response& res) {
      guarded(req, res, [&] { create_session(req, res); });
    });
    svr.Get("/v1/sessions", [this](const httplib::Request& req, httplib::Response& res) {
      guarded(req, res, [&] {
        json data = json::array();
        for (const auto& st : engine.list_sessions()) data.push_back(session_json(st));
        res.set_content(dump(json({{"object", "list"}, {"data", data}})), "application/json");
      });
    });
    svr.Get(R"(/v1/sessions/([^/]+))", [this](const httplib::Request& req, httplib::Response& res) {
      guarded(req, res, [&] { res.set_content(dump(session_json(engine.session_status(session_id(req.matches[1])))), "application/json"); });
    });
    svr.Delete(R"(/v1/sessions/([^/]+))", [this](const httplib::Request& req, httplib::Response& res) {
      guarded(req, res, [&] {
        const uint64_t id = session_id(req.matches[1]);
        if (!engine.delete_session(id)) throw openai::ApiError(404, "not_found_error", "no session '" + std::string(req.matches[1]) + "'");
        {
          std::lock_guard<std::mutex> lock(sessions_mu);
          session_defaults.erase(id);
        }
        res.set_content(dump(json({{"id", "sess-" + std::to_string(id)}, {"object", "session.deleted"}, {"deleted", true}})), "application/json");
      });
    });
    svr.Post(R"(/v1/sessions/([^/]+)/append)", [this](const httplib::Request& req, httplib::Response& res) {
      guarded(req, res, [&] { append_session(req.matches[1], req, res); });
    });
    svr.Post(R"(/v1/sessions/([^/]+)/generate)", [this](const httplib::Request& req, httplib::Response& res) {
      guarded(req, res, [&] { generate_session(req.matches[1], req, res); });
    });
  }

  void routes() {
    session_routes();
    // The packaged cpp-httplib listens with a backlog of 5: a burst of clients overflows it and connections
    // fail. Keep the socket (with the library's SO_REUSEADDR) so bind() can raise the backlog.
    svr.set_socket_options([this](int sock) {
      int yes = 1;
      setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof yes);
      listen_fd = int(sock);
    });
    svr.set_payload_max_length(config.max_body_bytes);
    const int threads = config.threads > 0 ? config.threads : engine.config().max_num_seqs + 16;
    svr.new_task_queue = [threads] { return new httplib::ThreadPool(size_t(threads)); };
    svr.set_pre_routing_handler([this](const httplib::Request& req, httplib::Response& res) {
      if (config.api_key.empty() || req.path == "/health" || req.path == "/metrics") return httplib::Server::HandlerResponse::Unhandled;
      if (req.get_header_value("Authorization") == "Bearer " + config.api_key) return httplib::Server::HandlerResponse::Unhandled;
      send_error(res, openai::ApiError(401, "authentication_error", "missing or wrong API key (send 'Authorization: Bearer KEY')"));
      count_status(401);
      return httplib::Server::HandlerResponse::Handled;
    });
    svr.set_error_handler([this](const httplib::Request& req, httplib::Response& res) {
      if (!res.body.empty()) return;
      if (res.status == 404) send_error(res, openai::ApiError(404, "not_found_error", "no route " + req.method + " " + req.path));
      else if (res.status == 413)
        send_error(res, openai::ApiError(413, "invalid_request_error", "the request body is larger than " + std::to_string(config.max_body_bytes) + " bytes"));
      else send_error(res, openai::ApiError(res.status, "error", "HTTP " + std::to_string(res.status)));
      count_status(res.status);
    });
    svr.Get("/health", [](const httplib::Request&, httplib::Response& res) { res.set_content("", "text/plain"); });
    svr.Get("/metrics", [this](const httplib::Request&, httplib::Response& res) {
      res.set_content(metrics_text(), "text/plain; version=0.0.4");
    });
    svr.Get("/v1/models", [this](const httplib::Request& req, httplib::Response& res) {
      guarded(req, res, [&] {
        json m = {{"id", model.name}, {"object", "model"}, {"created", unix_time()}, {"owned_by", "rill"}, {"max_model_len", model.max_model_len}};
        res.set_content(dump(json({{"object", "list"}, {"data", {m}}})), "application/json");
      });
    });
    svr.Post("/v1/completions", [this](const httplib::Request& req, httplib::Response& res) {
      guarded(req, res, [&] { completion(req, res, false); });
    });
    svr.Post("/v1/chat/completions", [this](const httplib::Request& req, httplib::Response& res) {
      guarded(req, res, [&] { completion(req, res, true); });
    });
    svr.Post("/tokenize", [this](const httplib::Request& req, httplib::Response& res) {
      guarded(req, res, [&] {
        const json b = parse_body(req);
        if (!b.contains("prompt") || !b["prompt"].is_string()) throw openai::bad_request("'prompt' must be a string", "prompt");
        const bool add = !b.contains("add_special_tokens") || b["add_special_tokens"].get<bool>();
        const auto ids = model.tokenizer->encode(b["prompt"].get<std::string>(), add);
        res.set_content(dump(json({{"tokens", ids}, {"count", ids.size()}, {"max_model_len", model.max_model_len}})), "application/json");
      });
    });
    svr.Post("/detokenize", [this](const httplib::Request& req, httplib::Response& res) {
      guarded(req, res, [&] {
        const json b = parse_body(req);
        if (!b.contains("tokens")) throw openai::bad_request("'tokens' must be a list of ids", "tokens");
        const std::vector<int32_t> ids = openai::token_array(b["tokens"], model, "tokens");
        res.set_content(dump(json({{"prompt", model.tokenizer->decode(ids)}})), "application/json");
      });
    });
  }
};

HttpServer::HttpServer(Engine& engine, openai::ModelInfo model, ServerConfig config)
    : impl_(std::make_unique<Impl>(engine, std::move(model), std::move(config))) {
  impl_->routes();
}

HttpServer::~HttpServer() = default;

void HttpServer::bind() {
  auto& i = *impl_;
  if (i.config.port == 0) {
    i.bound_port = i.svr.bind_to_any_port(i.config.host);
    RILL_CHECK(i.bound_port > 0, "cannot listen on " + i.config.host + " (any port)");
  } else {
    RILL_CHECK(i.svr.bind_to_port(i.config.host, i.config.port),
               "cannot listen on " + i.config.host + ":" + std::to_string(i.config.port) + " (in use, or no permission?)");
    i.bound_port = i.config.port;
  }
  // Raise the backlog of the socket the library is listening on (Linux accepts a second listen()).
  if (i.listen_fd >= 0) ::listen(i.listen_fd, 4096);
}

void HttpServer::serve() { impl_->svr.listen_after_bind(); }
void HttpServer::stop() { impl_->svr.stop(); }
int HttpServer::port() const { return impl_->bound_port; }

}  // namespace rill
