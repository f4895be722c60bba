// RMSNorm and the fused residual add + RMSNorm. Every kernel computes in f32 and rounds once when it stores
// bf16; each row is handled by one block, so a row's result never depends on what else is in the batch.
#include <cuda_bf16.h>

#include <cmath>
#include <cstdint>

#include "backend/cuda/common.cuh"
#include "backend/cuda/kernels.h"

namespace rill::cuda {

namespace {

// Sum over the block; every thread gets the result. `scratch` holds 33 floats.
__device__ float block_sum(float v, float* scratch) {
  v = warp_sum(v);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, warps = (blockDim.x + 31) / 32;
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = lane < warps ? scratch[lane] : 0.f;
    v = warp_sum(v);
    if (lane == 0) scratch[32] = v;
  }
  __syncthreads();
  return scratch[32];
}

// RMSNorm and add + RMSNorm for any row: the fallbacks of norm_rows_kernel (below), which takes rows of 4k
// entries up to 16 per thread.
template <typename TO, typename TX, typename TW>
__global__ void rmsnorm_kernel(TO* out, const TX* x, const TW* w, int64_t d, float eps) {
  pdl_wait();
  __shared__ float scratch[33];
  const int64_t r = blockIdx.x;
  const TX* xr = x + r * d;
  float ss = 0.f;
  for (int64_t j = threadIdx.x; j < d; j += blockDim.x) {
    const float v = to_f(xr[j]);
    ss += v * v;
  }
  const float inv = rsqrtf(block_sum(ss, scratch) / float(d) + eps);
  for (int64_t j = threadIdx.x; j < d; j += blockDim.x) out[r * d + j] = from_f<TO>(to_f(w[j]) * (to_f(xr[j]) * inv));
}

template <typename TO, typename TD, typename TW>
__global__ void add_rmsnorm_kernel(float* residual, TO* out, const TD* delta, const TW* w, int64_t d,
                                   float eps) {
  pdl_wait();
  __shared__ float scratch[33];
  const int64_t r = blockIdx.x;
  float* xr = residual + r * d;
  float ss = 0.f;
  for (int64_t j = threadIdx.x; j < d; j += blockDim.x) {
    const float v = xr[j] + to_f(delta[r * d + j]);
    xr[j] = v;
    ss += v * v;
  }
  const float inv = rsqrtf(block_sum(ss, scratch) / float(d) + eps);
  for (int64_t j = threadIdx.x; j < d; j += blockDim.x) out[r * d + j] = from_f<TO>(to_f(w[j]) * (xr[j] * inv));
}

// Four consecutive entries as floats, and back (16-byte f32 / 8-byte bf16 accesses; the caller checks
// alignment).
__device__ __forceinline__ void load4(const float* p, float (&v)[4]) {
  const float4 x = *reinterpret_cast<const float4*>(p);
  v[0] = x.x, v[1] = x.y, v[2] = x.z, v[3] = x.w;
}
__device__ __forceinline__ void load4(const bf16* p, float (&v)[4]) {
  const uint2 raw = *reinterpret_cast<const uint2*>(p);
  const float2 a = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&raw.x));
  const float2 b = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&raw.y));
  v[0] = a.x, v[1] = a.y, v[2] = b.x, v[3] = b.y;
}
__device__ __forceinline__ void store4(float* p, const float (&v)[4]) {
  *reinterpret_cast<float4*>(p) = make_float4(v[0], v[1], v[2], v[3]);
}
__device__ __forceinline__ void store4(bf16* p, const float (&v)[4]) {
  const __nv_bfloat162 a = __floats2bfloat162_rn(v[0], v[1]), b = __floats2bfloat162_rn(v[2], v[3]);
  uint2 raw;
  raw.x = *reinterpret_cast<const uint32_t*>(&a);
  raw.y = *reinterpret_cast<const uint32_t*>(&b);
  *reinterpret_cast<uint2*>(p) = raw;
}

// RMSNorm of one row per block with the row held in registers: each thread takes up to C chunks of 4 entries
// and issues all its loads at once (the weight's before waiting on the kernel before), where the loops above
// wait on one load after another. With DELTA, residual += delta first (add_rmsnorm; x is then the f32
// residual, updated in place). The sum of squares runs in a fixed order per row, whatever the batch.
template <typename TO, typename TX, typename TD, typename TW, int C, bool DELTA>
__global__ void norm_rows_kernel(TO* out, TX* x, const TD* delta, const TW* w, int64_t d, float eps) {
  __shared__ float scratch[33];
  const int64_t r = blockIdx.x, chunks = d / 4;
  float wv[C][4], xv[C][4];
#pragma unroll
  for (int c = 0; c < C; ++c) {
    const int64_t i = threadIdx.x + int64_t(c) * blockDim.x;
    if (i < chunks) load4(w + i * 4, wv[c]);
  }
  pdl_wait();
  float ss = 0.f;
#pragma unroll
  for (int c = 0; c < C; ++c) {
    const int64_t i = threadIdx.x + int64_t(c) * blockDim.x;
    if (i >= chunks) continue;
    load4(x + r * d + i * 4, xv[c]);
    if constexpr (DELTA) {
      float dv[4];
      load4(delta + r * d + i * 4, dv);
#pragma unroll
      for (int e = 0; e < 4; ++e) xv[c][e] += dv[e];
      store4(x + r * d + i * 4, xv[c]);
    }
#pragma unroll
    for (int e = 0; e < 4; ++e) ss += xv[c][e] * xv[c][e];
  }
  const float inv = rsqrtf(block_sum(ss, scratch) / float(d) + eps);
#pragma unroll
  for (int c = 0; c < C; ++c) {
    const int64_t i = threadIdx.x + int64_t(c) * blockDim.x;
    if (i >= chunks) continue;
    float y[4];
#pragma unroll
    for (int e = 0; e < 4; ++e) y[e] = wv[c][e] * (xv[c][e] * inv);
    store4(out + r * d + i * 4, y);
  }
}

// norm_rows_kernel for rows of d = 4k entries that `threads` threads cover in at most 4 chunks each, with
// aligned rows; false (nothing done) otherwise. delta null: rmsnorm (x not written).
bool norm_rows(cudaStream_t st, void* out, DType out_t, void* x, DType x_t, const void* delta, DType delta_t,
               const void* w, DType w_t, int64_t rows, int64_t d, float eps, int threads) {
  const int64_t chunks = d / 4, per = (chunks + threads - 1) / threads;
  const uintptr_t addr = reinterpret_cast<uintptr_t>(out) | reinterpret_cast<uintptr_t>(x) |
                         reinterpret_cast<uintptr_t>(delta) | reinterpret_cast<uintptr_t>(w);
  if (d % 4 != 0 || per > 4 || (addr & 15)) return false;
  auto go = [&](auto c) {
    constexpr int C = decltype(c)::value;
    dispatch2(out_t, w_t, [&](auto o, auto wt) {
      using TO = decltype(o);
      using TW = decltype(wt);
      if (delta) {  // x is the f32 residual
        dispatch1(delta_t, [&](auto dl) {
          using TD = decltype(dl);
          launch_pdl(norm_rows_kernel<TO, float, TD, TW, C, true>, rows, threads, 0, st,
                     static_cast<TO*>(out), static_cast<float*>(x), static_cast<const TD*>(delta),
                     static_cast<const TW*>(w), d, eps);
        });
      } else {
        dispatch1(x_t, [&](auto xi) {
          using TX = decltype(xi);
          launch_pdl(norm_rows_kernel<TO, TX, float, TW, C, false>, rows, threads, 0, st,
                     static_cast<TO*>(out), static_cast<TX*>(x), static_cast<const float*>(nullptr),
                     static_cast<const TW*>(w), d, eps);
        });
      }
    });
  };
  if (per <= 1)
    go(std::integral_constant<int, 1>{});
  else if (per == 2)
    go(std::integral_constant<int, 2>{});
  else
    go(std::integral_constant<int, 4>{});
  return true;
}

}  // namespace

void rmsnorm(cudaStream_t st, void* out, DType out_t, const void* x, DType x_t, const void* w, DType w_t,
             int64_t rows, int64_t d, float eps) {
  if (rows == 0) return;
  const int th = threads_for(d);
  if (norm_rows(st, out, out_t, const_cast<void*>(x), x_t, nullptr, x_t, w, w_t, rows, d, eps, th)) return;
  dispatch2(out_t, x_t, [&](auto o, auto i) {
    using TO = decltype(o);
    using TX = decltype(i);
    dispatch1(w_t, [&](auto wt) {
      using TW = decltype(wt);
      launch_pdl(rmsnorm_kernel<TO, TX, TW>, rows, th, 0, st, static_cast<TO*>(out),
                 static_cast<const TX*>(x), static_cast<const TW*>(w), d, eps);
    });
  });
  check_launch("rmsnorm");
}

void add_rmsnorm(cudaStream_t st, float* residual, void* out, DType out_t, const void* delta, DType delta_t,
                 const void* w, DType w_t, int64_t rows, int64_t d, float eps) {
  if (rows == 0) return;
  const int th = threads_for(d);
  if (norm_rows(st, out, out_t, residual, DType::F32, delta, delta_t, w, w_t, rows, d, eps, th)) return;
  dispatch2(out_t, delta_t, [&](auto o, auto i) {
    using TO = decltype(o);
    using TD = decltype(i);
    dispatch1(w_t, [&](auto wt) {
      using TW = decltype(wt);
      launch_pdl(add_rmsnorm_kernel<TO, TD, TW>, rows, th, 0, st, residual, static_cast<TO*>(out),
                 static_cast<const TD*>(delta), static_cast<const TW*>(w), d, eps);
    });
  });
  check_launch("add_rmsnorm");
}

}  // namespace rill::cuda
