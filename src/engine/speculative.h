// Speculative decoding: proposers guess a sequence's next tokens, and the engine's ordinary step verifies them.
//
// A speculating sequence's decode row becomes K + 1 rows of the same flat batch: its pending token and the K
// drafts, all with logits (mixed with prefill chunks and plain decodes). Row j picks a token exactly as a decode
// step would, under the row's own sampling parameters: penalties counting drafts 0..j-1 as output, and the
// uniform of its own output index (Sampler::next_row). Tokens are accepted in order while the picked token equals
// the draft; the first that differs is kept as the correction, and when all K are accepted the last row's pick is
// a bonus token. Both proposers here propose deterministically (q is one-hot), and for a one-hot q the standard
// rejection rule (accept with min(1, p/q), else draw from the residual max(0, p - q)) is exactly this: draw from
// p, accept when it is the draft. So the output follows the target distribution, and since output token i always
// uses draw i, a seeded request gives the same tokens with and without speculation whenever the logits are the
// same (bit for bit on the CPU, and on the GPU under RILL_BATCH_INVARIANT).
//
// Rejected rows' KV entries lie past the sequence's computed tokens, in blocks released after the step; the next
// step overwrites them. Block hashes cover computed tokens only, so the prefix cache never sees a rejected token.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "engine/model_runner.h"
#include "engine/sequence.h"
#include "kv/kv_cache.h"
#include "model/model.h"

namespace rill {

enum class SpecMethod { None, Draft, Ngram };
// "none", "draft", "ngram"; throws naming `what`.
SpecMethod parse_spec_method(const std::string& name, const std::string& what = "--spec");
const char* spec_method_name(SpecMethod m);

struct SpecConfig {
  SpecMethod method = SpecMethod::None;
  int tokens = 4;        // K: the most drafts one sequence verifies per step
  int max_batch = 16;    // no speculation in a step where more sequences decode (the batch is compute-bound)
  Model* draft = nullptr;  // SpecMethod::Draft: the draft model (same vocabulary), run on its own KV cache
  int ngram_min = 2, ngram_max = 4;  // SpecMethod::Ngram: the n-gram sizes matched, longest first
  int ngram_lookback = 65536;        // tokens searched back from the end
  // A sequence stops speculating for `pause` decode steps, then tries again, when its drafts do not pay: when
  // its tokens per verification (an exponential average) are fewer than a speculative step's time over a plain
  // decode step's (both measured by the engine, on steps that only decode), or when its drafts' running
  // acceptance rate falls below min_acceptance. < 0: the method's default (0.3 for a draft model, whose steps
  // cost; 0.1 for n-gram lookup, which costs only the wider verification).
  float min_acceptance = -1.f;
  int pause = 32;
  bool weigh_costs = true;  // false: only min_acceptance pauses (which steps speculate then does not depend on time)
  float acceptance_floor() const { return min_acceptance >= 0 ? min_acceptance : method == SpecMethod::Draft ? 0.3f : 0.1f; }

  // Throws rill::Error naming the option.
  void validate(int target_vocab) const;
};

// Prompt lookup: the k tokens (or fewer) that followed the most recent earlier occurrence of the sequence's last
// n tokens, for the largest n in [min_n, max_n] that occurs; empty when none does.
// Whether verifying drafts pays for a sequence that gets `tokens_per_verification` tokens from a step costing
// `spec_seconds` (proposing and verifying), where a plain decode step costs `plain_seconds`. Unknown costs (<= 0):
// yes.
inline bool speculation_pays(double tokens_per_verification, double spec_seconds, double plain_seconds) {
  return spec_seconds <= 0 || plain_seconds <= 0 || tokens_per_verification * plain_seconds >= spec_seconds;
}

std::vector<int32_t> ngram_propose(const std::vector<int32_t>& tokens, int k, int min_n, int max_n,
                                   int lookback);

// Appends s's stream tokens [start, start + new_tokens.size()) to `batch` at their cache places: positions and
// slots as the KV policy lays them out (a sink window: cache indices and the view of what each token sees).
void add_stream_chunk(Batch& batch, const std::vector<int32_t>& new_tokens, int64_t start, const KvPolicy& policy,
                      const SinkWindowState& window, const std::vector<int32_t>& table, int block_size,
                      Logits logits);

// A draft model's proposals: greedy continuations, run on its own paged KV cache (one DraftState per sequence,
// kept while the sequence lives, sessions included, and caught up with the sequence's tokens before each
// proposal). Used by the engine loop only.
class DraftProposer {
 public:
  // A cache of num_blocks blocks of block_size tokens; steps of at most max_batch_tokens tokens.
  DraftProposer(Model& draft, int num_blocks, int block_size, int max_batch_tokens);

  // For each sequence, up to k[i] tokens that might follow its tokens (fewer, or none, when the draft cache is
  // full). All sequences run together: their catch-up chunks, then k - 1 decode steps.
  std::vector<std::vector<int32_t>> propose(const std::vector<Sequence*>& seqs, const std::vector<int>& k);
  // After verification: s's first `valid` tokens are the draft cache's still (the drafts accepted).
  void rollback(Sequence& s, int valid);

  KvCache& kv() { return kv_; }
  ModelRunner& runner() { return runner_; }

 private:
  Model& model_;
  KvCache kv_;
  ModelRunner runner_;
  int max_batch_tokens_;
};

}  // namespace rill
