// The paged KV cache: KvCache owns the per-layer K/V storage on the backend's device and the BlockManager
// that hands out its blocks (with prefix reuse). It runs no kernels. Owned and used by one thread (the
// engine loop).
#pragma once

#include <cstdint>
#include <vector>

#include "backend/backend.h"
#include "kv/block_manager.h"
#include "model/config.h"

namespace rill {

class KvCache {
 public:
  KvCache(Backend& backend, const ModelConfig& config, int num_blocks, int block_size = 16);
  // Blocks that fit in `bytes` for this model, with K and V stored as `dtype` (Backend::kv_dtype()).
  static int blocks_for_bytes(const ModelConfig& config, size_t bytes, int block_size = 16, DType dtype = DType::F32);
  static size_t bytes_per_token(const ModelConfig& config, DType dtype = DType::F32);
  DType dtype() const { return layers_.empty() ? DType::F32 : layers_[0].k.dtype; }

  const KvLayer& layer(int l) const { return layers_[size_t(l)]; }
  // Unique among the caches of this process, so that users of its addresses (recorded graphs) can tell
  // a new cache from an old one that happened to get the same memory.
  uint64_t id() const { return id_; }
  int block_size() const { return block_size_; }
  BlockManager& blocks() { return blocks_; }

 private:
  int block_size_;
  uint64_t id_;
  std::vector<KvLayer> layers_;
  BlockManager blocks_;
};

}  // namespace rill
