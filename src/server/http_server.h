// HttpServer: the OpenAI-compatible HTTP front of an Engine (cpp-httplib). Thin by design: it validates
// and translates requests (server/openai), streams engine events out as JSON or server-sent events, and
// exports metrics. Handlers run on the HTTP library's worker threads; the engine is thread-safe to submit
// to, and each request's stream is read by the one handler that owns it.
#pragma once

#include <atomic>
#include <memory>
#include <string>

#include "engine/engine.h"
#include "server/openai.h"

namespace rill {

struct ServerConfig {
  std::string host = "127.0.0.1";
  int port = 8000;  // 0: any free port (see HttpServer::port())
  std::string api_key;  // empty: no authentication
  size_t max_body_bytes = 16u << 20;
  int threads = 0;  // HTTP worker threads; 0: enough for max_num_seqs streams plus headroom
};

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
