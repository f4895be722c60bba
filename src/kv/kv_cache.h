// The paged KV cache: KvCache owns the per-layer K/V storage on the backend's device and the BlockManager
// that hands out its blocks (with prefix reuse). It runs no kernels. Owned and used by one thread (the
// engine loop).
#pragma once

#include <cstdint>
#include <vector>

#include "backend/backend.h"
#include "kv/block_manager.h"
#include "kv/kv_policy.h"
#include "formats/model_config.h"

namespace rill {

// Tokens per KV block, unless a command or engine is configured otherwise (rill serve --block-size).
constexpr int kDefaultBlockSize = 16;

class KvCache {
 public:
  KvCache(Backend& backend, const ModelConfig& config, int num_blocks, int block_size = kDefaultBlockSize);
  // Blocks that fit in `bytes` for this model, with K and V stored as `dtype` (Backend::kv_dtype()).
  static int blocks_for_bytes(const ModelConfig& config, size_t bytes, int block_size = kDefaultBlockSize,
                              DType dtype = DType::F32);
  static size_t bytes_per_token(const ModelConfig& config, DType dtype = DType::F32);
  DType dtype() const { return layers_.empty() ? DType::F32 : layers_[0].k.dtype; }

  const std::vector<KvLayer>& layers() const { return layers_; }
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

// Blocks one sequence of `tokens` tokens holds at most under `policy` (a sink window: its bound at any length).
int kv_blocks_for_sequence(const KvPolicy& policy, int64_t tokens, int block_size);

// The KV cache's share of a device with `free_bytes` of `total_bytes` free once the weights are loaded, when rill
// may use `fraction` of the device in all: what that leaves, less room for one step's activations (max_batch_tokens
// through the widest layer, the logits of max_num_seqs rows) and the GEMM library's workspaces. 0 when nothing is
// left.
size_t kv_bytes_on_device(const ModelConfig& config, size_t free_bytes, size_t total_bytes, double fraction,
                          int max_batch_tokens, int max_num_seqs);

}  // namespace rill
