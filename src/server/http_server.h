// HttpServer: the OpenAI-compatible HTTP front of an Engine (cpp-httplib). Thin by design: this file wires the
// routes, authentication and errors; the routes live beside it (completions, session_routes), requests are read
// by openai and json_body, replies built by responses, and /metrics by metrics. Handlers run on the HTTP
// library's worker threads; the engine is thread-safe to submit to, and each request's stream is read by the one
// handler that owns it.
#pragma once

#include <memory>

#include "engine/engine.h"
#include "server/context.h"
#include "server/openai.h"

namespace rill {

class HttpServer {
 public:
  HttpServer(Engine& engine, openai::ModelInfo model, ServerConfig config);
  ~HttpServer();
  // Binds the port (throws rill::Error naming host:port when it cannot) and serves until stop().
  void bind();
  void serve();
  void stop();
  int port() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace rill
