// Backend: the op-level interface the model is written against. One implementation per device
// (backend/cpu, backend/cuda). Rules every implementation keeps:
//  - Tensors passed to ops live on the backend's device (alloc/upload). Activations never come back to the
//    host in the forward pass; only `read` copies to the host.
//  - Ops are ordered and may run asynchronously (a CUDA stream). `write` and `read` are ordered with them;
//    `read` and `synchronize` block until everything before them has finished.
//  - Compute is f32 on the CPU backend; weights may stay in their checkpoint dtype (f32, bf16, f16).
//    The CUDA backend keeps weights, activations and KV in bf16 and accumulates in f32 (or all in f32 in its
//    float32 mode, --dtype float32); the residual stream (the `residual` of add_rmsnorm, the output of
//    embedding) is f32 on every backend.
//  - A Backend is used by one thread at a time (the engine loop).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "backend/sampling.h"
#include "core/tensor.h"

namespace rill {

// One layer's slice of the paged KV cache: K and V of shape [num_blocks, block_size, num_kv_heads, head_dim].
struct KvLayer {
  Tensor k, v;
  int block_size() const { return int(k.shape[1]); }
};

// The flat varlen batch as attention sees it: tokens of many sequences back to back. Sequence s owns
// query rows [q_start[s], q_start[s+1]) and attends to KV entries 0..ctx_len[s]-1 of its block table,
// the last (q_start[s+1]-q_start[s]) of which are its own new tokens (causal among themselves).
// All tensors are i32 on the backend's device.
struct AttentionBatch {
  int num_seqs = 0;
  int num_tokens = 0;
  int max_blocks_per_seq = 0;
  Tensor q_start;       // [num_seqs + 1]
  Tensor ctx_len;       // [num_seqs]
  Tensor block_tables;  // [num_seqs, max_blocks_per_seq]
  Tensor token_seq;     // [num_tokens]: the sequence each token belongs to
  // Sink window (attention sinks), empty when no sequence uses it: token t of sequence s scores the first
  // sinks[s] entries with the sink query (q_sink) and skips entries [sinks[s], hole_end[t]).
  Tensor sinks;     // [num_seqs]
  Tensor hole_end;  // [num_tokens]
  // Host-side facts that size kernel grids without reading device memory back.
  int max_q_len = 0;    // the most new tokens of one sequence
  // The longest ctx_len, or more (a decode graph passes its block-table span), never less.
  int max_ctx_len = 0;
  std::vector<int32_t> host_q_len;  // [num_seqs] new tokens of each sequence (may be empty: then unknown)
  std::vector<int32_t> host_sinks;  // [num_seqs] or empty when no sequence uses a sink window
  // Scratch for attention() of at least Backend::attention_workspace() bytes, or empty: then attention
  // allocates its own. Recorded graphs pass one, since they must not allocate.
  Tensor workspace;
};

// Ops recorded once (begin_capture .. end_capture) and replayed on the same tensors: a CUDA graph. Replaying
// reads whatever the tensors hold at that time, so a caller changes inputs by writing into them.
class Graph {
 public:
  virtual ~Graph() = default;
  virtual void replay() = 0;
};

// The weights of one expert of a sparse MoE feed-forward.
struct ExpertWeights {
  Tensor gate, up, down;  // [f, d], [f, d], [d, f]
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual Device device() const = 0;
  virtual std::string name() const = 0;
  // The dtype of activations between ops (the residual stream stays f32) and of the KV cache.
  virtual DType activation_dtype() const { return DType::F32; }
  virtual DType kv_dtype() const { return DType::F32; }
  // Device memory free and in total, where the device has its own memory (false on the CPU).
  virtual bool memory_info(size_t* free_bytes, size_t* total_bytes) { return false; }

  // Memory.
  virtual Tensor alloc(DType dtype, Shape shape) = 0;  // contents undefined
  // Makes a host weight usable by ops. May alias host memory (CPU, supported dtype) or copy/convert.
  virtual Tensor upload_weight(const Tensor& host) = 0;
  // Called once the last weight is uploaded: a backend that stages uploads (CUDA: pinned buffers, copies in
  // flight) finishes them and frees what staging held.
  virtual void end_upload() {}
  virtual void write(const Tensor& dst, const void* src, size_t bytes) = 0;  // host -> device, ordered
  virtual void read(void* dst, const Tensor& src, size_t bytes) = 0;         // device -> host, blocks
  virtual void fill_zero(const Tensor& t) = 0;
  virtual void synchronize() = 0;

  // Recording: after begin_capture() returns true, ops are recorded instead of run until end_capture(), which
  // returns them as a Graph. Nothing recorded may allocate, write from the host or read back. Backends that
  // cannot record return false (the CPU). end_capture() must follow a true begin_capture() even when an op in
  // between threw; it then throws too, and the backend is usable again.
  virtual bool can_record() const { return false; }
  virtual bool begin_capture() { return false; }
  virtual std::unique_ptr<Graph> end_capture() { return nullptr; }

  // Tuning: a backend that chooses how to run a shape by trying (CUDA: the GEMM algorithm of each matrix
  // shape, timed among cuBLASLt's candidates) may keep its choices in `dir` between runs, keyed by the
  // device, driver and library versions ("": nowhere, the default). Loading it is at once; save_tuning()
  // writes what was chosen since. A file that is unreadable or of another device is ignored, never fatal.
  virtual void set_tuning_cache(const std::string& dir) { (void)dir; }
  virtual void save_tuning() {}
  // What tuning did so far, for a startup line ("" where the backend tunes nothing).
  virtual std::string tuning_summary() const { return {}; }

  // out[i] = table[ids[i]]. ids: i32 [n]; out: f32 [n, d].
  virtual void embedding(const Tensor& out, const Tensor& table, const Tensor& ids) = 0;
  // Row-wise RMSNorm over the last dim: out = x / sqrt(mean(x^2) + eps) * weight.
  virtual void rmsnorm(const Tensor& out, const Tensor& x, const Tensor& weight, float eps) = 0;
  // residual += delta; out = rmsnorm(residual) * weight. The fused pre-norm residual step.
  virtual void add_rmsnorm(const Tensor& residual, const Tensor& out, const Tensor& delta, const Tensor& weight,
                           float eps) = 0;
  // out[n, o] = x[n, i] · w[o, i]^T (+ bias[o] when bias is not empty).
  virtual void linear(const Tensor& out, const Tensor& x, const Tensor& w, const Tensor& bias) = 0;
  // linear(outs[i].out, x, outs[i].w, outs[i].bias) for each i < count: projections of one input (q, k, v;
  // gate, up), which a backend may run as one pass.
  struct LinearOut {
    Tensor out, w, bias;
  };
  virtual void linears(const Tensor& x, const LinearOut* outs, int count) {
    for (int i = 0; i < count; ++i) linear(outs[i].out, x, outs[i].w, outs[i].bias);
  }
  // In-place rotate-half RoPE on x [n, heads * head_dim]. inv_freq: f64 [rows, head_dim/2]; token t uses
  // row rope_row[t] (i32 [n]) when rope_row is not empty, else row 0. Angles are pos * inv_freq in double;
  // cos and sin are multiplied by attention_factor (YaRN).
  virtual void rope(const Tensor& x, int head_dim, const Tensor& positions, const Tensor& inv_freq,
                    const Tensor& rope_row, float attention_factor) = 0;
  // Writes k, v [n, kv_heads * head_dim] into the cache slots slot_mapping[n] (block * block_size + offset).
  virtual void kv_write(const KvLayer& kv, const Tensor& k, const Tensor& v, const Tensor& slot_mapping) = 0;
  // rope(q), rope(k), then kv_write(kv, k, v, slot_mapping): the step between the projections and attention,
  // which a backend may fuse into one pass.
  virtual void rope_kv_write(const Tensor& q, const Tensor& k, const Tensor& v, const KvLayer& kv,
                             const Tensor& slot_mapping, int head_dim, const Tensor& positions,
                             const Tensor& inv_freq, const Tensor& rope_row, float attention_factor) {
    rope(q, head_dim, positions, inv_freq, rope_row, attention_factor);
    rope(k, head_dim, positions, inv_freq, rope_row, attention_factor);
    kv_write(kv, k, v, slot_mapping);
  }
  // linears(x, qkv, 3) and then rope_kv_write(qkv[0].out, qkv[1].out, qkv[2].out, ...): the projections and the
  // step after them, which a backend may run as one pass; then k and v may be stored only in the cache, not in
  // qkv[1].out and qkv[2].out.
  virtual void qkv_rope_kv_write(const Tensor& x, const LinearOut* qkv, const KvLayer& kv, const Tensor& slot_mapping,
                                 int head_dim, const Tensor& positions, const Tensor& inv_freq, const Tensor& rope_row,
                                 float attention_factor) {
    linears(x, qkv, 3);
    rope_kv_write(qkv[0].out, qkv[1].out, qkv[2].out, kv, slot_mapping, head_dim, positions, inv_freq, rope_row,
                  attention_factor);
  }
  // Causal GQA attention over the paged cache. q, out: [n, heads * head_dim]. sliding_window > 0 limits each
  // query to the last sliding_window keys (itself included).
  // q_sink ([n, heads * head_dim], the query rotated at its cache position) is used only for the sink entries
  // of sequences with batch.sinks[s] > 0; it may be empty when batch.sinks is.
  virtual void attention(const Tensor& out, const Tensor& q, const KvLayer& kv, const AttentionBatch& batch,
                         int num_heads, float scale, int sliding_window, const Tensor& q_sink = {}) = 0;
  // The scratch bytes attention() needs for this batch (see AttentionBatch::workspace); 0 when none.
  virtual size_t attention_workspace(const KvLayer& kv, const AttentionBatch& batch, int num_heads,
                                     int sliding_window) {
    return 0;
  }
  // out = silu(gate) * up, element-wise.
  virtual void silu_mul(const Tensor& out, const Tensor& gate, const Tensor& up) = 0;
  // out = silu(linear(x, gate, gate_bias)) * linear(x, up, up_bias): the first half of a SwiGLU feed-forward.
  // gate_buf and up_buf ([n, f]) are scratch for the two products; out may be gate_buf. A backend may skip
  // storing the products (then the result is rounded once, not three times).
  virtual void swiglu(const Tensor& out, const Tensor& x, const Tensor& gate, const Tensor& gate_bias,
                      const Tensor& up, const Tensor& up_bias, const Tensor& gate_buf, const Tensor& up_buf) {
    const LinearOut both[] = {{gate_buf, gate, gate_bias}, {up_buf, up, up_bias}};
    linears(x, both, 2);
    silu_mul(out, gate_buf, up_buf);
  }
  // Top-k routing of router logits [n, E]: softmax over experts, keep the k largest, renormalize them to
  // sum 1 when normalize. ids: i32 [n, k]; weights: f32 [n, k].
  virtual void moe_route(const Tensor& ids, const Tensor& weights, const Tensor& router_logits, int k,
                         bool normalize) = 0;
  // out[t] = sum_j weights[t, j] * expert_{ids[t, j]}(x[t]) with a SwiGLU expert.
  virtual void moe_experts(const Tensor& out, const Tensor& x, const Tensor& ids, const Tensor& weights,
                           const std::vector<ExpertWeights>& experts) = 0;
  // out[i] = x[rows[i]]. rows: i32 [m].
  virtual void gather_rows(const Tensor& out, const Tensor& x, const Tensor& rows) = 0;
  // ids[i] = argmax of logits row i (f32 [m, vocab]); ties go to the lower id. Greedy decoding on the
  // device, so only token ids come back to the host.
  virtual void argmax_rows(const Tensor& ids, const Tensor& logits) = 0;
  // Constrained decoding: logits[i, t] = -inf where bit t of row i of `mask` is clear (bit t % 32 of word t / 32).
  // mask: i32 [m * ceil(vocab / 32)].
  virtual void mask_logits(const Tensor& logits, const Tensor& mask) = 0;
  // ids[i] = the token sample_row (backend/sampling.h) picks from logits row i (f32 [m, vocab], modified in
  // place: penalties) under rows[i]: the whole sampler on the device, so only token ids come back. rows: U8,
  // m SampleRow structs as bytes; penalties: I32 [2 * entries], PenaltyEntry pairs (may be empty).
  virtual void sample_rows(const Tensor& ids, const Tensor& logits, const Tensor& rows, const Tensor& penalties) = 0;
  // out row i = top_logprobs_row(logits row i, ids[i], k) (backend/sampling.h): the token's log-probability and
  // the k most likely tokens, so that a request asking for logprobs reads back 1 + 2k floats, not the row.
  // out: f32 [m, 1 + 2k]; logits: f32 [m, vocab] (not modified); ids: i32 [m]; 0 <= k <= kMaxTopLogprobs.
  virtual void top_logprobs(const Tensor& out, const Tensor& logits, const Tensor& ids, int k) = 0;
};

// Creates the CPU backend (num_threads 0: all cores).
std::unique_ptr<Backend> make_cpu_backend(int num_threads = 0);
// True when rill was built with CUDA and a CUDA device is usable.
bool cuda_available();
// The backend for `device`: "cpu", "cuda" (or "cuda:N"), or "auto" (CUDA when available, else the CPU),
// computing in `dtype` (--dtype): "auto" (the CPU: float32; CUDA: bfloat16), "bfloat16" (CUDA only) or
// "float32" (on CUDA: weights, activations and KV in f32). Throws rill::Error naming the device or dtype
// when it cannot be used.
std::unique_ptr<Backend> make_backend(const std::string& device, int cpu_threads = 0,
                                      const std::string& dtype = "auto");

}  // namespace rill
