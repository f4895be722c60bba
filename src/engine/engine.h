// Engine: serves many requests at once on one model. submit() hands a request to the engine loop thread and
// returns its stream. The loop runs one step at a time: the Scheduler picks the step's work, the ModelRunner
// runs it and picks the tokens, postprocess() streams each new token to its request and ends the requests that
// are done, and the metrics are published. The loop owns all mutable state (sequences, blocks, queues,
// sessions); other threads only submit, read streams, cancel, call the session functions (which run on the
// loop) and read metrics. `rill serve`, `rill generate` and `rill chat` are all clients of an Engine.
#pragma once

#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "core/thread_pool.h"
#include "engine/model_runner.h"
#include "engine/scheduler.h"
#include "engine/sequence.h"
#include "engine/sessions.h"
#include "engine/speculative.h"
#include "kv/kv_cache.h"
#include "model/model.h"

namespace rill {

struct EngineConfig {
  int num_blocks = 0;  // KV cache blocks (required)
  int block_size = kDefaultBlockSize;
  int max_batch_tokens = 512;
  int max_num_seqs = 64;
  int max_waiting = 1024;  // submit() refuses more (the server answers 503)
  int max_model_len = 0;   // prompt + max_tokens limit; 0: the model's max_position_embeddings
  int max_sessions = 64;   // streaming sessions held at once (create_session refuses more)
  double session_ttl_seconds = 600;  // an idle session is deleted after this long
  // Threads that compute constrained rows' token masks (while the device runs the step) and take their tokens;
  // 0: half the hardware threads, 1 to 8.
  int grammar_threads = 0;
  // Run every kind of step once before serving (ModelRunner::warm_up), so that the first requests do not pay
  // for setting them up. Off by default (tests); rill serve, generate and chat turn it on.
  bool warm_up = false;
  // Speculative decoding (engine/speculative.h): off unless spec.method is set.
  SpecConfig spec;
};

struct EngineMetrics {
  int running = 0, waiting = 0;
  int blocks_total = 0, blocks_free = 0, blocks_cached_free = 0;
  int64_t prompt_tokens = 0, generated_tokens = 0, prefix_lookup_tokens = 0, prefix_hit_tokens = 0;
  int64_t requests_finished = 0, preemptions = 0, steps = 0;
  int sessions = 0, session_blocks = 0;
  int64_t sessions_expired = 0;
  // Speculative decoding: verifications (a sequence's step with drafts), drafts proposed and accepted, and the
  // tokens those steps emitted (accepted drafts plus the correction or bonus token of each).
  int64_t spec_steps = 0, spec_proposed = 0, spec_accepted = 0, spec_emitted = 0;
  int draft_blocks_total = 0, draft_blocks_free = 0;  // the draft model's KV cache (SpecMethod::Draft)
  // Where the loop's time goes: proposing drafts, and running steps (host clock, each until its ids are back);
  // steps and draft chains that replayed a recorded graph.
  double propose_seconds = 0, run_seconds = 0;
  int64_t graph_replays = 0, draft_graph_replays = 0;
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
  // queue is at max_waiting. A request under the sink-window KV policy has no context limit.
  std::shared_ptr<RequestStream> submit(Request request);
  EngineMetrics metrics() const;

  // Streaming sessions (see SessionTable): under the sink-window policy they never run out of context. All throw
  // SessionNotFound for an unknown id, EngineFull while shutting down. create_session throws EngineFull at
  // max_sessions and Error for a bad policy; `defaults` are kept with the session (SessionStatus::defaults).
  uint64_t create_session(KvPolicy policy, std::string defaults = {});
  // Appends tokens; they are prefilled as soon as the engine gets to them (appends may arrive while earlier
  // ones are still being prefilled). SessionBusy while a generation runs.
  SessionStatus append_session(uint64_t id, const std::vector<int32_t>& tokens);
  // Generates after everything appended so far (r.prompt and r.kv_policy are ignored; max_tokens, sampling,
  // stops as for a request); the tokens stream like a request's and are appended to the session. SessionBusy
  // while another runs.
  std::shared_ptr<RequestStream> generate_session(uint64_t id, Request r);
  SessionStatus session_status(uint64_t id);
  std::vector<SessionStatus> list_sessions();
  // Frees the session (cancelling a generation in progress). False when there is no such session.
  bool delete_session(uint64_t id);

  const EngineConfig& config() const { return config_; }
  // What the warm-up ran (zeros without EngineConfig::warm_up).
  const WarmUpReport& warm_up_report() const { return warm_up_; }
  int max_model_len() const { return config_.max_model_len; }

 private:
  // Speculative decoding's costs, measured on steps that only decode: a plain step's seconds and a speculating
  // step's (proposing and verifying), exponential averages (0: not measured yet), and how many plain ones.
  double plain_step_s_ = 0, spec_step_s_ = 0;
  int plain_steps_seen_ = 0;
  // One step's work for the runner: the batch, and how its sampled rows (the sequences in `sampled`) pick.
  // A sampled sequence verifying drafts has 1 + drafts.size() rows, from first_row on.
  struct StepPlan {
    Batch batch;
    RowSampling sampling;
    std::vector<Sequence*> sampled;
    std::vector<std::vector<int32_t>> drafts;  // per sampled sequence
    std::vector<int> first_row;                // per sampled sequence
  };

  // Rejects what this engine cannot run (rill::Error naming the parameter): `r` as a request (history 0), or
  // as a generation after `history` tokens of a session under `policy`.
  void validate(const Request& r, const KvPolicy& policy, int64_t history) const;
  void validate_policy(const KvPolicy& policy) const;
  void check_tokens(const std::vector<int32_t>& tokens, const char* what) const;
  std::shared_ptr<RequestStream> enqueue(Request request);
  // Runs f on the loop thread and returns its result (or rethrows its exception), with the metrics published after it.
  template <class F>
  auto on_loop(F f) -> decltype(f());

  void loop();
  void step();
  void drop_cancelled();
  // Speculative decoding: how many drafts s would verify this step, with `decoding` sequences decoding.
  int lookahead(const Sequence& s, int decoding) const;
  // The drafts of each chunk with draft slots (empty for the others), cut where a grammar refuses them.
  std::vector<std::vector<int32_t>> propose(const std::vector<ScheduledChunk>& chunks);
  StepPlan plan(const std::vector<ScheduledChunk>& chunks, std::vector<std::vector<int32_t>> drafts);
  void postprocess(const std::vector<ScheduledChunk>& chunks, const StepPlan& plan, const StepOutput& out);
  // The one end-of-sequence check: why s ends after `token` (None: it goes on); `grammar_done`: s's grammar
  // is complete after it.
  FinishReason stop_reason(const Sequence& s, int32_t token, bool grammar_done) const;
  void publish_metrics();
  ThreadPool& grammar_pool();

  // Ends s's generation with its final event. An ordinary request leaves the scheduler (its blocks go back); a
  // session's sequence stays, to run its last token and be parked.
  void end_generation(Sequence* s, FinishReason reason, const std::string& error = {});
  // Ends s's generation (if any) and removes it, its session too: on shutdown, or when it can never run.
  void remove(Sequence* s, FinishReason reason, const std::string& error = {});
  void park(Sequence* s);
  void wake(Session& session);
  void expire_sessions();
  SessionStatus status_of(const Session& session) const;

  Model& model_;
  EngineConfig config_;
  KvCache kv_;
  ModelRunner runner_;
  WarmUpReport warm_up_;
  std::unique_ptr<DraftProposer> draft_;  // SpecMethod::Draft; outlives the sequences (their DraftStates)
  Scheduler scheduler_;
  SessionTable sessions_;  // the loop's

  std::thread thread_;
  mutable std::mutex mu_;
  std::condition_variable wake_;
  bool stop_ = false;
  std::vector<std::unique_ptr<Sequence>> incoming_;  // guarded by mu_
  std::vector<std::function<void()>> commands_;       // guarded by mu_: run by the loop thread
  uint64_t next_id_ = 1;                              // guarded by mu_
  EngineMetrics metrics_;                             // published by the loop, guarded by mu_
  EngineMetrics counters_;                            // the loop's own
  // The loop's helpers for constrained rows (masks and accepted tokens, row by row in parallel); made at the first
  // constrained step.
  std::unique_ptr<ThreadPool> grammar_pool_;
};

}  // namespace rill
