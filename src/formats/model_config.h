// ModelConfig: everything the model code needs to know about an architecture instance. Filled from a
// Hugging Face config.json (formats/hf_config) or a llama2.c header (formats/llama2c).
#pragma once

#include <string>
#include <vector>

namespace rill {

enum class Arch { Llama, Mistral, Qwen2, Qwen3, Mixtral, Qwen3Moe };
const char* arch_name(Arch a);

enum class RopeType { Default, Linear, Dynamic, Yarn, Llama3 };
const char* rope_type_name(RopeType t);

struct RopeConfig {
  RopeType type = RopeType::Default;
  double theta = 10000.0;
  double factor = 1.0;
  // llama3
  double low_freq_factor = 1.0, high_freq_factor = 4.0;
  // llama3, yarn, dynamic: the context the model was pretrained with
  int original_max_position_embeddings = 0;
  // yarn
  double beta_fast = 32.0, beta_slow = 1.0;
  double attention_factor = 0.0;  // 0: derived from factor/mscale
  double mscale = 0.0, mscale_all_dim = 0.0;
  bool truncate = true;
};

struct ModelConfig {
  Arch arch = Arch::Llama;
  std::string architecture;  // as written in config.json, e.g. "LlamaForCausalLM"
  std::string model_type;

  int vocab_size = 0;
  int hidden_size = 0;
  int intermediate_size = 0;
  int num_layers = 0;
  int num_heads = 0;
  int num_kv_heads = 0;
  int head_dim = 0;
  int max_position_embeddings = 0;
  float rms_norm_eps = 1e-6f;
  bool tie_word_embeddings = false;
  bool attention_bias = false;  // bias on q/k/v (Qwen2 always; Llama when attention_bias)
  bool attention_out_bias = false;  // bias on o_proj (Llama attention_bias)
  bool mlp_bias = false;
  bool qk_norm = false;         // Qwen3: RMSNorm over each head of q and k before RoPE
  int sliding_window = 0;       // 0: full attention
  RopeConfig rope;

  // Sparse MoE feed-forward (Mixtral, Qwen3-MoE). num_experts == 0: dense.
  int num_experts = 0;
  int num_experts_per_tok = 0;
  int moe_intermediate_size = 0;
  bool norm_topk_prob = true;
  int decoder_sparse_step = 1;
  std::vector<int> mlp_only_layers;

  int bos_token_id = -1;
  std::vector<int> eos_token_ids;

  bool layer_is_moe(int layer) const;
  int64_t parameter_count() const;
  // Throws rill::Error naming the inconsistent field.
  void validate(const std::string& where) const;
};

}  // namespace rill
