// HttpServer: the OpenAI-compatible HTTP front of an Engine. Thin by design: this file wires the routes,
// authentication and errors onto the event-driven HTTP server (http.h); the routes live beside it
// (completions, session_routes), requests are read by openai and json_body, replies built by responses, and
// /metrics by metrics. Routes run on the HTTP server's worker threads (health and metrics on its I/O
// threads); the engine is thread-safe to submit to, and each request's stream is read by the one route that
// owns it.
#pragma once

#include <cstddef>
#include <functional>
#include <memory>

#include "engine/engine.h"
#include "server/context.h"
#include "server/openai.h"

namespace rill {

class HttpServer {
 public:
  // Ready at once.
  HttpServer(Engine& engine, openai::ModelInfo model, ServerConfig config);
  // Loading: it binds and serves before there is a model. Until ready(), GET /health answers 503
  // {"status": "loading"} and every route that needs the model 503 (type model_loading, Retry-After);
  // /openapi.json answers. ServerConfig::threads should be set (no engine to size the workers from yet).
  explicit HttpServer(ServerConfig config);
  // The model is loaded and warmed up: from now on every route answers (GET /health 200).
  void ready(Engine& engine, openai::ModelInfo model);
  bool is_ready() const;
  ~HttpServer();
  // Binds the port (throws rill::Error naming host:port when it cannot) and serves until stop().
  void bind();
  void serve();
  // Stops at once: in-flight requests are cancelled (engine.shutdown()), queued ones answered 503.
  void stop();
  // Graceful: stops accepting, answers queued requests 503, lets running ones end for up to `deadline_s`
  // seconds, then calls `at_deadline` (which should cancel what still runs) and ends serve(). Returns how
  // many requests were still running at the deadline.
  size_t shutdown(double deadline_s, const std::function<void()>& at_deadline);
  int port() const;
  size_t connections() const;  // open HTTP connections

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace rill
