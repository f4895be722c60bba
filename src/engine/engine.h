// Engine: serves many requests at once on one model. submit() hands a request to the engine loop thread
// and returns its stream; the loop runs Scheduler::schedule() -> one Batch -> Model::forward() -> sampling,
// and pushes each new token to its request's stream as soon as it exists. The loop owns all mutable state
// (sequences, blocks, queues); other threads only submit, read streams, cancel and read metrics.
#pragma once

#include <atomic>
#include <condition_variable>
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
};

struct EngineMetrics {
  int running = 0, waiting = 0;
  int blocks_total = 0, blocks_free = 0, blocks_cached_free = 0;
  int64_t prompt_tokens = 0, generated_tokens = 0, prefix_lookup_tokens = 0, prefix_hit_tokens = 0;
  int64_t requests_finished = 0, preemptions = 0, steps = 0;
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
  const EngineConfig& config() const { return config_; }
  int max_model_len() const { return config_.max_model_len; }

 private:
  std::shared_ptr<RequestStream> enqueue(Request request);
  void loop();
  void step();
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
