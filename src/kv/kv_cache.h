// The paged KV cache. BlockPool hands out fixed-size blocks (ref-counted, so blocks can later be shared
// by prefix reuse); KvCache owns the per-layer K/V storage on the backend's device; BlockTable maps one
// sequence's token indices to blocks. None of these run kernels. Owned and used by one thread (the
// engine loop).
#pragma once

#include <cstdint>
#include <vector>

#include "backend/backend.h"
#include "model/config.h"

namespace rill {

class BlockPool {
 public:
  explicit BlockPool(int num_blocks);
  int num_blocks() const { return int(ref_.size()); }
  int num_free() const { return int(free_.size()); }
  // Returns a block with ref count 1, or -1 when none is free.
  int allocate();
  void retain(int block);
  // Drops one reference; the block returns to the free list at zero.
  void release(int block);
  int ref_count(int block) const { return ref_[size_t(block)]; }

 private:
  std::vector<int> ref_;
  std::vector<int> free_;  // a stack: the most recently freed block is reused first
};

struct BlockTable {
  std::vector<int32_t> blocks;
  // Grows the table to hold `tokens` entries. Returns false (allocating nothing) if the pool is short.
  bool reserve(int tokens, int block_size, BlockPool& pool);
  void release_all(BlockPool& pool);
  int32_t slot(int index, int block_size) const {
    return blocks[size_t(index / block_size)] * block_size + index % block_size;
  }
};

class KvCache {
 public:
  KvCache(Backend& backend, const ModelConfig& config, int num_blocks, int block_size = 16);
  // Blocks that fit in `bytes` for this model.
  static int blocks_for_bytes(const ModelConfig& config, size_t bytes, int block_size = 16);
  static size_t bytes_per_token(const ModelConfig& config);

  const KvLayer& layer(int l) const { return layers_[size_t(l)]; }
  int block_size() const { return block_size_; }
  BlockPool& pool() { return pool_; }

 private:
  int block_size_;
  std::vector<KvLayer> layers_;
  BlockPool pool_;
};

}  // namespace rill
