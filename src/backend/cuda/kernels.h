// Launchers for the CUDA backend's hand-written kernels (norm, rope_kv, gemv, gemm_rows, misc, sampling and the
// attention*.cu files). Internal to backend/cuda: callers pass raw device pointers and have checked shapes.
// Activation pointers are f32 or bf16 as `DType` says. Weights and the KV cache are bf16, or f32 where a dtype
// argument says so (the backend's float32 mode); the matrix-vector kernels take bf16 only.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "backend/sampling.h"
#include "core/dtype.h"

namespace rill::cuda {

void embedding(cudaStream_t st, void* out, DType out_t, const void* table, DType w_t, const int32_t* ids,
               int64_t n, int64_t d, int64_t vocab);
// rows = n / d; weight has d entries. out may alias x.
void rmsnorm(cudaStream_t st, void* out, DType out_t, const void* x, DType x_t, const void* w, DType w_t,
             int64_t rows, int64_t d, float eps);
// residual (f32) += delta; out = rmsnorm(residual) * w.
void add_rmsnorm(cudaStream_t st, float* residual, void* out, DType out_t, const void* delta, DType delta_t,
                 const void* w, DType w_t, int64_t rows, int64_t d, float eps);
void rope(cudaStream_t st, void* x, DType t, int64_t n, int64_t width, int head_dim, const int32_t* positions,
          const double* inv_freq, const int32_t* rope_row, float attention_factor);
// k, v: [n, width] in `t`; caches [slots, width] in cache_t.
void kv_write(cudaStream_t st, void* k_cache, void* v_cache, DType cache_t, const void* k, const void* v,
              DType t, const int32_t* slots, int64_t n, int64_t width, int64_t num_slots);
// rope on q [n, H * head_dim] and k [n, KV * head_dim] in place, then k and v stored at slots[i] of the
// caches [num_slots, KV * head_dim] in cache_t (none for a negative slot).
void rope_kv_write(cudaStream_t st, void* q, void* k, const void* v, DType t, void* k_cache, void* v_cache,
                   DType cache_t, int64_t n, int H, int KV, int head_dim, const int32_t* positions,
                   const double* inv_freq, const int32_t* rope_row, float attention_factor,
                   const int32_t* slots, int64_t num_slots);
// Up to three weight matrices w[m] (bf16 [rows[m], k]) applied to the same x, each into its out[m].
struct GemvGroup {
  const void* w[3] = {};
  void* out[3] = {};
  int64_t rows[3] = {};
  int count = 0;
};
// out[m][n, rows[m]] = x[n, k] · w[m]^T (x bf16) for n <= kGemvMaxRows, in one launch; returns false (and does
// nothing) for shapes it does not take: more rows, k not a multiple of 8, pointers not 16-byte aligned.
constexpr int64_t kGemvMaxRows = 8;
bool gemv(cudaStream_t st, const GemvGroup& g, DType out_t, const void* x, int64_t n, int64_t k);
// The same products for kGemvMaxRows < n <= kRowsMaxRows (a batch of decoding sequences), on tensor cores
// (gemm_rows.cu); false (nothing done) for shapes it does not take: k not a multiple of 256, a matrix's rows
// not a multiple of 16, pointers not 16-byte aligned.
constexpr int64_t kRowsMaxRows = 64;
bool gemm_rows(cudaStream_t st, const GemvGroup& g, DType out_t, const void* x, int64_t n, int64_t k);
// q = x · wq^T, k = x · wk^T, v = x · wv^T (all bf16; wq [H * head_dim, k], wk and wv [KV * head_dim, k]) for
// n <= kGemvMaxRows, then rope_kv_write's work (inv_freq row 0), in one launch: q is stored rotated, k (rotated)
// and v only in the caches. False (nothing done) for shapes it does not take.
struct QkvRope {
  const void *wq = nullptr, *wk = nullptr, *wv = nullptr;
  void* q = nullptr;                            // bf16 [n, H * head_dim]
  void *k_cache = nullptr, *v_cache = nullptr;  // bf16 [num_slots, KV * head_dim]
  int H = 0, KV = 0, head_dim = 0;
  const int32_t* positions = nullptr;
  const double* inv_freq = nullptr;
  float attention_factor = 1.f;
  const int32_t* slots = nullptr;
  int64_t num_slots = 0;
};
bool qkv_rope(cudaStream_t st, const QkvRope& a, const void* x, int64_t n, int64_t k);
// out[n, f] = silu(x · gate^T) * (x · up^T) (x, gate, up bf16; k inner) for n <= kGemvMaxRows, in one launch;
// false (nothing done) for shapes gemv does not take either.
bool swiglu_gemv(cudaStream_t st, void* out, DType out_t, const void* x, const void* gate, const void* up, int64_t n,
                 int64_t f, int64_t k);
void silu_mul(cudaStream_t st, void* out, const void* gate, const void* up, DType t, int64_t n);
// out[i, :] += bias ([o] in bias_t).
void add_bias(cudaStream_t st, void* out, DType t, const void* bias, DType bias_t, int64_t rows, int64_t o);
void gather_rows(cudaStream_t st, void* out, const void* x, size_t row_bytes, const int32_t* rows, int64_t m);
// out (f32 or bf16) = x (f32, bf16, or f16: weights on upload), rounded to nearest even.
void convert(cudaStream_t st, void* out, DType out_t, const void* x, DType x_t, int64_t n);
void moe_route(cudaStream_t st, int32_t* ids, float* weights, const float* logits, int64_t n, int E, int k,
               bool normalize);
// acc[token[i], :] += w[i] * y[i, :] (acc f32 [*, d]; y in t); tokens are distinct within one call.
void scatter_add(cudaStream_t st, float* acc, const void* y, DType t, const int32_t* token, const float* w, int64_t m,
                 int64_t d);
// out[i] = argmax of logits row i (f32 [rows, vocab]); ties go to the lower id.
void argmax_rows(cudaStream_t st, int32_t* out, const float* logits, int64_t rows, int64_t vocab);
// logits[i, t] = -inf where bit t of mask row i (ceil(vocab / 32) words) is clear.
void mask_logits(cudaStream_t st, float* logits, const uint32_t* mask, int64_t rows, int64_t vocab);
// ids[i] = sample_row(logits row i, params[i], penalties) (backend/sampling.h); penalties applied in place.
void sample_rows(cudaStream_t st, int32_t* ids, float* logits, int64_t rows, int64_t vocab, const SampleRow* params,
                 const PenaltyEntry* penalties, int64_t entries);
// out row i = top_logprobs_row(logits row i, ids[i], k) (backend/sampling.h); out f32 [rows, 1 + 2k].
void top_logprobs(cudaStream_t st, float* out, const float* logits, const int32_t* ids, int64_t rows, int64_t vocab,
                  int k);

struct AttentionArgs {
  // q, q_sink and the caches are bf16, or all f32 (float32 mode: then only the CUDA-core split kernel runs).
  DType kv_t = DType::BF16;
  const void* q = nullptr;       // [n, H * hd]
  const void* q_sink = nullptr;  // same, or null
  void* out = nullptr;           // [n, H * hd]
  DType out_t = DType::BF16;
  const void* k_cache = nullptr;  // [blocks, bs, KV, hd]
  const void* v_cache = nullptr;
  const int32_t *q_start = nullptr, *ctx_len = nullptr, *tables = nullptr, *token_seq = nullptr;
  const int32_t *sinks = nullptr, *hole_end = nullptr;
  int num_tokens = 0, num_seqs = 0, H = 0, KV = 0, hd = 0, bs = 0, max_blocks = 0, sliding_window = 0;
  int max_q_len = 0, max_ctx_len = 0;
  const int32_t* host_q_len = nullptr;  // [num_seqs] on the host, or null (then every sequence may be anything)
  const int32_t* host_sinks = nullptr;  // [num_seqs] on the host, or null
  float scale = 1.f;
  bool batch_invariant = false;  // kernel shapes chosen by each sequence alone, never by the batch's size
};
// Bytes of scratch `attention` needs for these arguments.
size_t attention_workspace_bytes(const AttentionArgs& a);
void attention(cudaStream_t st, const AttentionArgs& a, void* workspace);

}  // namespace rill::cuda
