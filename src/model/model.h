// Model: a decoder-only transformer (Llama, Mistral, Qwen2, Qwen3, Mixtral, Qwen3-MoE) bound to a backend.
// Weights are uploaded once at load; forward() runs one Batch through the backend ops and returns the
// logits of the requested rows. The model owns no KV memory and schedules nothing: the caller passes
// the KvCache and decides which tokens run. Used by one thread at a time.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "formats/safetensors.h"
#include "kv/kv_cache.h"
#include "model/batch.h"
#include "model/config.h"

namespace rill {

struct LayerWeights {
  Tensor input_norm, post_attention_norm;
  Tensor q, k, v, o;                   // [heads*hd, d], [kv*hd, d], [kv*hd, d], [d, heads*hd]
  Tensor q_bias, k_bias, v_bias, o_bias;  // empty when absent
  Tensor q_norm, k_norm;               // Qwen3: [hd]
  Tensor gate, up, down;               // dense SwiGLU
  Tensor gate_bias, up_bias, down_bias;
  Tensor router;                       // MoE: [experts, d]
  std::vector<ExpertWeights> experts;
};

struct ModelWeights {
  Tensor embed;   // [vocab, d]
  Tensor norm;    // [d]
  Tensor lm_head; // [vocab, d]; the embedding itself when tied
  std::vector<LayerWeights> layers;
};

// What a model directory or file holds, before binding to a backend.
struct Checkpoint {
  std::string path;
  ModelConfig config;
  WeightMap weights;
};

// Reads a Hugging Face model directory (config.json + safetensors) or a llama2.c .bin file.
Checkpoint read_checkpoint(const std::string& path);

class Model {
 public:
  // Binds and uploads every weight, checking names and shapes. Throws rill::Error naming the tensor.
  Model(const Checkpoint& checkpoint, Backend& backend);

  const ModelConfig& config() const { return config_; }
  Backend& backend() { return backend_; }
  size_t weight_bytes() const { return weight_bytes_; }

  // Runs the batch; returns logits [batch.logit_rows.size(), vocab] row-major. With `greedy` set, returns
  // instead the argmax of each of those rows (ties to the lower id), computed on the device: only the ids
  // come back to the host, and `logits` is left empty.
  void forward(const Batch& batch, KvCache& kv, std::vector<float>* logits, std::vector<int32_t>* greedy = nullptr);

 private:
  struct Workspace;
  void bind(const Checkpoint& ck);
  Tensor upload_i32(const std::vector<int32_t>& v);

  ModelConfig config_;
  Backend& backend_;
  ModelWeights w_;
  size_t weight_bytes_ = 0;
  std::shared_ptr<Workspace> ws_;
  std::vector<double> inv_freq_;  // for non-dynamic RoPE, computed once
  Tensor inv_freq_dev_;
  float attention_factor_ = 1.f;
};

}  // namespace rill
