#include "kv/kv_policy.h"

#include <algorithm>

#include "core/error.h"

namespace rill {

KvPolicy KvPolicy::parse(const std::string& name, int sinks, int window, const std::string& what) {
  KvPolicy p;
  p.sinks = sinks;
  p.window = window;
  if (name == "dense") p.type = Type::Dense;
  else if (name == "sink") p.type = Type::SinkWindow;
  else if (name == "window") {
    p.type = Type::SinkWindow;
    p.sinks = 0;
  } else {
    throw Error(what + ": unknown KV policy '" + name + "' (expected dense, sink or window)");
  }
  return p;
}

void KvPolicy::validate(int block_size, int max_len, const std::string& what) const {
  if (!is_sink_window()) return;
  RILL_CHECK(sinks >= 0, what + ": sinks must be >= 0 (got " + std::to_string(sinks) + ")");
  RILL_CHECK(window >= 2 * block_size, what + ": window must be at least two KV blocks (" +
                                           std::to_string(2 * block_size) + " tokens; got " + std::to_string(window) + ")");
  RILL_CHECK(int64_t(sinks) + window <= max_len,
             what + ": sinks (" + std::to_string(sinks) + ") + window (" + std::to_string(window) + ") = " +
                 std::to_string(int64_t(sinks) + window) + " exceeds the model's context of " + std::to_string(max_len) +
                 " tokens");
}

std::string KvPolicy::str() const {
  if (!is_sink_window()) return "dense";
  return (sinks > 0 ? "sink(sinks " + std::to_string(sinks) + ", " : "window(") + "window " + std::to_string(window) + ")";
}

int SinkWindowState::evictions_for(int64_t end, const KvPolicy& p, int bs) const {
  if (evicted_blocks == 0 && end <= int64_t(p.sinks) + p.window) return 0;
  // Smallest E >= max(1, evicted) with end - (SB + E) * bs <= window.
  const int64_t sb = sink_blocks(p, bs);
  const int64_t need = (end - p.window + bs - 1) / bs - sb;
  return int(std::max<int64_t>({1, int64_t(evicted_blocks), need}));
}

int SinkWindowState::prepare(int64_t computed, int n, const KvPolicy& p, BlockManager& blocks,
                             std::vector<int32_t>* table) {
  const int bs = blocks.block_size();
  const int target = evictions_for(computed + 1, p, bs);
  if (target > evicted_blocks) {
    const int sb = sink_blocks(p, bs);
    // Table: [sink blocks][window blocks from stream block sb + evicted_blocks on].
    const int drop = std::min<int>(target - evicted_blocks, std::max(0, int(table->size()) - sb));
    std::vector<int32_t> gone(table->begin() + sb, table->begin() + sb + drop);
    blocks.release(&gone);
    table->erase(table->begin() + sb, table->begin() + sb + drop);
    evicted_blocks = target;
  }
  return cache_index(computed + n - 1, p, bs) + 1;
}

SinkWindowView SinkWindowState::view(int64_t start, int n, const KvPolicy& p, int bs) const {
  SinkWindowView v;
  for (int i = 0; i < n; ++i) {
    const int64_t t = start + i;
    const SinkWindowState own{evictions_for(t + 1, p, bs)};  // what t sees when the stream runs token by token
    if (own.evicted_blocks == 0) {
      v.hole_end.push_back(p.sinks);
      v.sink_pos.push_back(int32_t(t));
    } else {
      v.active = true;
      v.sinks = p.sinks;
      v.hole_end.push_back((sink_blocks(p, bs) + own.evicted_blocks - evicted_blocks) * bs);
      v.sink_pos.push_back(int32_t(own.cache_position(t, p, bs)));
    }
  }
  return v;
}

}  // namespace rill
