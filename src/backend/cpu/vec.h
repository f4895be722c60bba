// Vectorized CPU kernels. Each entry point picks an AVX2/FMA/F16C implementation at run time when the CPU
// has it, and a portable one otherwise, so one binary runs on any x86-64 (and other) machine.
#pragma once

#include <cstddef>
#include <cstdint>

#include "core/dtype.h"

namespace rill::cpu {

bool has_avx2();

// Weight matrices [rows, in] packed for the matrix kernels: panels of kPanelRows rows, column-major inside
// ([panel][k][kPanelRows], zero rows past the matrix; bf16 rows in the order the kernels unpack them). A kernel
// then reads a panel in address order, and every output row sums over k in the same order in the GEMV and the
// GEMM, so a token's result does not depend on how many tokens share the step.
constexpr int kPanelRows = 64;
struct PackedMatrix {
  DType dtype = DType::F32;  // f32, bf16 or f16
  int64_t rows = 0, in = 0;
  const void* data = nullptr;
  int64_t panels() const { return (rows + kPanelRows - 1) / kPanelRows; }
};
size_t packed_bytes(DType t, int64_t rows, int64_t in);
// Packs panels [p0, p1) of the row-major w [rows, in] into dst (packed_bytes large).
void pack_panels(DType t, const void* w, int64_t rows, int64_t in, int64_t p0, int64_t p1, void* dst);
// out[r] = dot(x, row r) for the rows of panels [p0, p1).
void gemv_packed(const PackedMatrix& m, const float* x, int64_t p0, int64_t p1, float* out);
// out[t * ldo + r] = dot(x[t * ldx ..], row r) for t < n_tok and the rows of panel p.
void gemm_packed(const PackedMatrix& m, int64_t p, const float* x, int64_t ldx, int64_t n_tok, float* out, int64_t ldo);

// dst[i] = float(src[i]).
void to_f32(DType t, const void* src, float* dst, int64_t n);

float dot_f32(const float* a, const float* b, int64_t n);

// Attention over a run of keys or values `stride` floats apart:
// out[j] = dot(q, k + j * stride) * scale for j < count (vectors of hd floats);
void dot_rows(const float* q, const float* k, int64_t stride, int64_t count, int64_t hd, float scale, float* out);
// s[i] = exp(s[i] - mx) for i < n, returning their sum (mx >= every s[i]);
float exp_sum(float* s, int64_t n, float mx);
// acc[i] += sum_j p[j] * v[j * stride + i] for i < hd.
void weighted_sum(const float* p, const float* v, int64_t stride, int64_t count, int64_t hd, float* acc);
// y += a * x
void axpy_f32(float a, const float* x, float* y, int64_t n);

}  // namespace rill::cpu
