#include "kv/kv_cache.h"

#include <algorithm>
#include <atomic>

#include "core/error.h"

namespace rill {

namespace {
uint64_t next_id() {
  static std::atomic<uint64_t> counter{0};
  return ++counter;
}
}  // namespace

size_t KvCache::bytes_per_token(const ModelConfig& c, DType dtype) {
  return size_t(2) * c.num_layers * c.num_kv_heads * c.head_dim * dtype_size(dtype);
}

int KvCache::blocks_for_bytes(const ModelConfig& c, size_t bytes, int block_size, DType dtype) {
  return int(bytes / (bytes_per_token(c, dtype) * size_t(block_size)));
}

KvCache::KvCache(Backend& backend, const ModelConfig& c, int num_blocks, int block_size)
    : block_size_(block_size), id_(next_id()), blocks_(num_blocks, block_size) {
  RILL_CHECK(block_size > 0, "KV block size must be positive");
  for (int l = 0; l < c.num_layers; ++l) {
    KvLayer layer;
    layer.k = backend.alloc(backend.kv_dtype(), {num_blocks, block_size, c.num_kv_heads, c.head_dim});
    layer.v = backend.alloc(backend.kv_dtype(), {num_blocks, block_size, c.num_kv_heads, c.head_dim});
    layers_.push_back(layer);
  }
}

int kv_blocks_for_sequence(const KvPolicy& policy, int64_t tokens, int block_size) {
  if (policy.is_sink_window()) return SinkWindowState::max_blocks(policy, block_size);
  return int((tokens + block_size - 1) / block_size);
}

size_t kv_bytes_on_device(const ModelConfig& c, size_t free_bytes, size_t total_bytes, double fraction,
                          int max_batch_tokens, int max_num_seqs) {
  const size_t act_per_token = size_t(4) * (size_t(c.hidden_size) * 4 + size_t(c.num_heads) * c.head_dim * 4 +
                                            size_t(std::max(c.intermediate_size, c.moe_intermediate_size)) * 2);
  const size_t reserve = size_t(max_batch_tokens) * act_per_token + size_t(max_num_seqs) * size_t(c.vocab_size) * 8 +
                         (size_t(512) << 20);
  const double allowed = fraction * double(total_bytes) - double(total_bytes - free_bytes);
  return allowed > double(reserve) ? size_t(allowed) - reserve : 0;
}

}  // namespace rill
