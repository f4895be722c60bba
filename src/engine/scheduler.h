// Scheduler: continuous batching with chunked prefill (Sarathi-Serve / Dynamic SplitFuse). Each step runs
// every running sequence's pending token first (decodes), then fills the rest of the token budget with
// prefill chunks: of sequences already prefilling, then of waiting ones (first come, first served),
// admitted while their chunk's KV blocks are free and fewer than max_num_seqs run. When a decode needs a
// block and none is free, the newest running sequence is preempted: its blocks are released and it goes
// back to the front of the queue to be recomputed (its finished blocks usually still sit in the prefix
// cache). No request is lost or duplicated. Sequences under the sink-window KV policy (attention sinks) evict their
// oldest window blocks before they grow, so they run forever in constant memory. Used by the engine loop
// thread only.
#pragma once

#include <deque>
#include <functional>
#include <memory>
#include <vector>

#include "engine/sequence.h"
#include "kv/block_manager.h"

namespace rill {

struct SchedulerConfig {
  int max_batch_tokens = 512;
  int max_num_seqs = 64;
};

// One sequence's share of a step: tokens [start, start + count) run; `sample` when the step yields the
// sequence's next token (the chunk reaches its last token). A decode may also have `draft_slots` cache entries
// reserved after its token, for speculative tokens to verify in the same step.
struct ScheduledChunk {
  Sequence* seq;
  int start, count;
  bool sample;
  int draft_slots = 0;
};

class Scheduler {
 public:
  Scheduler(BlockManager& blocks, SchedulerConfig config) : blocks_(blocks), config_(config) {}

  void add(std::unique_ptr<Sequence> seq) { waiting_.push_back(std::move(seq)); }
  // The work of the next step. Empty when nothing can run. `lookahead`, when given, says how many speculative
  // tokens a decoding sequence would verify; their entries are reserved and count against the token budget.
  std::vector<ScheduledChunk> schedule(const std::function<int(const Sequence&)>& lookahead = {});
  // Removes a finished or cancelled sequence (running or waiting) and releases its blocks.
  std::unique_ptr<Sequence> remove(Sequence* seq);
  // Takes a sequence (running or waiting) out of the scheduler, keeping its blocks (a parked session).
  std::unique_ptr<Sequence> detach(Sequence* seq);

  const std::vector<std::unique_ptr<Sequence>>& running() const { return running_; }
  const std::deque<std::unique_ptr<Sequence>>& waiting() const { return waiting_; }
  int64_t preemptions() const { return preemptions_; }

 private:
  void preempt(size_t running_index);
  // Tokens of s that may run now out of n (a sink-window sequence keeps every new token inside its window).
  int chunk_for(Sequence* s, int n) const;
  // Cache entries s's table must hold to run its next n tokens; evicts window blocks of a sink-window sequence.
  int entries_for(Sequence* s, int n);

  BlockManager& blocks_;
  SchedulerConfig config_;
  std::vector<std::unique_ptr<Sequence>> running_;  // in admission order: the newest last
  std::deque<std::unique_ptr<Sequence>> waiting_;
  int64_t preemptions_ = 0;
};

}  // namespace rill
