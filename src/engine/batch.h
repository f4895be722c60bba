// Batch: the host-side description of one forward step, as the scheduler builds it and the ModelRunner
// consumes it. A flat list of tokens from many sequences; sequence s owns tokens [q_start[s], q_start[s+1]).
// Prefill, chunked prefill and decode are all "some tokens of some sequences".
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "kv/kv_policy.h"

namespace rill {

// Which of a sequence's new tokens need logits: none (a prefill chunk that is not the last), the last
// (to sample the next token), or all (scoring a prompt).
enum class Logits { None, Last, All };

struct Batch {
  std::vector<int32_t> tokens;     // [n]
  std::vector<int32_t> positions;  // [n]: RoPE position of each token
  std::vector<int32_t> slots;      // [n]: KV cache slot each token's K/V is written to
  std::vector<int32_t> q_start;    // [num_seqs + 1]
  std::vector<int32_t> ctx_len;    // [num_seqs]: KV entries visible to the sequence after this step
  std::vector<std::vector<int32_t>> block_tables;  // [num_seqs][blocks]
  std::vector<int32_t> logit_rows;  // token indices whose logits are wanted, in output order
  // Sink window (see SinkWindowView): per token, the position its query is rotated at to score the sinks and
  // the end of its masked hole; per sequence, the sink entries.
  std::vector<int32_t> sink_positions, hole_end;  // [n]
  std::vector<int32_t> sinks;                     // [num_seqs]
  bool sink_window = false;                       // some sequence has an active SinkWindowView

  int num_tokens() const { return int(tokens.size()); }
  int num_seqs() const { return int(ctx_len.size()); }
  // Appends a sequence's new tokens (at positions start_pos.., cache indices start_index..).
  void add_sequence(const std::vector<int32_t>& new_tokens, int start_pos, int start_index,
                    const std::vector<int32_t>& block_table, int block_size, Logits logits,
                    const SinkWindowView& view = {});
};

}  // namespace rill
