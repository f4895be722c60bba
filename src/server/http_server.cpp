#include "server/http_server.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <functional>

#include "server/completions.h"
#include "server/http.h"
#include "server/responses.h"
#include "server/session_routes.h"

namespace rill {

extern const char* const kOpenApiJson;  // src/server/openapi.json, compiled in (openapi.cpp.in)

using openai::json;

struct HttpServer::Impl {
  ServerConfig config;
  std::unique_ptr<ServerContext> ctx_holder;  // made by ready()
  std::atomic<ServerContext*> live{nullptr};  // published once everything it points to is made
  http::Server svr;
  int bound_port = 0;

  explicit Impl(ServerConfig c) : config(std::move(c)), svr(transport_config(config), hooks(this)) {}

  static http::Config transport_config(const ServerConfig& c) {
    http::Config t;
    t.host = c.host;
    t.port = c.port;
    t.max_body_bytes = c.max_body_bytes;
    t.header_timeout = std::chrono::milliseconds(int64_t(c.header_timeout_s * 1000));
    t.body_timeout = std::chrono::milliseconds(int64_t(c.body_timeout_s * 1000));
    t.write_timeout = std::chrono::milliseconds(int64_t(c.write_timeout_s * 1000));
    t.max_connections = c.max_connections;
    t.max_connections_per_address = c.max_connections_per_address;
    t.workers = c.threads > 0 ? c.threads : 80;
    return t;
  }

  static void send_error(http::Response& res, const openai::ApiError& e) {
    res.status = e.status;
    res.set_content(openai::dump(e.body()), "application/json");
  }
  static void send_loading(http::Response& res) {
    res.set_header("Retry-After", "1");
    send_error(res, openai::ApiError(503, "model_loading",
                                     "the model is still loading; retry once GET /health answers 200"));
  }

  static http::Hooks hooks(Impl* self) {
    http::Hooks h;
    h.error = [](int status, const std::string& message, http::Response& res) {
      const char* type = status == 401   ? "authentication_error"
                         : status == 404 ? "not_found_error"
                         : status == 503 ? "server_overloaded"
                         : status >= 500 ? "internal_error"
                                         : "invalid_request_error";
      send_error(res, openai::ApiError(status, type, message));
    };
    h.authorize = [self](const http::Request& req) {
      const auto& keys = self->config.api_keys;
      if (keys.empty()) return true;
      const std::string auth = req.header("Authorization");
      return auth.rfind("Bearer ", 0) == 0 &&
             std::find(keys.begin(), keys.end(), auth.substr(7)) != keys.end();
    };
    h.on_response = [self](int status) {
      if (ServerContext* c = self->live.load(std::memory_order_acquire)) c->metrics.response(status);
    };
    return h;
  }

  // Runs a route, turning every exception into an OpenAI-style error response.
  static void guarded(http::Response& res, const std::function<void()>& route) {
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
  }

  // A route that needs the model: 503 model_loading until ready().
  void add(const char* method, const std::string& pattern, http::Handler h) {
    svr.route(method, pattern, [this, h = std::move(h)](const http::Request& req, http::Response& res) {
      if (!live.load(std::memory_order_acquire)) return send_loading(res);
      guarded(res, [&] { h(req, res); });
    });
  }
  // The routes' shared state; only called once ready (add() and the fast routes check first).
  ServerContext& ctx() { return *live.load(std::memory_order_acquire); }
  void get(const std::string& pattern, http::Handler h) { add("GET", pattern, std::move(h)); }
  void post(const std::string& pattern, http::Handler h) {
    add("POST", pattern, [h = std::move(h)](const http::Request& req, http::Response& res) {
      if (req.header("Content-Type").rfind("multipart/form-data", 0) == 0)
        throw openai::ApiError(415, "invalid_request_error",
                               "the request body must be JSON, not multipart/form-data");
      h(req, res);
    });
  }

  void session_routes() {
    post("/v1/sessions", [this](const auto& req, auto& res) { create_session(ctx(), req, res); });
    get("/v1/sessions", [this](const auto& req, auto& res) { list_sessions(ctx(), req, res); });
    get(R"(/v1/sessions/([^/]+))",
        [this](const auto& req, auto& res) { get_session(ctx(), req.params[0], req, res); });
    add("DELETE", R"(/v1/sessions/([^/]+))",
        [this](const auto& req, auto& res) { delete_session(ctx(), req.params[0], req, res); });
    post(R"(/v1/sessions/([^/]+)/append)",
         [this](const auto& req, auto& res) { append_session(ctx(), req.params[0], req, res); });
    post(R"(/v1/sessions/([^/]+)/generate)",
         [this](const auto& req, auto& res) { generate_session(ctx(), req.params[0], req, res); });
  }

  void tokenizer_routes() {
    post("/tokenize", [this](const auto& req, auto& res) {
      const openai::ModelInfo& model = ctx().model;
      const json b = openai::parse_body(req.body);
      if (!b.contains("prompt") || !b["prompt"].is_string())
        throw openai::bad_request("'prompt' must be a string", "prompt");
      const bool add = openai::boolean(b, "add_special_tokens", true);
      const auto ids = model.tokenizer->encode(b["prompt"].template get<std::string>(), add);
      res.set_content(openai::dump(json(
                          {{"tokens", ids}, {"count", ids.size()}, {"max_model_len", model.max_model_len}})),
                      "application/json");
    });
    post("/detokenize", [this](const auto& req, auto& res) {
      const openai::ModelInfo& model = ctx().model;
      const json b = openai::parse_body(req.body);
      if (!b.contains("tokens")) throw openai::bad_request("'tokens' must be a list of ids", "tokens");
      const std::vector<int32_t> ids =
          openai::token_array(b["tokens"], model.tokenizer->vocab_size(), "tokens");
      res.set_content(openai::dump(json({{"prompt", model.tokenizer->decode(ids)}})), "application/json");
    });
  }

  void routes() {
    // Answered on the I/O threads, however busy generation is, and without a key.
    svr.route(
        "GET", "/health",
        [this](const http::Request&, http::Response& res) {
          if (live.load(std::memory_order_acquire)) return res.set_content("", "text/plain");
          res.status = 503;
          res.set_header("Retry-After", "1");
          res.set_content(R"({"status":"loading"})", "application/json");
        },
        /*fast=*/true, /*public_route=*/true);
    svr.route(
        "GET", "/metrics",
        [this](const http::Request&, http::Response& res) {
          if (!live.load(std::memory_order_acquire)) return send_loading(res);
          std::string text = ctx().metrics.render(ctx().engine.metrics());
          text +=
              "# HELP rill_http_connections Open HTTP connections.\n# TYPE rill_http_connections "
              "gauge\nrill_http_connections " +
              std::to_string(svr.connections()) + "\n";
          text +=
              "# HELP rill_http_requests_in_flight Requests taken by a worker or queued for one.\n"
              "# TYPE rill_http_requests_in_flight gauge\nrill_http_requests_in_flight " +
              std::to_string(svr.running()) + "\n";
          res.set_content(std::move(text), "text/plain; version=0.0.4");
        },
        true, true);
    svr.route(
        "GET", "/openapi.json",
        [](const http::Request&, http::Response& res) { res.set_content(kOpenApiJson, "application/json"); },
        true, true);
    svr.route(
        "GET", "/v1/models",
        [this](const http::Request&, http::Response& res) {
          if (!live.load(std::memory_order_acquire)) return send_loading(res);
          const openai::ModelInfo& m = ctx().model;
          json model = {{"id", m.name},
                        {"object", "model"},
                        {"created", openai::unix_time()},
                        {"owned_by", "rill"},
                        {"max_model_len", m.max_model_len}};
          res.set_content(openai::dump(json({{"object", "list"}, {"data", {model}}})), "application/json");
        },
        true);
    post("/v1/completions", [this](const auto& req, auto& res) { post_completion(ctx(), req, res, false); });
    post("/v1/chat/completions",
         [this](const auto& req, auto& res) { post_completion(ctx(), req, res, true); });
    session_routes();
    tokenizer_routes();
  }
};

HttpServer::HttpServer(ServerConfig config) : impl_(std::make_unique<Impl>(std::move(config))) {
  impl_->routes();
}

HttpServer::HttpServer(Engine& engine, openai::ModelInfo model, ServerConfig config)
    : HttpServer([&] {
        if (config.threads <= 0) config.threads = engine.config().max_num_seqs + 16;
        return std::move(config);
      }()) {
  ready(engine, std::move(model));
}

void HttpServer::ready(Engine& engine, openai::ModelInfo model) {
  if (impl_->ctx_holder) throw Error("HttpServer::ready: called twice");
  impl_->ctx_holder.reset(new ServerContext{engine, std::move(model), impl_->config});
  impl_->live.store(impl_->ctx_holder.get(), std::memory_order_release);
}

bool HttpServer::is_ready() const {
  return impl_->live.load(std::memory_order_acquire) != nullptr;
}

HttpServer::~HttpServer() = default;

void HttpServer::bind() {
  impl_->bound_port = impl_->svr.bind();
}
void HttpServer::serve() {
  impl_->svr.serve();
}
void HttpServer::stop() {
  impl_->svr.shutdown(std::chrono::milliseconds(0), [this] {
    if (ServerContext* c = impl_->live.load(std::memory_order_acquire)) c->engine.shutdown();
  });
}
size_t HttpServer::shutdown(double timeout_s, const std::function<void()>& at_deadline) {
  const auto total = std::chrono::milliseconds(int64_t(std::max(0.0, timeout_s) * 1000));
  const auto margin = std::min(std::chrono::milliseconds(500), total / 10);
  return impl_->svr.shutdown(total - margin, at_deadline, margin);
}
int HttpServer::port() const {
  return impl_->bound_port;
}
size_t HttpServer::connections() const {
  return impl_->svr.connections();
}

}  // namespace rill
