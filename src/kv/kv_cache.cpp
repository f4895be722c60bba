#include "kv/kv_cache.h"

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

}  // namespace rill
