// Scorer: one sequence run through the ModelRunner outside the engine, for its logits (teacher forcing): `rill
// perplexity`, `rill generate --dump-logits` and the tests feed it tokens; it chunks them, evicts window blocks
// as the KV policy says (dense, or a sink window), and returns every position's next-token logits or the last
// one's. Generation goes through the Engine; the Scorer samples nothing.
#pragma once

#include <cstdint>
#include <vector>

#include "kv/kv_cache.h"
#include "kv/kv_policy.h"
#include "engine/batch.h"
#include "engine/model_runner.h"

namespace rill {

class Scorer {
 public:
  Scorer(ModelRunner& runner, KvCache& kv, KvPolicy policy, int max_chunk = 512);
  ~Scorer();  // releases the sequence's blocks
  Scorer(const Scorer&) = delete;
  Scorer& operator=(const Scorer&) = delete;

  // Runs `tokens` through the model. logits receives, per `mode`, nothing, the last token's next-token logits,
  // or every token's ([tokens.size(), vocab]). Throws when the cache cannot hold what the policy needs.
  void feed(const std::vector<int32_t>& tokens, Logits mode, std::vector<float>* logits);

  int64_t length() const { return length_; }  // tokens fed so far
  int64_t visible() const;                    // tokens the last fed token attended to (itself included)
  int blocks_held() const { return int(table_.size()); }
  const KvPolicy& policy() const { return policy_; }

 private:
  ModelRunner& runner_;
  KvCache& kv_;
  KvPolicy policy_;
  int max_chunk_;
  std::vector<int32_t> table_;
  SinkWindowState state_;
  int64_t length_ = 0;
};

}  // namespace rill
