#include "server/http_server.h"

#include <httplib.h>
#include <sys/socket.h>

#include <functional>

#include "server/completions.h"
#include "server/responses.h"
#include "server/session_routes.h"

namespace rill {

using openai::json;

struct HttpServer::Impl {
  ServerContext ctx;
  httplib::Server svr;
  int bound_port = 0;
  int listen_fd = -1;

  Impl(Engine& e, openai::ModelInfo m, ServerConfig c) : ctx{e, std::move(m), std::move(c)} {}

  static void send_error(httplib::Response& res, const openai::ApiError& e) {
    res.status = e.status;
    res.set_content(openai::dump(e.body()), "application/json");
  }

  // Runs a route, turning every exception into an OpenAI-style error response.
  void guarded(httplib::Response& res, const std::function<void()>& route) {
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
    // cpp-httplib leaves a response it has not sent yet at status -1 and sends it as 200.
    if (res.status < 0) res.status = 200;
    ctx.metrics.response(res.status);
  }

  using Handler = std::function<void(const httplib::Request&, httplib::Response&)>;
  Handler route(Handler h) {
    return [this, h = std::move(h)](const httplib::Request& req, httplib::Response& res) {
      guarded(res, [&] { h(req, res); });
    };
  }

  // A POST route whose body rill reads rather than the library: the body limit then also holds for chunked
  // uploads (the library read those whole), and any Content-Type is read as JSON (the library parsed curl -d's
  // default, application/x-www-form-urlencoded, as a form and refused one past 8 KiB).
  void post(const std::string& pattern, Handler h) {
    svr.Post(pattern, [this, h = std::move(h)](const httplib::Request& req, httplib::Response& res,
                                               const httplib::ContentReader& read) {
      guarded(res, [&] {
        const size_t limit = ctx.config.max_body_bytes;
        auto too_large = [&] {
          return openai::ApiError(413, "invalid_request_error", "the request body is larger than " + std::to_string(limit) + " bytes");
        };
        if (req.is_multipart_form_data())
          throw openai::ApiError(415, "invalid_request_error", "the request body must be JSON, not multipart/form-data");
        // Past the limit the rest is read and dropped, up to 1 MiB more (then the connection is cut): a client
        // still sending when the answer comes and the socket closes would get a reset instead of the 413.
        std::string body;
        bool over = false;
        size_t dropped = 0;
        const bool whole = read([&](const char* data, size_t n) {
          if (!over && n <= limit - body.size()) {
            body.append(data, n);
            return true;
          }
          over = true;
          dropped += n;
          return dropped <= (size_t(1) << 20);
        });
        if (over || res.status == 413) throw too_large();
        if (!whole) throw openai::bad_request("the request body could not be read");
        res.status = -1;  // (the reader may have set it)
        httplib::Request with_body = req;
        with_body.body = std::move(body);
        h(with_body, res);
      });
    });
  }

  void session_routes() {
    post("/v1/sessions", [this](const auto& req, auto& res) { create_session(ctx, req, res); });
    svr.Get("/v1/sessions", route([this](const auto&, auto& res) { list_sessions(ctx, res); }));
    svr.Get(R"(/v1/sessions/([^/]+))",
            route([this](const auto& req, auto& res) { get_session(ctx, req.matches[1], res); }));
    svr.Delete(R"(/v1/sessions/([^/]+))",
               route([this](const auto& req, auto& res) { delete_session(ctx, req.matches[1], res); }));
    post(R"(/v1/sessions/([^/]+)/append)",
         [this](const auto& req, auto& res) { append_session(ctx, req.matches[1], req, res); });
    post(R"(/v1/sessions/([^/]+)/generate)",
         [this](const auto& req, auto& res) { generate_session(ctx, req.matches[1], req, res); });
  }

  void tokenizer_routes() {
    const openai::ModelInfo& model = ctx.model;
    post("/tokenize", [&model](const auto& req, auto& res) {
               const json b = openai::parse_body(req.body);
               if (!b.contains("prompt") || !b["prompt"].is_string())
                 throw openai::bad_request("'prompt' must be a string", "prompt");
               const bool add = openai::boolean(b, "add_special_tokens", true);
               const auto ids = model.tokenizer->encode(b["prompt"].template get<std::string>(), add);
               res.set_content(openai::dump(json({{"tokens", ids}, {"count", ids.size()}, {"max_model_len", model.max_model_len}})),
                               "application/json");
             });
    post("/detokenize", [&model](const auto& req, auto& res) {
               const json b = openai::parse_body(req.body);
               if (!b.contains("tokens")) throw openai::bad_request("'tokens' must be a list of ids", "tokens");
               const std::vector<int32_t> ids = openai::token_array(b["tokens"], model.tokenizer->vocab_size(), "tokens");
               res.set_content(openai::dump(json({{"prompt", model.tokenizer->decode(ids)}})), "application/json");
             });
  }

  // The listening socket, the worker pool, authentication and the errors the library itself answers.
  void wiring() {
    const ServerConfig& config = ctx.config;
    // The packaged cpp-httplib listens with a backlog of 5: a burst of clients overflows it and connections
    // fail. Keep the socket (with the library's SO_REUSEADDR) so bind() can raise the backlog.
    svr.set_socket_options([this](int sock) {
      int yes = 1;
      setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof yes);
      listen_fd = int(sock);
    });
    svr.set_payload_max_length(config.max_body_bytes);
    const int threads = config.threads > 0 ? config.threads : ctx.engine.config().max_num_seqs + 16;
    svr.new_task_queue = [threads] { return new httplib::ThreadPool(size_t(threads)); };
    svr.set_pre_routing_handler([this](const httplib::Request& req, httplib::Response& res) {
      const std::string& key = ctx.config.api_key;
      if (key.empty() || req.path == "/health" || req.path == "/metrics") return httplib::Server::HandlerResponse::Unhandled;
      if (req.get_header_value("Authorization") == "Bearer " + key) return httplib::Server::HandlerResponse::Unhandled;
      send_error(res, openai::ApiError(401, "authentication_error", "missing or wrong API key (send 'Authorization: Bearer KEY')"));
      ctx.metrics.response(401);
      return httplib::Server::HandlerResponse::Handled;
    });
    svr.set_error_handler([this](const httplib::Request& req, httplib::Response& res) {
      if (!res.body.empty()) return;
      if (res.status == 404) send_error(res, openai::ApiError(404, "not_found_error", "no route " + req.method + " " + req.path));
      else if (res.status == 413)
        send_error(res, openai::ApiError(413, "invalid_request_error", "the request body is larger than " +
                                                                           std::to_string(ctx.config.max_body_bytes) + " bytes"));
      else send_error(res, openai::ApiError(res.status, "error", "HTTP " + std::to_string(res.status)));
      ctx.metrics.response(res.status);
    });
  }

  void routes() {
    wiring();
    svr.Get("/health", [](const httplib::Request&, httplib::Response& res) { res.set_content("", "text/plain"); });
    svr.Get("/metrics", [this](const httplib::Request&, httplib::Response& res) {
      res.set_content(ctx.metrics.render(ctx.engine.metrics()), "text/plain; version=0.0.4");
    });
    svr.Get("/v1/models", route([this](const auto&, auto& res) {
              const openai::ModelInfo& m = ctx.model;
              json model = {{"id", m.name}, {"object", "model"}, {"created", openai::unix_time()}, {"owned_by", "rill"},
                            {"max_model_len", m.max_model_len}};
              res.set_content(openai::dump(json({{"object", "list"}, {"data", {model}}})), "application/json");
            }));
    post("/v1/completions", [this](const auto& req, auto& res) { post_completion(ctx, req, res, false); });
    post("/v1/chat/completions", [this](const auto& req, auto& res) { post_completion(ctx, req, res, true); });
    session_routes();
    tokenizer_routes();
  }
};

HttpServer::HttpServer(Engine& engine, openai::ModelInfo model, ServerConfig config)
    : impl_(std::make_unique<Impl>(engine, std::move(model), std::move(config))) {
  impl_->routes();
}

HttpServer::~HttpServer() = default;

void HttpServer::bind() {
  auto& i = *impl_;
  const ServerConfig& c = i.ctx.config;
  if (c.port == 0) {
    i.bound_port = i.svr.bind_to_any_port(c.host);
    RILL_CHECK(i.bound_port > 0, "cannot listen on " + c.host + " (any port)");
  } else {
    RILL_CHECK(i.svr.bind_to_port(c.host, c.port),
               "cannot listen on " + c.host + ":" + std::to_string(c.port) + " (in use, or no permission?)");
    i.bound_port = c.port;
  }
  // Raise the backlog of the socket the library is listening on (Linux accepts a second listen()).
  if (i.listen_fd >= 0) ::listen(i.listen_fd, 4096);
}

void HttpServer::serve() { impl_->svr.listen_after_bind(); }
void HttpServer::stop() { impl_->svr.stop(); }
int HttpServer::port() const { return impl_->bound_port; }

}  // namespace rill
