#include "kv/kv_cache.h"

#include "core/error.h"

namespace rill {

BlockPool::BlockPool(int num_blocks) : ref_(size_t(num_blocks), 0) {
  RILL_CHECK(num_blocks > 0, "KV cache needs at least one block");
  free_.reserve(size_t(num_blocks));
  for (int b = num_blocks - 1; b >= 0; --b) free_.push_back(b);
}

int BlockPool::allocate() {
  if (free_.empty()) return -1;
  const int b = free_.back();
  free_.pop_back();
  ref_[size_t(b)] = 1;
  return b;
}

void BlockPool::retain(int block) {
  RILL_CHECK(ref_[size_t(block)] > 0, "BlockPool::retain on a free block");
  ++ref_[size_t(block)];
}

void BlockPool::release(int block) {
  RILL_CHECK(ref_[size_t(block)] > 0, "BlockPool::release on a free block");
  if (--ref_[size_t(block)] == 0) free_.push_back(block);
}

bool BlockTable::reserve(int tokens, int block_size, BlockPool& pool) {
  const size_t need = size_t((tokens + block_size - 1) / block_size);
  if (need <= blocks.size()) return true;
  if (size_t(pool.num_free()) < need - blocks.size()) return false;
  while (blocks.size() < need) blocks.push_back(pool.allocate());
  return true;
}

void BlockTable::release_all(BlockPool& pool) {
  for (int32_t b : blocks) pool.release(b);
  blocks.clear();
}

size_t KvCache::bytes_per_token(const ModelConfig& c) {
  return size_t(2) * c.num_layers * c.num_kv_heads * c.head_dim * sizeof(float);
}

int KvCache::blocks_for_bytes(const ModelConfig& c, size_t bytes, int block_size) {
  return int(bytes / (bytes_per_token(c) * size_t(block_size)));
}

KvCache::KvCache(Backend& backend, const ModelConfig& c, int num_blocks, int block_size)
    : block_size_(block_size), pool_(num_blocks) {
  RILL_CHECK(block_size > 0, "KV block size must be positive");
  for (int l = 0; l < c.num_layers; ++l) {
    KvLayer layer;
    layer.k = backend.alloc(DType::F32, {num_blocks, block_size, c.num_kv_heads, c.head_dim});
    layer.v = backend.alloc(DType::F32, {num_blocks, block_size, c.num_kv_heads, c.head_dim});
    layers_.push_back(layer);
  }
}

}  // namespace rill
