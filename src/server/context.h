// What every route of the HTTP server shares: the engine it is a front of, what it knows about the model, its
// configuration, its metrics and the counter that names completions. Routes run on the HTTP library's worker
// threads; the engine and the metrics are thread-safe, the rest is read-only once the server is built.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <string>

#include "engine/engine.h"
#include "server/metrics.h"
#include "server/openai.h"

namespace rill {

struct ServerConfig {
  std::string host = "127.0.0.1";
  int port = 8000;  // 0: any free port (see HttpServer::port())
  std::string api_key;  // empty: no authentication
  size_t max_body_bytes = 16u << 20;
  int threads = 0;  // HTTP worker threads; 0: enough for max_num_seqs streams plus headroom
  double header_timeout_s = 10, body_timeout_s = 60, write_timeout_s = 30;
  size_t max_connections = 16384, max_connections_per_address = 0;  // 0: no limit per address
};

struct ServerContext {
  Engine& engine;
  openai::ModelInfo model;
  ServerConfig config;
  ServerMetrics metrics;
  std::atomic<uint64_t> next_id{1};
};

}  // namespace rill
