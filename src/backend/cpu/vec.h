// Vectorized CPU kernels. Each entry point picks an AVX2/FMA/F16C implementation at run time when the CPU
// has it, and a portable one otherwise, so one binary runs on any x86-64 (and other) machine.
#pragma once

#include <cstdint>

#include "core/dtype.h"

namespace rill::cpu {

bool has_avx2();

// out[r] = dot(x, w_row(r)) for rows [r0, r1) of a [rows, in] matrix stored as `wt`.
void gemv_rows(DType wt, const float* x, const void* w, int64_t in, int64_t r0, int64_t r1, float* out);

// out[t * ldo + r] = dot(x[t * in ..], wb[r * in ..]) for t < n_tok, r < n_rows; wb is f32.
void gemm_f32_block(const float* x, int64_t n_tok, const float* wb, int64_t n_rows, int64_t in, float* out,
                    int64_t ldo);

// dst[i] = float(src[i]).
void to_f32(DType t, const void* src, float* dst, int64_t n);

float dot_f32(const float* a, const float* b, int64_t n);
// y += a * x
void axpy_f32(float a, const float* x, float* y, int64_t n);

}  // namespace rill::cpu
