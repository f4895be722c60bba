// RoPE frequencies for every scaling type of Hugging Face transformers (default, linear, dynamic NTK,
// YaRN, Llama 3), computed in double so angles stay exact far beyond the trained context.
#pragma once

#include <vector>

#include "formats/model_config.h"

namespace rill {

// inv_freq[i] for i < head_dim/2. seq_len matters only for dynamic NTK scaling, which HF recomputes from
// the longest position in the forward pass (max position + 1).
std::vector<double> rope_inv_freq(const ModelConfig& c, int seq_len);
// The factor YaRN multiplies cos and sin by (1 for every other type).
double rope_attention_factor(const ModelConfig& c);

}  // namespace rill
