// What every route of the HTTP server shares: the engine it is a front of, what it knows about the model, its
// configuration, its metrics and the counter that names completions. Routes run on the HTTP library's worker
// threads; the engine and the metrics are thread-safe, the rest is read-only once the server is built.
#pragma once

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "engine/engine.h"
#include "server/metrics.h"
#include "server/openai.h"

namespace rill {

struct ServerConfig {
  std::string host = "127.0.0.1";
  int port = 8000;                    // 0: any free port (see HttpServer::port())
  std::vector<std::string> api_keys;  // empty: no authentication; else each client sends one ("Bearer KEY")
  size_t max_sessions_per_key = 0;    // 0: no limit (beyond the engine's --max-sessions)
  size_t max_body_bytes = 16u << 20;
  int threads = 0;  // HTTP worker threads; 0: enough for max_num_seqs streams plus headroom
  double header_timeout_s = 10, body_timeout_s = 60, write_timeout_s = 30;
  double request_timeout_s = 0;  // a request running longer is cancelled (504 / an error event); 0: no limit
  size_t max_connections = 16384, max_connections_per_address = 0;  // 0: no limit per address
};

// Which API key made each session (with --api-key): a session is reached only with the key that made it.
struct SessionOwners {
  std::mutex m;
  std::unordered_map<uint64_t, std::string> by_session;
};

struct ServerContext {
  Engine& engine;
  openai::ModelInfo model;
  ServerConfig config;
  ServerMetrics metrics;
  std::atomic<uint64_t> next_id{1};
  SessionOwners owners;

  // When a request that starts now must end (--request-timeout; far away without one).
  std::chrono::steady_clock::time_point request_deadline() const {
    if (config.request_timeout_s <= 0) return std::chrono::steady_clock::time_point::max();
    return std::chrono::steady_clock::now() + std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                                                  std::chrono::duration<double>(config.request_timeout_s));
  }
  openai::ApiError timed_out() const {
    char s[32];
    std::snprintf(s, sizeof s, "%g", config.request_timeout_s);
    return openai::ApiError(
        504, "request_timeout",
        std::string("the request ran longer than the server's --request-timeout (") + s + " s)");
  }

  // The key a request was made with ("" without authentication).
  std::string caller(const std::string& authorization) const {
    return config.api_keys.empty() || authorization.rfind("Bearer ", 0) != 0 ? std::string()
                                                                             : authorization.substr(7);
  }
};

}  // namespace rill
