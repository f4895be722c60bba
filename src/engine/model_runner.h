// ModelRunner: the one step path. It turns a Batch plus what each of its logit rows needs into token ids (and
// log-probabilities), or into the rows' logits: it puts the step's inputs on the device, runs the Model's layers
// over the paged KV cache, computes the logits of the rows asked for, and picks each row's token on the device
// (the argmax, or the whole sampler under the row's parameters), so only ids come back. Decode steps (one new
// token per sequence) replay recorded CUDA graphs. Every loop goes through it: the engine's step, and a
// single sequence outside the engine (Scorer). Used by one thread at a time (the engine loop).
#pragma once

#include <algorithm>
#include <cstdint>
#include <functional>
#include <memory>
#include <tuple>
#include <vector>

#include "backend/sampling.h"
#include "engine/batch.h"
#include "kv/kv_cache.h"
#include "model/model.h"

namespace rill {

// How a step's logit rows are picked.
struct RowSampling {
  std::vector<SampleRow> rows;  // one per logit row; empty: the argmax of every row (greedy, no penalty)
  std::vector<PenaltyEntry> penalties;  // the entries rows[i].penalty_begin..end point into
  // >= 0: also the log-probabilities of each picked token and of this many top alternatives, under the model's
  // own distribution (before penalties and temperature).
  int logprobs = -1;
  // Constrained decoding: when set, fills rows x mask_words words, row i's bits the tokens row i may pick
  // (Backend::mask_logits). It is called once the step's forward pass is queued, so while a device computes
  // asynchronously the host computes the masks.
  std::function<void(uint32_t* masks)> fill_masks;
  int mask_words = 0;
};

// What ModelRunner::warm_up ran, and how long it took.
struct WarmUpReport {
  int steps = 0;   // forward steps
  int graphs = 0;  // decode graphs recorded
  double seconds = 0, prompt_seconds = 0, decode_seconds = 0;  // in all, prompt chunks, decode steps
};

// The steps an engine will run: what warm_up covers.
struct WarmUpShape {
  int max_batch_tokens = 512;  // the largest step (prefill chunks)
  int max_num_seqs = 1;        // the largest decode batch
  int max_model_len = 0;       // the longest sequence (the block-table widths decode graphs are recorded for)
  int num_blocks = 0;          // the KV cache's blocks (warm-up steps fit in them)
  // Speculative decoding: steps verifying up to verify_max_q - 1 drafts for up to verify_max_seqs sequences.
  int verify_max_q = 1, verify_max_seqs = 0;
  // A draft model's proposals: chains (chain()) of a first step of 1 or 2 tokens and this many later steps.
  int chain_steps = 0;
};

struct StepOutput {
  std::vector<int32_t> ids;     // one per logit row; -1 where every logit is NaN
  std::vector<float> logprobs;  // with RowSampling::logprobs = k >= 0: [rows, 1 + 2k] (Backend::top_logprobs)
};

class ModelRunner {
 public:
  explicit ModelRunner(Model& model);
  ~ModelRunner();
  ModelRunner(const ModelRunner&) = delete;
  ModelRunner& operator=(const ModelRunner&) = delete;

  // Runs the batch and picks a token for each of its logit rows, as `sampling` says.
  StepOutput run(const Batch& batch, KvCache& kv, const RowSampling& sampling = {});
  // Runs the batch and returns the logits of its logit rows ([rows, vocab], row-major), picking nothing.
  std::vector<float> logits(const Batch& batch, KvCache& kv);
  // Greedy steps of the same sequences, one after another, each fed the last: `first` runs (every sequence's
  // tokens, the argmax of its last one kept), then each batch of `later` (one token per sequence, at the positions
  // and slots it gives; its token ids are replaced by the step before's argmax of that sequence). Returns the
  // argmax of every sequence at every step, [1 + later.size()][sequences]. Where graphs can be recorded and
  // every sequence of `first` runs the same number of tokens with logits for all (Logits::All), the whole chain is
  // one graph: one copy in, one launch, one read back (a draft model's proposals).
  std::vector<std::vector<int32_t>> chain(const Batch& first, const std::vector<Batch>& later, KvCache& kv);

  Model& model() { return model_; }
  // Runs, once, the kinds of step an engine of this shape will run, so that their one-time costs are paid now
  // rather than by the first requests: on a GPU, a prompt chunk of every power-of-two size up to
  // max_batch_tokens and one after a full chunk (GEMM algorithms chosen and their kernels loaded, attention
  // kernels loaded, workspaces grown), a decode step of every graph bucket up to max_num_seqs at every
  // block-table width up to max_model_len (graphs recorded), and the sampling, log-probability and masking
  // kernels; on the CPU, one short prompt and one decode step (the weights paged in, the threads started).
  // The KV cache's blocks serve as scratch: it must hold no sequence yet, and holds none after (nothing is
  // cached).
  WarmUpReport warm_up(KvCache& kv, const WarmUpShape& shape);
  // Decode steps of up to `max_batch` sequences replay recorded graphs on backends that can record them (CUDA
  // graphs), so that a step costs one launch instead of one per op; 0 turns that off. Default: 256, or 0 when
  // the environment sets RILL_CUDA_GRAPHS=0.
  void set_graph_max_batch(int max_batch) { graph_max_batch_ = max_batch; }
  int graph_max_batch() const { return graph_max_batch_; }
  // Steps verifying speculative tokens run q tokens per sequence; the graph buffers are made for up to this q
  // (the engine's spec tokens + 1), so that recording them does not remake the buffers (and drop the graphs).
  void set_graph_max_q(int q) { graph_max_q_ = std::max(1, q); }
  uint64_t graph_replays() const { return graph_replays_; }  // steps that replayed a recorded graph

 private:
  struct GraphState;
  // The step itself: the logits of the batch's logit rows go to `logits` when `ids` is null; otherwise each row's
  // token goes to `ids`, picked under `sampling` (null: the argmax).
  void step(const Batch& batch, KvCache& kv, std::vector<float>* logits, StepOutput* ids,
            const RowSampling* sampling);
  // A decode step replayed from (or recorded into) a graph; false when the step cannot be (see the .cpp).
  bool step_graph(const Batch& batch, KvCache& kv, std::vector<float>* logits, StepOutput* ids,
                  const RowSampling* sampling);
  // Picks the ids of logits [m, vocab] into ids_dev on the device (argmax_done: ids_dev already holds the argmax)
  // and reads back the log-probabilities asked for.
  void pick(const Tensor& ids_dev, const Tensor& logits, const RowSampling* sampling, StepOutput* out,
            bool argmax_done = false);
  Tensor upload_i32(const std::vector<int32_t>& v);
  // The tokens per sequence of a step a graph could replay (q tokens for every sequence, logits for each, no sink
  // window, the decode attention kernel's shapes), or 0.
  int graph_q(const Batch& batch) const;
  bool chain_graph(const Batch& first, const std::vector<Batch>& later, KvCache& kv,
                   std::vector<std::vector<int32_t>>* out);
  // The attention scratch a recorded step of `seqs` sequences of `per_seq` tokens and `blocks`-wide tables needs.
  size_t graph_scratch(KvCache& kv, int seqs, int blocks, int per_seq);
  // Where a recorded step's attention metadata sits in GraphState::meta (offsets, in i32 elements).
  struct GraphStep {
    int seqs, blocks, per_seq;
    int64_t q_start, ctx_len, token_seq, tables;
  };
  // Queues one recorded step (layers, head, argmax into argmax_to) over g's buffers: what every graph holds.
  void recorded_step(GraphState& g, KvCache& kv, const StepInputs& in, const GraphStep& st, const Tensor& argmax_to);
  // Replays g's graph for `key`; the first time runs `record` eagerly, the second records it into the graph.
  void replay_or_record(GraphState& g, const std::tuple<int, int, int>& key, const std::function<void()>& record);

  Model& model_;
  Backend& backend_;
  std::unique_ptr<ModelWorkspace> ws_;  // grown to the largest step seen, never shrunk
  std::unique_ptr<GraphState> graphs_;
  std::unique_ptr<GraphState> chains_;  // chain()'s graphs and buffers
  int graph_max_batch_ = 256;
  int graph_reserve_blocks_ = 0;  // block-table width the graph buffers are made for at least (warm_up)
  int graph_reserve_batch_ = 0;   // and batch bucket
  int graph_max_q_ = 1;
  uint64_t graph_replays_ = 0;
};

}  // namespace rill
