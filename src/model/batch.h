// Batch: the host-side description of one forward step, as the scheduler builds it. A flat list of
// tokens from many sequences; sequence s owns tokens [q_start[s], q_start[s+1]). Prefill, chunked
// prefill and decode are all "some tokens of some sequences".
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace rill {

// Which of a sequence's new tokens need logits: none (a prefill chunk that is not the last), the last
// (to sample the next token), or all (scoring a prompt).
enum class Logits { None, Last, All };

// A sequence under a rolling (attention-sink) KV policy, when active: its first `sinks` KV entries are scored
// with the query rotated at sink_pos[i] (token i's cache position) instead of its stream position, and token i
// skips entries [sinks, hole_end[i]). Default (inactive): none of that.
struct RollingView {
  bool active = false;
  int sinks = 0;
  std::vector<int32_t> hole_end, sink_pos;  // per new token
};

struct Batch {
  std::vector<int32_t> tokens;     // [n]
  std::vector<int32_t> positions;  // [n]: RoPE position of each token
  std::vector<int32_t> slots;      // [n]: KV cache slot each token's K/V is written to
  std::vector<int32_t> q_start;    // [num_seqs + 1]
  std::vector<int32_t> ctx_len;    // [num_seqs]: KV entries visible to the sequence after this step
  std::vector<std::vector<int32_t>> block_tables;  // [num_seqs][blocks]
  std::vector<int32_t> logit_rows;  // token indices whose logits are wanted, in output order
  // Rolling KV (see RollingView): per token, the position its query is rotated at to score sinks and the end
  // of its masked hole; per sequence, the sink entries.
  std::vector<int32_t> sink_positions, hole_end;  // [n]
  std::vector<int32_t> sinks;                     // [num_seqs]
  bool rolling = false;                           // some sequence has an active RollingView

  int num_tokens() const { return int(tokens.size()); }
  int num_seqs() const { return int(ctx_len.size()); }
  // Appends a sequence's new tokens (at positions start_pos.., cache indices start_index..).
  void add_sequence(const std::vector<int32_t>& new_tokens, int start_pos, int start_index,
                    const std::vector<int32_t>& block_table, int block_size, Logits logits,
                    const RollingView& rolling = {});
  bool any_rolling() const { return rolling; }
};

}  // namespace rill
