// ServerMetrics: what /metrics reports beside the engine's own counters: request latencies (time to first
// token, between tokens, to the last token) as Prometheus histograms, and HTTP responses by status.
// Thread-safe: every handler records into it.
#pragma once

#include <array>
#include <cstdint>
#include <map>
#include <mutex>
#include <sstream>
#include <string>

#include "engine/engine.h"

namespace rill {

// A Prometheus histogram of durations in seconds.
class Histogram {
 public:
  void observe(double seconds);
  void render(std::ostringstream& out, const std::string& name, const std::string& help) const;

 private:
  static constexpr std::array<double, 15> kBounds = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                                                     0.5,   1.0,    2.5,   5.0,  10.0,  30.0, 60.0};
  std::array<uint64_t, 15> counts_{};
  uint64_t count_ = 0;
  double sum_ = 0;
};

class ServerMetrics {
 public:
  void first_token(double seconds);
  void between_tokens(double seconds);
  void request_done(double seconds);
  void response(int status);
  // The Prometheus text of /metrics: the engine's gauges and counters, then these.
  std::string render(const EngineMetrics& engine) const;

 private:
  mutable std::mutex mu_;
  Histogram ttft_, itl_, e2e_;
  std::map<int, uint64_t> responses_by_status_;
};

}  // namespace rill
