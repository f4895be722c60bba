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

// The sampling of one step's logits rows on the device (see Model::forward).
struct DeviceSampling {
  std::vector<SampleRow> rows;  // empty: the argmax of every row
  std::vector<PenaltyEntry> penalties;
  // >= 0: forward() also fills logprobs_out with Backend::top_logprobs of every row (the picked token's
  // log-probability and this many top alternatives, 1 + 2 * logprobs floats a row) under the model's own
  // distribution, computed before penalties change the row.
  int logprobs = -1;
  std::vector<float> logprobs_out;
};

class Model {
 public:
  // Binds and uploads every weight, checking names and shapes. Throws rill::Error naming the tensor.
  Model(const Checkpoint& checkpoint, Backend& backend);
  ~Model();

  const ModelConfig& config() const { return config_; }
  Backend& backend() { return backend_; }
  size_t weight_bytes() const { return weight_bytes_; }

  // Runs the batch; returns logits [batch.logit_rows.size(), vocab] row-major. With `ids` set, returns instead
  // one token id per such row, picked on the device: the argmax (ties to the lower id) without `sampling`,
  // or with sampling->rows empty, else what Backend::sample_rows picks under sampling->rows (one per row), and
  // log-probabilities when sampling->logprobs >= 0. Only those come back to the host, and `logits` is left
  // empty.
  void forward(const Batch& batch, KvCache& kv, std::vector<float>* logits, std::vector<int32_t>* ids = nullptr,
               DeviceSampling* sampling = nullptr);

  // Decode steps of up to `max_batch` sequences replay recorded graphs on backends that can record them
  // (CUDA graphs), so that a step costs one launch instead of one per op. 0 turns that off. Default: 256,
  // or 0 when the environment sets RILL_CUDA_GRAPHS=0.
  void set_graph_max_batch(int max_batch) { graph_max_batch_ = max_batch; }
  int graph_max_batch() const { return graph_max_batch_; }
  // Steps that replayed a recorded graph since load.
  uint64_t graph_replays() const { return graph_replays_; }

 private:
  struct Workspace;
  struct GraphState;
  // Device inputs of one step besides the attention batch.
  struct StepInputs {
    Tensor ids, positions, slots, sink_positions, identity, inv_freq, rope_row;
  };
  void bind(const Checkpoint& ck);
  std::shared_ptr<Workspace> make_workspace(int64_t n);
  void run_layers(Workspace& ws, int64_t n, const StepInputs& in, const AttentionBatch& ab, KvCache& kv);
  bool forward_graph(const Batch& batch, KvCache& kv, std::vector<float>* logits, std::vector<int32_t>* ids,
                     DeviceSampling* sampling);
  // Picks the ids of logits [m, vocab] on the device into ids_dev, as forward() says (argmax_done: ids_dev
  // already holds the argmax), and reads back the log-probabilities asked for.
  void pick(const Tensor& ids_dev, const Tensor& logits, DeviceSampling* sampling, bool argmax_done = false);
  Tensor upload_i32(const std::vector<int32_t>& v);

  ModelConfig config_;
  Backend& backend_;
  ModelWeights w_;
  size_t weight_bytes_ = 0;
  std::shared_ptr<Workspace> ws_;
  std::unique_ptr<GraphState> graphs_;
  int graph_max_batch_ = 256;
  uint64_t graph_replays_ = 0;
  std::vector<double> inv_freq_;  // for non-dynamic RoPE, computed once
  Tensor inv_freq_dev_;
  float attention_factor_ = 1.f;
};

}  // namespace rill
