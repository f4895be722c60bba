// Sequence: the state of one request inside the engine (plain data; the scheduler and the engine loop
// change it, nothing else does). Its tokens are the prompt followed by what was generated; `computed` of
// them have their K/V in the cache.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "engine/sampler.h"
#include "grammar/matcher.h"
#include "kv/kv_policy.h"

namespace rill {

enum class FinishReason { None, Stop, Length, Cancelled, Error };
const char* finish_reason_name(FinishReason r);

// What a request asks of the engine.
struct Request {
  std::vector<int32_t> prompt;
  SamplingParams sampling;
  int max_tokens = 16;
  bool ignore_eos = false;
  std::vector<int32_t> stop_ids;  // more end-of-sequence ids
  int logprobs = -1;  // >= 0: report the sampled token's log-probability and this many top alternatives
  // Constrained decoding: every token is one the grammar allows (masked before sampling), and the generation
  // ends when the grammar is complete and nothing can follow. Null: unconstrained.
  std::shared_ptr<const grammar::CompiledGrammar> grammar;
  bool speculate = true;  // false: never speculative, whatever the engine's SpecConfig
  KvPolicy kv_policy;  // a sink window: no context limit, constant memory (prompt + output may exceed the model's context)
};

// One thing a request's stream reports: a token, or the end (with why and the token counts).
struct Event {
  int32_t token = -1;  // -1 for the final event
  // With Request::logprobs >= 0: log-probabilities under the model's distribution (before sampling
  // parameters), of the token and of the most likely alternatives.
  float logprob = 0;
  std::vector<std::pair<int32_t, float>> top_logprobs;
  FinishReason finish = FinishReason::None;
  std::string error;
  int prompt_tokens = 0, completion_tokens = 0, cached_tokens = 0;
};

// The channel between the engine loop and whoever submitted the request (thread-safe). The engine pushes
// events; the consumer pops them, or cancels.
class RequestStream {
 public:
  // Blocks until an event is available (or the timeout passes: returns nullopt).
  std::optional<Event> next(double timeout_seconds = -1);
  void cancel() { cancelled_ = true; }
  bool cancelled() const { return cancelled_; }

  void push(Event e);  // engine side

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Event> events_;
  std::atomic<bool> cancelled_{false};
};

// A draft model's KV cache entries for one sequence (speculative decoding): the first `computed` of the
// sequence's tokens have draft K/V in `table`'s blocks, which go back to `blocks` with the state.
struct DraftState {
  BlockManager* blocks = nullptr;
  std::vector<int32_t> table;
  int computed = 0;
  SinkWindowState window;
  explicit DraftState(BlockManager* b) : blocks(b) {}
  ~DraftState() { blocks->release(&table); }
  DraftState(const DraftState&) = delete;
  DraftState& operator=(const DraftState&) = delete;
};

struct Sequence {
  uint64_t id = 0;
  std::vector<int32_t> tokens;
  int prompt_len = 0;
  int computed = 0;
  int cached_tokens = 0;  // prompt tokens found in the prefix cache at first admission
  bool admitted_once = false;
  std::vector<int32_t> blocks;
  SinkWindowState sink_window;  // under the sink-window KV policy: what has been evicted
  // A session's sequence lives across calls: it prefills appended tokens without sampling (generating false)
  // and, when a generate call ends, is parked with its KV instead of being removed.
  uint64_t session = 0;
  bool generating = true;
  int gen_start = 0;  // tokens before the current generation (generated() counts from here)
  Request request;
  Sampler sampler;
  std::unique_ptr<grammar::Matcher> matcher;  // the current generation's, when its request has a grammar
  std::shared_ptr<RequestStream> stream;
  std::unique_ptr<DraftState> draft;  // speculative decoding with a draft model
  // Speculative decoding: the running acceptance rate of this sequence's drafts, its tokens per verification, and
  // the decode steps left before it speculates again (SpecConfig::min_acceptance).
  float spec_rate = 1.f;
  float spec_gain = 0.f;  // tokens per verification (exponential average; 0: none yet)
  int spec_pause = 0;

  Sequence(uint64_t id, Request r, std::shared_ptr<RequestStream> s)
      : id(id), tokens(r.prompt), prompt_len(int(r.prompt.size())), gen_start(prompt_len), request(std::move(r)),
        sampler(request.sampling),
        stream(std::move(s)) {
    sampler.add_prompt(request.prompt);
    if (request.grammar) matcher = std::make_unique<grammar::Matcher>(request.grammar);
  }
  int generated() const { return int(tokens.size()) - gen_start; }
  int remaining() const { return int(tokens.size()) - computed; }  // tokens still to run through the model
  bool is_sink_window() const { return request.kv_policy.is_sink_window(); }
};

}  // namespace rill
