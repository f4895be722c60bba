// Model: a decoder-only transformer (Llama, Mistral, Qwen2, Qwen3, Mixtral, Qwen3-MoE) bound to a backend: its
// weights, uploaded once at load, and run_layers(), the model as a sequence of backend ops over one step's
// tokens. It owns no KV memory (the caller passes the cache's layers), schedules nothing and picks no tokens:
// engine/model_runner prepares a step's inputs on the device, calls run_layers() and lm_head(), and picks.
// Used by one thread at a time.
#pragma once

#include <memory>
#include <vector>

#include "backend/backend.h"
#include "formats/checkpoint.h"
#include "formats/model_config.h"

namespace rill {

struct LayerWeights {
  Tensor input_norm, post_attention_norm;
  Tensor q, k, v, o;                      // [heads*hd, d], [kv*hd, d], [kv*hd, d], [d, heads*hd]
  Tensor q_bias, k_bias, v_bias, o_bias;  // empty when absent
  Tensor q_norm, k_norm;                  // Qwen3: [hd]
  Tensor gate, up, down;                  // dense SwiGLU
  Tensor gate_bias, up_bias, down_bias;
  Tensor router;  // MoE: [experts, d]
  std::vector<ExpertWeights> experts;
};

struct ModelWeights {
  Tensor embed;    // [vocab, d]
  Tensor norm;     // [d]
  Tensor lm_head;  // [vocab, d]; the embedding itself when tied
  std::vector<LayerWeights> layers;
};

// One step's token inputs on the device (i32 [n] each unless said otherwise).
struct StepInputs {
  Tensor ids, positions;
  Tensor slots;  // the KV cache slot each token's K/V is written to (-1: none)
  // Sink window (empty when no sequence of the step has evicted): the position each query is rotated at to
  // score the sinks, and the rows 0..n-1 (to copy the queries before they are rotated).
  Tensor sink_positions, identity;
  Tensor inv_freq;  // f64 [rows, head_dim / 2]: RoPE frequencies (Model::inv_freq(), or per sequence)
  Tensor rope_row;  // the row of inv_freq each token uses; empty: row 0
};

// The activations of steps of up to `capacity` tokens. The residual stream is f32; the rest is in the
// backend's activation dtype. After run_layers(), h holds the final-normed hidden states.
struct ModelWorkspace {
  int64_t capacity = 0;
  Tensor residual, h, q, q_sink, k, v, attn, o, gate, up, mlp, router, route_ids, route_w;
};

class Model {
 public:
  // Binds and uploads every weight, checking names and shapes. Throws rill::Error naming the tensor.
  Model(const Checkpoint& checkpoint, Backend& backend);

  const ModelConfig& config() const { return config_; }
  Backend& backend() { return backend_; }
  size_t weight_bytes() const { return weight_bytes_; }
  // The RoPE frequencies of every position (f64 [1, head_dim / 2]), except under dynamic NTK scaling, where
  // they depend on each sequence's length (rope_inv_freq(config(), length)).
  const Tensor& inv_freq() const { return inv_freq_dev_; }
  // Whether decode steps can be recorded once and replayed (a CUDA graph): not with dynamic NTK RoPE (the
  // frequencies change with the length) nor MoE (the routing is read back to the host).
  bool recordable() const;

  // Limits the vocabulary to its first n ids (n < config().vocab_size): a checkpoint whose embedding table has
  // padding rows past its tokenizer (Qwen2.5: 151936 rows, 151665 tokens). The logits then cover only the
  // tokens the tokenizer knows, so no sampler, greedy or not, can pick an id it cannot decode; the config says
  // n, and the padding rows are never read. Call before any engine is made on the model.
  void limit_vocab(int n);

  std::unique_ptr<ModelWorkspace> make_workspace(int64_t tokens);
  // Runs the n tokens of `in` through every layer, reading and writing the paged KV cache `kv` (one KvLayer per
  // layer) as `ab` says, and leaves their final-normed hidden states in ws.h rows [0, n).
  void run_layers(ModelWorkspace& ws, int64_t n, const StepInputs& in, const AttentionBatch& ab,
                  const std::vector<KvLayer>& kv);
  // logits [m, vocab] (f32) = hidden [m, d] · lm_headᵀ.
  void lm_head(const Tensor& logits, const Tensor& hidden);

 private:
  void bind(const Checkpoint& ck);

  ModelConfig config_;
  Backend& backend_;
  ModelWeights w_;
  size_t weight_bytes_ = 0;
  Tensor inv_freq_dev_;
  float attention_factor_ = 1.f;
};

}  // namespace rill
