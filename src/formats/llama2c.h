// llama2.c checkpoints (.bin): the legacy headerless layout ("version 0": seven int32 then float32
// weights) and the versioned float32 layout ("ak42" magic, version 1). Weights are exposed under Hugging
// Face names, with wq/wk rows permuted from llama2.c's interleaved RoPE pairs to HF's rotate-half
// layout, so the same model code runs both.
#pragma once

#include <string>

#include "formats/safetensors.h"
#include "formats/model_config.h"

namespace rill {

struct Llama2cCheckpoint {
  ModelConfig config;
  WeightMap weights;
};

// Throws rill::Error naming the file for a truncated or inconsistent checkpoint.
Llama2cCheckpoint read_llama2c(const std::string& path);

// Permutes the rows of a [heads*head_dim, cols] projection from interleaved pairs (x0,x1),(x2,x3).. to
// rotate-half order (x0,x2,..,x1,x3,..) within each head. Exposed for tests.
void permute_interleaved_to_half(const float* src, float* dst, int heads, int head_dim, int64_t cols);

}  // namespace rill
