// The decode-time matrix-vector products (up to kGemvMaxRows rows): weights streamed once, q/k/v (and gate/up)
// in one launch, SwiGLU without storing either product, and q/k/v with RoPE and the KV write in the epilogue.
// Each output's sum runs in a fixed order whatever the row count, so a row's result never depends on the batch.
#include <cuda_bf16.h>

#include <cmath>
#include <cstdint>
#include <type_traits>

#include "backend/cuda/common.cuh"
#include "backend/cuda/kernels.h"

namespace rill::cuda {

namespace {

__device__ __forceinline__ float dot8(const uint4& a, const uint4& b) {
  const __nv_bfloat162* x = reinterpret_cast<const __nv_bfloat162*>(&a);
  const __nv_bfloat162* y = reinterpret_cast<const __nv_bfloat162*>(&b);
  float s = 0.f;
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 fx = __bfloat1622float2(x[i]), fy = __bfloat1622float2(y[i]);
    s = fmaf(fx.x, fy.x, s);
    s = fmaf(fx.y, fy.y, s);
  }
  return s;
}

// out[r, o] = x[r, :] · w[o, :] for N (<= 8) rows: the decode-time matrix-vector product, over up to three
// weight matrices that share x (q, k and v; gate and up) in one launch. One warp per output feature streams
// its weight row once, 8 loads of 16 bytes in flight per lane, and dots it with every row of x (which stays
// in L1). Each output's sum runs in a fixed order whatever N is, so a row's result does not depend on the
// other rows.
template <int N, typename TO>
__global__ void __launch_bounds__(256) gemv_kernel(GemvGroup g, const bf16* __restrict__ x, int64_t k) {
  constexpr int kUnroll = 8, kStep = 32 * 8;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  int64_t o = int64_t(blockIdx.x) * (blockDim.x / 32) + warp;
  // Which matrix this warp's feature is in (static indices keep the group in parameter memory).
  const void* w;
  void* o_ptr;
  int64_t o_count;
  if (o < g.rows[0]) {
    w = g.w[0], o_ptr = g.out[0], o_count = g.rows[0];
  } else if (o - g.rows[0] < g.rows[1]) {
    o -= g.rows[0];
    w = g.w[1], o_ptr = g.out[1], o_count = g.rows[1];
  } else if (o - g.rows[0] - g.rows[1] < g.rows[2]) {
    o -= g.rows[0] + g.rows[1];
    w = g.w[2], o_ptr = g.out[2], o_count = g.rows[2];
  } else {
    return;
  }
  const bf16* wr = as_bf16(w) + o * k;
  TO* out = static_cast<TO*>(o_ptr);
  // The weights do not depend on the kernel before: start their first lines towards L2, then wait for it.
#pragma unroll
  for (int u = 0; u < kUnroll; ++u)
    if (int64_t(lane) * 8 + u * kStep < k) prefetch_l2(wr + int64_t(lane) * 8 + u * kStep);
  pdl_wait();
  float acc[N];
#pragma unroll
  for (int r = 0; r < N; ++r) acc[r] = 0.f;
  int64_t j = int64_t(lane) * 8;
  for (; j + (kUnroll - 1) * kStep < k; j += kUnroll * kStep) {
    uint4 wv[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) wv[u] = load_stream(wr + j + u * kStep);
#pragma unroll
    for (int u = 0; u < kUnroll; ++u)
#pragma unroll
      for (int r = 0; r < N; ++r)
        acc[r] += dot8(wv[u], __ldg(reinterpret_cast<const uint4*>(x + r * k + j + u * kStep)));
  }
  for (; j < k; j += kStep) {
    const uint4 wv = load_stream(wr + j);
#pragma unroll
    for (int r = 0; r < N; ++r) acc[r] += dot8(wv, __ldg(reinterpret_cast<const uint4*>(x + r * k + j)));
  }
#pragma unroll
  for (int r = 0; r < N; ++r) {
    const float v = warp_sum(acc[r]);
    if (lane == 0) out[r * o_count + o] = from_f<TO>(v);
  }
}

// a1[r] = x[r, :] · w1 and a2[r] = x[r, :] · w2 for N rows (x [N, k]): one warp streams two weight rows
// together, 4 + 4 loads of 16 bytes in flight per lane, after starting their first lines towards L2 and
// waiting for the kernel before (pdl_wait). Each lane adds its terms in order of j, as gemv_kernel does, so
// after warp_sum a sum is the same float gemv_kernel gives.
template <int N>
__device__ __forceinline__ void dot_two_rows(const bf16* w1, const bf16* w2, const bf16* __restrict__ x, int64_t k,
                                             float (&a1)[N], float (&a2)[N]) {
  constexpr int kUnroll = 4, kStep = 32 * 8;
  const int lane = threadIdx.x % 32;
#pragma unroll
  for (int u = 0; u < kUnroll; ++u)
    if (int64_t(lane) * 8 + u * kStep < k) {
      prefetch_l2(w1 + int64_t(lane) * 8 + u * kStep);
      prefetch_l2(w2 + int64_t(lane) * 8 + u * kStep);
    }
  pdl_wait();
#pragma unroll
  for (int r = 0; r < N; ++r) a1[r] = a2[r] = 0.f;
  int64_t j = int64_t(lane) * 8;
  for (; j + (kUnroll - 1) * kStep < k; j += kUnroll * kStep) {
    uint4 v1[kUnroll], v2[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) v1[u] = load_stream(w1 + j + u * kStep), v2[u] = load_stream(w2 + j + u * kStep);
#pragma unroll
    for (int u = 0; u < kUnroll; ++u)
#pragma unroll
      for (int r = 0; r < N; ++r) {
        const uint4 xv = __ldg(reinterpret_cast<const uint4*>(x + r * k + j + u * kStep));
        a1[r] += dot8(v1[u], xv);
        a2[r] += dot8(v2[u], xv);
      }
  }
  for (; j < k; j += kStep) {
    const uint4 v1 = load_stream(w1 + j), v2 = load_stream(w2 + j);
#pragma unroll
    for (int r = 0; r < N; ++r) {
      const uint4 xv = __ldg(reinterpret_cast<const uint4*>(x + r * k + j));
      a1[r] += dot8(v1, xv);
      a2[r] += dot8(v2, xv);
    }
  }
}

// out[r, o] = silu(x[r, :] · gate[o, :]) * (x[r, :] · up[o, :]) for N (<= 8) rows: the SwiGLU half of a decode
// step's feed-forward in one pass. One warp per feature streams both weight rows (4 + 4 loads in flight per
// lane), so neither product is stored before the activation.
template <int N, typename TO>
__global__ void __launch_bounds__(256) swiglu_gemv_kernel(TO* out, const bf16* __restrict__ x,
                                                          const bf16* __restrict__ gate, const bf16* __restrict__ up,
                                                          int64_t o_count, int64_t k) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t o = int64_t(blockIdx.x) * (blockDim.x / 32) + warp;
  if (o >= o_count) return;
  float ag[N], au[N];
  dot_two_rows<N>(gate + o * k, up + o * k, x, k, ag, au);
#pragma unroll
  for (int r = 0; r < N; ++r) {
    const float g = warp_sum(ag[r]), u = warp_sum(au[r]);
    if (lane == 0) out[r * o_count + o] = from_f<TO>(g / (1.f + expf(-g)) * u);
  }
}

// q, k and v = x · w^T for N (<= 8) rows with RoPE and the KV write in the epilogue: what gemv_kernel and then
// rope_kv_write_kernel give, bit for bit, in one launch. Each warp computes one rotate-half pair of features
// (i and i + head_dim/2 of one head; the same pair of v), so it can rotate them itself; q is stored rotated, and
// k (rotated) and v go straight into the caches at the token's slot (none for slot < 0).
template <int N>
__global__ void __launch_bounds__(256) qkv_rope_kernel(QkvRope a, const bf16* __restrict__ x, int64_t k) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, hd = a.head_dim, half = hd / 2;
  const int64_t p = int64_t(blockIdx.x) * (blockDim.x / 32) + warp;
  const int64_t q_pairs = int64_t(a.H) * half, kv_pairs = int64_t(a.KV) * half;
  int which;  // 0 q, 1 k, 2 v
  int64_t pair;
  if (p < q_pairs) which = 0, pair = p;
  else if (p < q_pairs + kv_pairs) which = 1, pair = p - q_pairs;
  else if (p < q_pairs + 2 * kv_pairs) which = 2, pair = p - q_pairs - kv_pairs;
  else return;
  const int head = int(pair / half), i = int(pair % half);
  const bf16* w = as_bf16(which == 0 ? a.wq : which == 1 ? a.wk : a.wv);
  const bf16* r1 = w + (int64_t(head) * hd + i) * k;
  float a1[N], a2[N];
  dot_two_rows<N>(r1, r1 + int64_t(half) * k, x, k, a1, a2);
#pragma unroll
  for (int r = 0; r < N; ++r) {
    const float s1 = warp_sum(a1[r]), s2 = warp_sum(a2[r]);
    if (lane != r) continue;  // lane r finishes row r
    const bf16 y1 = __float2bfloat16(s1), y2 = __float2bfloat16(s2);  // as gemv_kernel stores them
    const int64_t slot = a.slots[r];
    const bool store = slot >= 0 && slot < a.num_slots;
    const int64_t kv_off = slot * int64_t(a.KV) * hd + int64_t(head) * hd + i;
    if (which == 2) {
      if (store) static_cast<bf16*>(a.v_cache)[kv_off] = y1, static_cast<bf16*>(a.v_cache)[kv_off + half] = y2;
      continue;
    }
    double sn, cs;
    sincos(double(a.positions[r]) * a.inv_freq[i], &sn, &cs);
    const float c = float(cs * a.attention_factor), s = float(sn * a.attention_factor);
    const float x1 = __bfloat162float(y1), x2 = __bfloat162float(y2);
    const bf16 z1 = __float2bfloat16(x1 * c - x2 * s), z2 = __float2bfloat16(x2 * c + x1 * s);
    if (which == 0) {
      bf16* q = static_cast<bf16*>(a.q) + int64_t(r) * a.H * hd + int64_t(head) * hd + i;
      q[0] = z1, q[half] = z2;
    } else if (store) {
      static_cast<bf16*>(a.k_cache)[kv_off] = z1, static_cast<bf16*>(a.k_cache)[kv_off + half] = z2;
    }
  }
}

// Calls f with std::integral_constant<int, n> for 1 <= n <= kGemvMaxRows (the matrix-vector kernels' row count).
template <typename F>
void dispatch_rows(int64_t n, F&& f) {
  switch (n) {
    case 1: f(std::integral_constant<int, 1>{}); break;
    case 2: f(std::integral_constant<int, 2>{}); break;
    case 3: f(std::integral_constant<int, 3>{}); break;
    case 4: f(std::integral_constant<int, 4>{}); break;
    case 5: f(std::integral_constant<int, 5>{}); break;
    case 6: f(std::integral_constant<int, 6>{}); break;
    case 7: f(std::integral_constant<int, 7>{}); break;
    default: f(std::integral_constant<int, 8>{}); break;
  }
}

}  // namespace

bool gemv(cudaStream_t st, const GemvGroup& g, DType out_t, const void* x, int64_t n, int64_t k) {
  uintptr_t addr = reinterpret_cast<uintptr_t>(x);
  int64_t rows = 0;
  for (int m = 0; m < g.count; ++m) addr |= reinterpret_cast<uintptr_t>(g.w[m]), rows += g.rows[m];
  if (n < 1 || n > kGemvMaxRows || k % 8 != 0 || (addr & 15) || g.count < 1 || g.count > 3) return false;
  const unsigned blocks = unsigned((rows + 7) / 8);
  dispatch1(out_t, [&](auto y) {
    using TO = decltype(y);
    auto launch = [&](auto r) { launch_pdl(gemv_kernel<decltype(r)::value, TO>, blocks, 256, 0, st, g, as_bf16(x), k); };
    dispatch_rows(n, launch);
  });
  check_launch("gemv");
  return true;
}

bool qkv_rope(cudaStream_t st, const QkvRope& a, const void* x, int64_t n, int64_t k) {
  const uintptr_t addr = reinterpret_cast<uintptr_t>(x) | reinterpret_cast<uintptr_t>(a.wq) |
                         reinterpret_cast<uintptr_t>(a.wk) | reinterpret_cast<uintptr_t>(a.wv);
  if (n < 1 || n > kGemvMaxRows || k % 8 != 0 || (addr & 15) || a.head_dim % 2 != 0 || a.head_dim < 2) return false;
  const int64_t pairs = int64_t(a.H + 2 * a.KV) * (a.head_dim / 2);
  const unsigned blocks = unsigned((pairs + 7) / 8);
  auto launch = [&](auto r) { launch_pdl(qkv_rope_kernel<decltype(r)::value>, blocks, 256, 0, st, a, as_bf16(x), k); };
  dispatch_rows(n, launch);
  check_launch("qkv_rope");
  return true;
}

bool swiglu_gemv(cudaStream_t st, void* out, DType out_t, const void* x, const void* gate, const void* up, int64_t n,
                 int64_t f, int64_t k) {
  const uintptr_t addr = reinterpret_cast<uintptr_t>(x) | reinterpret_cast<uintptr_t>(gate) |
                         reinterpret_cast<uintptr_t>(up);
  if (n < 1 || n > kGemvMaxRows || k % 8 != 0 || (addr & 15)) return false;
  const unsigned blocks = unsigned((f + 7) / 8);
  dispatch1(out_t, [&](auto y) {
    using TO = decltype(y);
    auto launch = [&](auto r) {
      launch_pdl(swiglu_gemv_kernel<decltype(r)::value, TO>, blocks, 256, 0, st, static_cast<TO*>(out), as_bf16(x),
                 as_bf16(gate), as_bf16(up), f, k);
    };
    dispatch_rows(n, launch);
  });
  check_launch("swiglu_gemv");
  return true;
}

}  // namespace rill::cuda
