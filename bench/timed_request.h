// One request through an Engine, timed on the host clock: seconds to its first token (queue + prefill + the
// first pick) and from its first token to its last (the decode steps). Shared by the benchmarks.
#pragma once

#include <chrono>

#include "core/error.h"
#include "engine/engine.h"

namespace rill::bench {

struct Timed {
  double first = 0, decode = 0;
  int tokens = 0;
  int decode_steps() const { return tokens - 1; }
};

inline Timed timed_request(Engine& engine, const Request& r) {
  using Clock = std::chrono::steady_clock;
  auto seconds = [](Clock::time_point a, Clock::time_point b) { return std::chrono::duration<double>(b - a).count(); };
  Timed out;
  const auto t0 = Clock::now();
  auto first = t0, last = t0;
  const auto stream = engine.submit(r);
  for (;;) {
    const auto e = stream->next(600.0);
    if (!e) throw Error("the engine stalled");
    if (e->token < 0) {
      RILL_CHECK(e->finish != FinishReason::Error, "the request failed: " + e->error);
      break;
    }
    last = Clock::now();
    if (out.tokens++ == 0) first = last;
  }
  RILL_CHECK(out.tokens == r.max_tokens, "a request ended after " + std::to_string(out.tokens) + " of " +
                                             std::to_string(r.max_tokens) + " tokens");
  out.first = seconds(t0, first);
  out.decode = seconds(first, last);
  return out;
}

}  // namespace rill::bench
