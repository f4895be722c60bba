#include "engine/batch.h"

#include <algorithm>

namespace rill {

void Batch::add_sequence(const std::vector<int32_t>& new_tokens, int start_pos, int start_index,
                         const std::vector<int32_t>& block_table, int block_size, Logits logits,
                         const SinkWindowView& view) {
  if (q_start.empty()) q_start.push_back(0);
  const int first = num_tokens();
  for (size_t i = 0; i < new_tokens.size(); ++i) {
    const int index = start_index + int(i);
    tokens.push_back(new_tokens[i]);
    positions.push_back(start_pos + int(i));
    sink_positions.push_back(view.active ? view.sink_pos[i] : start_pos + int(i));
    hole_end.push_back(view.active ? std::max(view.sinks, view.hole_end[i]) : 0);
    slots.push_back(block_table[size_t(index / block_size)] * block_size + index % block_size);
    if (logits == Logits::All) logit_rows.push_back(first + int(i));
  }
  if (logits == Logits::Last && !new_tokens.empty()) logit_rows.push_back(num_tokens() - 1);
  q_start.push_back(num_tokens());
  ctx_len.push_back(start_index + int(new_tokens.size()));
  block_tables.push_back(block_table);
  sinks.push_back(view.active ? view.sinks : 0);
  sink_window = sink_window || view.active;
}

}  // namespace rill
