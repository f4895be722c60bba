#include "engine/scheduler.h"

#include <algorithm>

#include "core/error.h"

namespace rill {

void Scheduler::preempt(size_t i) {
  std::unique_ptr<Sequence> s = std::move(running_[i]);
  running_.erase(running_.begin() + long(i));
  blocks_.release(&s->blocks);
  s->computed = 0;  // recomputed from its tokens (prompt and output so far) when admitted again
  s->sink_window = SinkWindowState{};
  waiting_.push_front(std::move(s));
  ++preemptions_;
}

int Scheduler::chunk_for(Sequence* s, int n) const {
  return s->is_sink_window() ? std::min(n, SinkWindowState::max_chunk(s->request.kv_policy)) : n;
}

int Scheduler::entries_for(Sequence* s, int n) {
  if (!s->is_sink_window()) return s->computed + n;
  return s->sink_window.prepare(s->computed, n, s->request.kv_policy, blocks_, &s->blocks);
}

std::vector<ScheduledChunk> Scheduler::schedule(const std::function<int(const Sequence&)>& lookahead) {
  std::vector<ScheduledChunk> out;
  int budget = config_.max_batch_tokens;
  // Grows s's blocks to `tokens`, preempting the newest running sequences while blocks are short. Returns
  // false when s itself had to go (it is then back in the waiting queue).
  auto reserve = [&](Sequence* s, int tokens) {
    while (!blocks_.grow(tokens, &s->blocks)) {
      Sequence* victim = running_.back().get();
      out.erase(std::remove_if(out.begin(), out.end(), [&](const ScheduledChunk& c) { return c.seq == victim; }), out.end());
      budget = config_.max_batch_tokens;
      for (const auto& c : out) budget -= c.count + c.draft_slots;
      preempt(running_.size() - 1);
      if (victim == s) return false;
    }
    return true;
  };
  // 1. Decodes: one pending token each.
  for (size_t i = 0; i < running_.size() && budget > 0;) {
    Sequence* s = running_[i].get();
    if (s->remaining() != 1) {
      ++i;
      continue;
    }
    if (!reserve(s, entries_for(s, 1))) continue;  // s was the newest: running_[i] is now another one
    // Speculative tokens, as far as the budget, a sink window's chunk and the free blocks allow (they never
    // preempt anyone).
    int n = chunk_for(s, 1 + std::clamp(lookahead && s->generating ? lookahead(*s) : 0, 0, budget - 1));
    if (n > 1 && !blocks_.grow(entries_for(s, n), &s->blocks)) n = 1;
    out.push_back({s, s->computed, 1, s->generating, n - 1});
    budget -= n;
    ++i;
  }
  // 2. Prefill chunks of running sequences that are part-way through their prompt.
  for (size_t i = 0; i < running_.size() && budget > 0;) {
    Sequence* s = running_[i].get();
    if (s->remaining() <= 1) {
      ++i;
      continue;
    }
    const int n = chunk_for(s, std::min(s->remaining(), budget));
    if (!reserve(s, entries_for(s, n))) continue;
    out.push_back({s, s->computed, n, s->generating && s->computed + n == int(s->tokens.size())});
    budget -= n;
    ++i;
  }
  // 3. Admit waiting sequences, first come first served.
  while (budget > 0 && !waiting_.empty() && int(running_.size()) < config_.max_num_seqs) {
    Sequence* s = waiting_.front().get();
    if (s->blocks.empty()) {
      int matched = blocks_.match_prefix(s->tokens, &s->blocks);
      if (s->is_sink_window()) {
        // Reuse only what a sink-window sequence sees before its first eviction (the cached blocks were computed
        // with everything before them in view).
        const KvPolicy& p = s->request.kv_policy;
        const int keep = std::min<int>(int(s->blocks.size()), (p.sinks + p.window) / blocks_.block_size());
        std::vector<int32_t> extra(s->blocks.begin() + keep, s->blocks.end());
        blocks_.release(&extra);
        s->blocks.resize(size_t(keep));
        matched = std::min(matched, keep * blocks_.block_size());
      }
      s->computed = matched;
      if (!s->admitted_once) s->cached_tokens = std::min(matched, s->prompt_len);
    }
    const int n = chunk_for(s, std::min(s->remaining(), budget));
    if (!blocks_.grow(entries_for(s, n), &s->blocks)) {
      // Not enough free blocks now. Give back the prefix blocks too, so a sequence that can never fit
      // does not pin them; it keeps its place at the head of the queue.
      blocks_.release(&s->blocks);
      s->computed = 0;
      s->sink_window = SinkWindowState{};
      break;
    }
    s->admitted_once = true;
    out.push_back({s, s->computed, n, s->generating && s->computed + n == int(s->tokens.size())});
    budget -= n;
    running_.push_back(std::move(waiting_.front()));
    waiting_.pop_front();
  }
  return out;
}

namespace {

// Takes seq out of `list` (a vector or deque of owners); null when it is not there.
template <class List>
std::unique_ptr<Sequence> take(List& list, Sequence* seq) {
  const auto it = std::find_if(list.begin(), list.end(), [&](const auto& s) { return s.get() == seq; });
  if (it == list.end()) return nullptr;
  std::unique_ptr<Sequence> owned = std::move(*it);
  list.erase(it);
  return owned;
}

}  // namespace

std::unique_ptr<Sequence> Scheduler::detach(Sequence* seq) {
  std::unique_ptr<Sequence> owned = take(running_, seq);
  if (!owned) owned = take(waiting_, seq);
  RILL_CHECK(owned, "Scheduler: unknown sequence");
  return owned;
}

std::unique_ptr<Sequence> Scheduler::remove(Sequence* seq) {
  std::unique_ptr<Sequence> owned = detach(seq);
  blocks_.release(&owned->blocks);
  return owned;
}

}  // namespace rill
