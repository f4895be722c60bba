// KV cache policies. Dense keeps every token's K/V (the context is bounded by the model). SinkWindow
// (StreamingLLM) keeps the first `sinks` tokens forever plus a window of the most recent tokens, so a sequence
// can run forever in constant memory and constant time per token; `sinks` 0 is a plain window (the "window"
// policy). One name throughout: the sink window.
//
// Layout in the paged cache: the first ceil(sinks / block_size) blocks ("sink blocks") are never evicted;
// window blocks follow. When the visible tokens would exceed sinks + window, the oldest window blocks are
// evicted whole (after the first eviction, the sink blocks' tokens beyond `sinks` are masked). The model never
// sees more than sinks + window tokens.
//
// Positions are those of the cache, as in StreamingLLM: sinks at 0..S-1, the window contiguously after them.
// Keys are rotated once, when written, at their position in the stream; a query is rotated at its stream
// position to score the window (relative distances are equal) and, separately, at its cache position to score
// the sinks. Nothing is re-rotated when the window moves, and RoPE angles are computed in double, so positions
// in the millions stay exact.
#pragma once

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "kv/block_manager.h"

namespace rill {

struct KvPolicy {
  enum class Type { Dense, SinkWindow };
  Type type = Type::Dense;
  int sinks = 4;
  int window = 1024;

  bool is_sink_window() const { return type == Type::SinkWindow; }
  // "dense", "sink" (sinks + window) or "window" (no sinks); sinks/window as given. Throws naming `what`.
  static KvPolicy parse(const std::string& name, int sinks, int window, const std::string& what = "kv_policy");
  // Checks the numbers against the block size and the model's context (sinks + window <= max_len).
  void validate(int block_size, int max_len, const std::string& what = "kv_policy") const;
  std::string str() const;
};

// What attention needs to know about a sink-window sequence's new tokens [start, start + n): per token, the end
// of the masked hole after the sinks (a cache index) and the cache position its query is rotated at to score
// the sinks. Inactive (the default) while every token of the chunk still sees the whole stream: then attention
// needs none of it.
struct SinkWindowView {
  bool active = false;
  int sinks = 0;
  std::vector<int32_t> hole_end, sink_pos;  // per new token
};

// One sequence's place in a SinkWindow cache: how many window blocks it has evicted. Stream index t is the
// token's index in the sequence (0, 1, 2, ... forever).
struct SinkWindowState {
  int evicted_blocks = 0;  // E

  // Sink blocks of the table (never evicted).
  static int sink_blocks(const KvPolicy& p, int bs) { return (p.sinks + bs - 1) / bs; }
  // First stream index of the visible window (the masked sink-block tail ends here once E > 0).
  int window_start(const KvPolicy& p, int bs) const { return (sink_blocks(p, bs) + evicted_blocks) * bs; }
  // Where stream token t (a sink, or a token of the visible window) sits in the block table.
  int cache_index(int64_t t, const KvPolicy& p, int bs) const {
    return t < p.sinks || evicted_blocks == 0 ? int(t) : int(t - int64_t(evicted_blocks) * bs);
  }
  // Position of stream token t in the cache (sinks 0..S-1, the window right after them).
  int64_t cache_position(int64_t t, const KvPolicy& p, int bs) const {
    return evicted_blocks == 0 || t < p.sinks ? t : p.sinks + (t - window_start(p, bs));
  }
  // Tokens the model sees once the stream holds `end` tokens.
  int64_t visible(int64_t end, const KvPolicy& p, int bs) const {
    return evicted_blocks == 0 ? end : p.sinks + (end - window_start(p, bs));
  }
  // Total window blocks that must be evicted (>= evicted_blocks) so that a stream of `end` tokens shows at most
  // sinks + window of them.
  int evictions_for(int64_t end, const KvPolicy& p, int bs) const;
  // The most tokens one forward step may run (bounds the table at window + window/4 entries).
  static int max_chunk(const KvPolicy& p) { return std::max(1, p.window / 4); }
  // Before running stream tokens [computed, computed + n): evicts the window blocks that even the first of them
  // no longer sees (their references are released) and returns the number of cache entries the table must then
  // hold. Later tokens of the chunk mask the extra entries, so every token sees exactly what it would see if the
  // stream ran one token at a time: results do not depend on how the stream is chunked.
  int prepare(int64_t computed, int n, const KvPolicy& p, BlockManager& blocks, std::vector<int32_t>* table);
  // The view of tokens [start, start + n) after prepare().
  SinkWindowView view(int64_t start, int n, const KvPolicy& p, int bs) const;
  // Blocks a sequence holds at most: sink blocks, the window, a chunk, and a partly filled block.
  static int max_blocks(const KvPolicy& p, int bs) {
    return sink_blocks(p, bs) + (p.window + max_chunk(p) + bs - 1) / bs + 1;
  }
};

}  // namespace rill
