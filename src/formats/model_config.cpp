#include "formats/model_config.h"

#include <algorithm>

#include "core/error.h"

namespace rill {

const char* arch_name(Arch a) {
  switch (a) {
    case Arch::Llama: return "llama";
    case Arch::Mistral: return "mistral";
    case Arch::Qwen2: return "qwen2";
    case Arch::Qwen3: return "qwen3";
    case Arch::Mixtral: return "mixtral";
    case Arch::Qwen3Moe: return "qwen3_moe";
  }
  return "?";
}

const char* rope_type_name(RopeType t) {
  switch (t) {
    case RopeType::Default: return "default";
    case RopeType::Linear: return "linear";
    case RopeType::Dynamic: return "dynamic";
    case RopeType::Yarn: return "yarn";
    case RopeType::Llama3: return "llama3";
  }
  return "?";
}

bool ModelConfig::layer_is_moe(int layer) const {
  if (num_experts == 0) return false;
  if (std::find(mlp_only_layers.begin(), mlp_only_layers.end(), layer) != mlp_only_layers.end()) return false;
  return decoder_sparse_step > 0 && (layer + 1) % decoder_sparse_step == 0;
}

int64_t ModelConfig::parameter_count() const {
  const int64_t d = hidden_size, q = int64_t(num_heads) * head_dim, kv = int64_t(num_kv_heads) * head_dim;
  int64_t n = int64_t(vocab_size) * d * (tie_word_embeddings ? 1 : 2) + d;  // embeddings, lm_head, final norm
  for (int l = 0; l < num_layers; ++l) {
    n += 2 * d;                               // the two norms
    n += d * q + 2 * d * kv + q * d;          // q, k, v, o
    if (attention_bias) n += q + 2 * kv;
    if (attention_out_bias) n += d;
    if (qk_norm) n += 2 * head_dim;
    if (layer_is_moe(l)) n += int64_t(num_experts) * (d + 3 * d * moe_intermediate_size);
    else n += 3 * d * intermediate_size + (mlp_bias ? 2 * int64_t(intermediate_size) + d : 0);
  }
  return n;
}

void ModelConfig::validate(const std::string& where) const {
  auto positive = [&](int v, const char* field) {
    RILL_CHECK(v > 0, where + ": field '" + field + "' must be positive (got " + std::to_string(v) + ")");
  };
  positive(vocab_size, "vocab_size");
  positive(hidden_size, "hidden_size");
  positive(num_layers, "num_hidden_layers");
  positive(num_heads, "num_attention_heads");
  positive(num_kv_heads, "num_key_value_heads");
  positive(head_dim, "head_dim");
  RILL_CHECK(head_dim % 2 == 0, where + ": head_dim must be even for RoPE (got " + std::to_string(head_dim) + ")");
  RILL_CHECK(num_heads % num_kv_heads == 0, where + ": num_attention_heads (" + std::to_string(num_heads) +
                                                ") must be a multiple of num_key_value_heads (" +
                                                std::to_string(num_kv_heads) + ")");
  RILL_CHECK(rms_norm_eps > 0, where + ": rms_norm_eps must be positive");
  RILL_CHECK(rope.theta > 0, where + ": rope_theta must be positive");
  if (num_experts > 0) {
    positive(num_experts_per_tok, "num_experts_per_tok");
    RILL_CHECK(num_experts_per_tok <= num_experts, where + ": num_experts_per_tok > number of experts");
    positive(moe_intermediate_size, "moe_intermediate_size");
  }
  bool any_dense = num_experts == 0;
  for (int l = 0; l < num_layers && !any_dense; ++l) any_dense = !layer_is_moe(l);
  if (any_dense) positive(intermediate_size, "intermediate_size");
  if (rope.type != RopeType::Default)
    RILL_CHECK(rope.factor > 0, where + ": rope scaling 'factor' must be positive");
}

}  // namespace rill
