// KvStream: one sequence streaming through a KvCache under a KV policy, without the scheduler: `rill
// generate`, `rill perplexity` and the tests feed it tokens; it chunks them, evicts window blocks as the policy
// says, and runs the model. With the dense policy it is ordinary chunked prefill + decode.
#pragma once

#include <cstdint>
#include <vector>

#include "kv/kv_cache.h"
#include "kv/kv_policy.h"
#include "model/model.h"

namespace rill {

class KvStream {
 public:
  KvStream(Model& model, KvCache& kv, KvPolicy policy, int max_chunk = 512);
  ~KvStream();
  KvStream(const KvStream&) = delete;
  KvStream& operator=(const KvStream&) = delete;

  // Runs `tokens` through the model. logits receives, per `mode`, nothing, the last token's next-token logits,
  // or every token's ([tokens.size(), vocab]). Throws when the cache cannot hold what the policy needs.
  void feed(const std::vector<int32_t>& tokens, Logits mode, std::vector<float>* logits);

  int64_t length() const { return length_; }  // tokens fed so far
  int64_t visible() const;                    // tokens the last fed token attended to (itself included)
  int blocks_held() const { return int(table_.size()); }
  const KvPolicy& policy() const { return policy_; }

 private:
  Model& model_;
  KvCache& kv_;
  KvPolicy policy_;
  int max_chunk_;
  std::vector<int32_t> table_;
  SinkWindowState state_;
  int64_t length_ = 0;
};

}  // namespace rill
