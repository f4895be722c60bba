// Engine: serves many requests at once on one model. submit() hands a request to the engine loop thread
// and returns its stream; the loop runs Scheduler::schedule() -> one Batch -> Model::forward() -> sampling,
// and pushes each new token to its request's stream as soon as it exists. The loop owns all mutable state
// (sequences, blocks, queues); other threads only submit, read streams, cancel and read metrics.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <optional>
#include <unordered_map>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "core/error.h"
#include "engine/scheduler.h"
#include "engine/sequence.h"
#include "kv/kv_cache.h"
#include "model/model.h"

namespace rill {

struct EngineConfig {
  int num_blocks = 0;  // KV cache blocks (required)
  int block_size = 16;
  int max_batch_tokens = 512;
  int max_num_seqs = 64;
  int max_waiting = 1024;  // submit() refuses more (the server answers 503)
  int max_model_len = 0;   // prompt + max_tokens limit; 0: the model's max_position_embeddings
  int max_sessions = 64;   // streaming sessions held at once (create_session refuses more)
  double session_ttl_seconds = 600;  // an idle session is deleted after this long
};

// A streaming session's state, as the API reports it.
struct SessionStatus {
  uint64_t id = 0;
  KvPolicy kv_policy;
  int64_t tokens = 0;         // tokens seen (appended + generated)
  int64_t tokens_cached = 0;  // tokens whose K/V the model attends to now
  int64_t pending = 0;        // appended tokens not yet prefilled
  int blocks = 0;             // KV blocks held
  size_t kv_bytes = 0;        // memory those blocks hold
  bool generating = false;
  double idle_seconds = 0;
};

class SessionNotFound : public Error {
 public:
  using Error::Error;
};
class SessionBusy : public Error {
 public:
  using Error::Error;
};

struct EngineMetrics {
  int running = 0, waiting = 0;
  int blocks_total = 0, blocks_free = 0, blocks_cached_free = 0;
  int64_t prompt_tokens = 0, generated_tokens = 0, prefix_lookup_tokens = 0, prefix_hit_tokens = 0;
  int64_t requests_finished = 0, preemptions = 0, steps = 0;
  int sessions = 0, session_blocks = 0;
  int64_t sessions_expired = 0;
};

class Engine {
 public:
  Engine(Model& model, EngineConfig config);
  ~Engine();  // shutdown()
  // Stops the loop: every request still running or queued ends as cancelled; later submits are refused.
  void shutdown();
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  // Validates (rill::Error names the parameter) and queues the request. Throws EngineFull when the waiting
  // queue is at max_waiting. A request under a rolling KV policy (sinks + window) has no context limit.
  std::shared_ptr<RequestStream> submit(Request request);
  EngineMetrics metrics() const;

  // Streaming sessions: persistent sequences that live across calls (under a rolling KV policy they never run
  // out of context). All throw SessionNotFound for an unknown id, EngineFull while shutting down.
  // create_session throws EngineFull at max_sessions and Error for a bad policy.
  uint64_t create_session(KvPolicy policy);
  // Appends tokens; they are prefilled as soon as the engine gets to them (appends may arrive while earlier
  // ones are still being prefilled). SessionBusy while a generation runs.
  SessionStatus append_session(uint64_t id, const std::vector<int32_t>& tokens);
  // Generates after everything appended so far (r.prompt is ignored; max_tokens, sampling, stops as for a
  // request); the tokens stream like a request's and are appended to the session. SessionBusy while another runs.
  std::shared_ptr<RequestStream> generate_session(uint64_t id, Request r);
  SessionStatus session_status(uint64_t id);
  std::vector<SessionStatus> list_sessions();
  // Frees the session (cancelling a generation in progress). False when there is no such session.
  bool delete_session(uint64_t id);
  const EngineConfig& config() const { return config_; }
  int max_model_len() const { return config_.max_model_len; }

 private:
  std::shared_ptr<RequestStream> enqueue(Request request);
  void loop();
  void step();
  // Runs f on the loop thread and returns its result (or rethrows its exception).
  template <class F>
  auto on_loop(F f) -> decltype(f());
  struct SessionSlot;
  SessionSlot& slot(uint64_t id);
  SessionStatus status_of(uint64_t id, const SessionSlot& s) const;
  void park(Sequence* s);
  void wake_session(SessionSlot& slot);
  void expire_sessions();
  void end_generation(Sequence* s, FinishReason reason, const std::string& error = {});
  void finish(Sequence* s, FinishReason reason, const std::string& error = "");

  Model& model_;
  EngineConfig config_;
  KvCache kv_;
  Scheduler scheduler_;

  std::thread thread_;
  mutable std::mutex mu_;
  std::condition_variable wake_;
  bool stop_ = false;
  std::vector<std::unique_ptr<Sequence>> incoming_;  // guarded by mu_
  std::vector<std::function<void()>> commands_;       // guarded by mu_: run by the loop thread
  std::unordered_map<uint64_t, std::unique_ptr<SessionSlot>> sessions_;  // the loop's
  uint64_t next_session_ = 1;                                            // the loop's
  uint64_t next_id_ = 1;                              // guarded by mu_
  EngineMetrics metrics_;                             // published by the loop, guarded by mu_
  EngineMetrics counters_;                            // the loop's own
  std::vector<float> logits_;
};

class EngineFull : public Error {
 public:
  using Error::Error;
};

}  // namespace rill
