// Element-wise and row-wise kernels of the CUDA backend. Every kernel computes in f32 and rounds once
// when it stores bf16; each row is handled by one block, so a row's result never depends on what else
// is in the batch.
#include <cuda_bf16.h>

#include <cmath>
#include <cstdlib>
#include <cstdint>
#include <type_traits>

#include "backend/cuda/common.cuh"
#include "backend/cuda/kernels.h"

namespace rill::cuda {

bool pdl_enabled() {
  static const bool on = [] {
    const char* v = std::getenv("RILL_CUDA_PDL");
    return !(v && std::string(v) == "0");
  }();
  return on;
}

int sm_count() {
  static const int n = [] {
    int dev = 0, v = 0;
    check_cuda(cudaGetDevice(&dev), "device");
    check_cuda(cudaDeviceGetAttribute(&v, cudaDevAttrMultiProcessorCount, dev), "SM count");
    return v;
  }();
  return n;
}

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

template <typename TO, typename TW>
__global__ void embedding_kernel(TO* out, const TW* table, const int32_t* ids, int64_t d, int64_t vocab) {
  const int64_t i = blockIdx.x;
  const int32_t id = ids[i];
  const bool ok = id >= 0 && id < vocab;
  for (int64_t j = threadIdx.x; j < d; j += blockDim.x)
    out[i * d + j] = from_f<TO>(ok ? to_f(table[int64_t(id) * d + j]) : 0.f);
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

// One block per token. The token's angles are formed in double (exact for positions in the millions) once,
// into shared memory; then every thread rotates (head, frequency) pairs in f32.
template <typename T>
__global__ void rope_kernel(T* x, int64_t width, int head_dim, const int32_t* pos, const double* inv_freq,
                            const int32_t* rope_row, float af) {
  __shared__ float cs[256], sn[256];  // head_dim / 2 <= 256
  const int64_t t = blockIdx.x;
  const int half = head_dim / 2;
  const double* f = inv_freq + int64_t(rope_row ? rope_row[t] : 0) * half;
  for (int i = threadIdx.x; i < half; i += blockDim.x) {
    double s, c;
    sincos(double(pos[t]) * f[i], &s, &c);
    cs[i] = float(c * af);
    sn[i] = float(s * af);
  }
  __syncthreads();
  T* xt = x + t * width;
  const int64_t pairs = width / 2;
  for (int64_t k = threadIdx.x; k < pairs; k += blockDim.x) {
    const int64_t h = (k / half) * head_dim;
    const int i = int(k % half);
    const float x1 = to_f(xt[h + i]), x2 = to_f(xt[h + i + half]);
    xt[h + i] = from_f<T>(x1 * cs[i] - x2 * sn[i]);
    xt[h + i + half] = from_f<T>(x2 * cs[i] + x1 * sn[i]);
  }
}

template <typename T, typename TC>
__global__ void kv_write_kernel(TC* kc, TC* vc, const T* k, const T* v, const int32_t* slots, int64_t width,
                                int64_t num_slots) {
  const int64_t t = blockIdx.x;
  const int64_t slot = slots[t];
  if (slot < 0 || slot >= num_slots) return;  // the host checked; never write outside the cache
  for (int64_t j = threadIdx.x; j < width; j += blockDim.x) {
    kc[slot * width + j] = from_f<TC>(to_f(k[t * width + j]));
    vc[slot * width + j] = from_f<TC>(to_f(v[t * width + j]));
  }
}

// RoPE on q and k and the write of k and v into the paged cache, in one launch: block (token, head) over the
// query heads, then the KV heads. Each thread forms its frequency's angle in double as rope_kernel does (so
// the result is the same to the bit) and rotates one pair; KV-head blocks then store the rotated k and the v
// head at the token's slot (none for slot < 0).
template <typename T, typename TC>
__global__ void rope_kv_write_kernel(T* q, T* k, const T* v, TC* kc, TC* vc, int H, int KV, int head_dim,
                                     const int32_t* pos, const double* inv_freq, const int32_t* rope_row,
                                     float af, const int32_t* slots, int64_t num_slots) {
  pdl_wait();
  const int64_t t = blockIdx.x;
  const int head = blockIdx.y, half = head_dim / 2;
  const bool is_q = head < H;
  const int64_t width = int64_t(is_q ? H : KV) * head_dim;
  T* x = (is_q ? q : k) + t * width + int64_t(is_q ? head : head - H) * head_dim;
  const double* f = inv_freq + int64_t(rope_row ? rope_row[t] : 0) * half;
  const int64_t slot = is_q ? -1 : slots[t];
  const bool store = slot >= 0 && slot < num_slots;
  const int64_t kv_off = slot * int64_t(KV) * head_dim + int64_t(head - H) * head_dim;
  for (int i = threadIdx.x; i < half; i += blockDim.x) {
    double s, c;
    sincos(double(pos[t]) * f[i], &s, &c);
    const float cs = float(c * af), sn = float(s * af);
    const float x1 = to_f(x[i]), x2 = to_f(x[i + half]);
    const T y1 = from_f<T>(x1 * cs - x2 * sn), y2 = from_f<T>(x2 * cs + x1 * sn);
    x[i] = y1;
    x[i + half] = y2;
    if (store) {
      kc[kv_off + i] = from_f<TC>(to_f(y1));
      kc[kv_off + i + half] = from_f<TC>(to_f(y2));
    }
  }
  if (store) {
    const T* vr = v + t * width + int64_t(head - H) * head_dim;
    for (int i = threadIdx.x; i < head_dim; i += blockDim.x) vc[kv_off + i] = from_f<TC>(to_f(vr[i]));
  }
}

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

__device__ __forceinline__ float silu_times(float g, float u) {
  return g / (1.f + expf(-g)) * u;
}
// V entries per thread per pass: 16-byte loads and stores where the pointers allow (V = 16 / sizeof(T)).
template <typename T, int V>
__global__ void silu_mul_kernel(T* out, const T* gate, const T* up, int64_t n) {
  pdl_wait();
  struct alignas(sizeof(T) * V) Pack {
    T v[V];
  };
  const int64_t packs = n / V, stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < packs; i += stride) {
    const Pack g = reinterpret_cast<const Pack*>(gate)[i], u = reinterpret_cast<const Pack*>(up)[i];
    Pack o;
#pragma unroll
    for (int j = 0; j < V; ++j) o.v[j] = from_f<T>(silu_times(to_f(g.v[j]), to_f(u.v[j])));
    reinterpret_cast<Pack*>(out)[i] = o;
  }
  for (int64_t i = packs * V + blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += stride)
    out[i] = from_f<T>(silu_times(to_f(gate[i]), to_f(up[i])));
}

template <typename T, typename TW>
__global__ void add_bias_kernel(T* out, const TW* bias, int64_t rows, int64_t o) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < rows * o; i += int64_t(gridDim.x) * blockDim.x)
    out[i] = from_f<T>(to_f(out[i]) + to_f(bias[i % o]));
}

template <typename U>
__global__ void gather_kernel(U* out, const U* x, int64_t row_units, const int32_t* rows) {
  const int64_t i = blockIdx.x;
  const U* src = x + int64_t(rows[i]) * row_units;
  for (int64_t j = threadIdx.x; j < row_units; j += blockDim.x) out[i * row_units + j] = src[j];
}

template <typename TO, typename TX>
__global__ void convert_kernel(TO* out, const TX* x, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    out[i] = from_f<TO>(to_f(x[i]));
}

// One thread per token: softmax over E experts, then k rounds of selecting the largest probability
// (ties to the lower expert id), as the CPU backend does.
__global__ void moe_route_kernel(int32_t* ids, float* weights, const float* logits, int64_t n, int E, int k,
                                 bool normalize) {
  const int64_t t = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (t >= n) return;
  const float* l = logits + t * E;
  float mx = -INFINITY;
  for (int e = 0; e < E; ++e) mx = fmaxf(mx, l[e]);
  double sum = 0.0;
  for (int e = 0; e < E; ++e) sum += expf(l[e] - mx);
  uint32_t taken[32] = {};
  double top = 0.0;
  for (int j = 0; j < k; ++j) {
    int best = -1;
    float bp = -1.f;
    for (int e = 0; e < E; ++e) {
      if (taken[e / 32] & (1u << (e % 32))) continue;
      const float p = float(expf(l[e] - mx) / sum);
      if (p > bp) {
        bp = p;
        best = e;
      }
    }
    taken[best / 32] |= 1u << (best % 32);
    ids[t * k + j] = best;
    weights[t * k + j] = bp;
    top += bp;
  }
  if (normalize)
    for (int j = 0; j < k; ++j) weights[t * k + j] = float(weights[t * k + j] / top);
}

template <typename T>
__global__ void scatter_add_kernel(float* acc, const T* y, const int32_t* token, const float* w, int64_t d) {
  const int64_t i = blockIdx.x;
  float* dst = acc + int64_t(token[i]) * d;
  const float wi = w[i];
  for (int64_t j = threadIdx.x; j < d; j += blockDim.x) dst[j] += wi * to_f(y[i * d + j]);
}

__global__ void argmax_kernel(int32_t* out, const float* logits, int64_t vocab) {
  pdl_wait();
  __shared__ float best_v[32];
  __shared__ int best_i[32];
  const float* row = logits + blockIdx.x * vocab;
  float bv = -INFINITY;
  int bi = 0x7fffffff;
  for_each_in_row(row, int(vocab), [&](float v, int j) {
    if (v > bv) bv = v, bi = j;
  });
  block_best(bv, bi, best_v, best_i);
  if (threadIdx.x == 0) out[blockIdx.x] = bi == 0x7fffffff ? 0 : bi;
}

// Row kernels run one block per row: wide rows get many threads, so that a decode step's few rows are not
// latency-bound on one SM.
int threads_for(int64_t d) { return d >= 4096 ? 1024 : d >= 1024 ? 256 : d >= 256 ? 128 : 64; }
unsigned grid_for(int64_t n, int threads) {
  return unsigned(std::min<int64_t>((n + threads - 1) / threads, 65536));
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

void embedding(cudaStream_t st, void* out, DType out_t, const void* table, DType w_t, const int32_t* ids,
               int64_t n, int64_t d, int64_t vocab) {
  if (n == 0) return;
  const int th = threads_for(d);
  dispatch2(out_t, w_t, [&](auto o, auto w) {
    using TO = decltype(o);
    using TW = decltype(w);
    embedding_kernel<<<n, th, 0, st>>>(static_cast<TO*>(out), static_cast<const TW*>(table), ids, d, vocab);
  });
  check_launch("embedding");
}

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

void rope(cudaStream_t st, void* x, DType t, int64_t n, int64_t width, int head_dim, const int32_t* positions,
          const double* inv_freq, const int32_t* rope_row, float attention_factor) {
  if (n == 0) return;
  if (head_dim / 2 > 256) throw Error("cuda backend: rope: head_dim above 512");
  const int th = width / 2 >= 1024 ? 512 : 128;
  dispatch1(t, [&](auto v) {
    using T = decltype(v);
    rope_kernel<<<n, th, 0, st>>>(static_cast<T*>(x), width, head_dim, positions, inv_freq, rope_row,
                                  attention_factor);
  });
  check_launch("rope");
}

void kv_write(cudaStream_t st, void* k_cache, void* v_cache, DType cache_t, const void* k, const void* v,
              DType t, const int32_t* slots, int64_t n, int64_t width, int64_t num_slots) {
  if (n == 0) return;
  dispatch2(t, cache_t, [&](auto x, auto c) {
    using T = decltype(x);
    using TC = decltype(c);
    kv_write_kernel<<<n, threads_for(width), 0, st>>>(static_cast<TC*>(k_cache), static_cast<TC*>(v_cache),
                                                      static_cast<const T*>(k), static_cast<const T*>(v),
                                                      slots, width, num_slots);
  });
  check_launch("kv_write");
}

void rope_kv_write(cudaStream_t st, void* q, void* k, const void* v, DType t, void* k_cache, void* v_cache,
                   DType cache_t, int64_t n, int H, int KV, int head_dim, const int32_t* positions,
                   const double* inv_freq, const int32_t* rope_row, float attention_factor,
                   const int32_t* slots, int64_t num_slots) {
  if (n == 0) return;
  if (head_dim / 2 > 256) throw Error("cuda backend: rope: head_dim above 512");
  const int th = std::max(32, std::min(256, head_dim / 2));
  dispatch2(t, cache_t, [&](auto x, auto c) {
    using T = decltype(x);
    using TC = decltype(c);
    launch_pdl(rope_kv_write_kernel<T, TC>, dim3(unsigned(n), unsigned(H + KV)), th, 0, st,
               static_cast<T*>(q), static_cast<T*>(k), static_cast<const T*>(v), static_cast<TC*>(k_cache),
               static_cast<TC*>(v_cache), H, KV, head_dim, positions, inv_freq, rope_row, attention_factor,
               slots, num_slots);
  });
  check_launch("rope_kv_write");
}

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

void silu_mul(cudaStream_t st, void* out, const void* gate, const void* up, DType t, int64_t n) {
  if (n == 0) return;
  dispatch1(t, [&](auto x) {
    using T = decltype(x);
    constexpr int V = 16 / sizeof(T);
    const uintptr_t addresses = reinterpret_cast<uintptr_t>(out) | reinterpret_cast<uintptr_t>(gate) |
                                reinterpret_cast<uintptr_t>(up);
    if (addresses % 16 == 0)
      launch_pdl(silu_mul_kernel<T, V>, grid_for(n / V + 1, 256), 256, 0, st, static_cast<T*>(out),
                 static_cast<const T*>(gate), static_cast<const T*>(up), n);
    else
      launch_pdl(silu_mul_kernel<T, 1>, grid_for(n, 256), 256, 0, st, static_cast<T*>(out),
                 static_cast<const T*>(gate), static_cast<const T*>(up), n);
  });
  check_launch("silu_mul");
}

void add_bias(cudaStream_t st, void* out, DType t, const void* bias, DType bias_t, int64_t rows, int64_t o) {
  if (rows == 0) return;
  dispatch2(t, bias_t, [&](auto x, auto b) {
    using T = decltype(x);
    using TW = decltype(b);
    add_bias_kernel<<<grid_for(rows * o, 256), 256, 0, st>>>(static_cast<T*>(out),
                                                             static_cast<const TW*>(bias), rows, o);
  });
  check_launch("add_bias");
}

void gather_rows(cudaStream_t st, void* out, const void* x, size_t row_bytes, const int32_t* rows, int64_t m) {
  if (m == 0) return;
  if (row_bytes % 16 == 0)
    gather_kernel<<<m, 128, 0, st>>>(static_cast<int4*>(out), static_cast<const int4*>(x), int64_t(row_bytes / 16), rows);
  else if (row_bytes % 4 == 0)
    gather_kernel<<<m, 128, 0, st>>>(static_cast<int*>(out), static_cast<const int*>(x), int64_t(row_bytes / 4), rows);
  else
    gather_kernel<<<m, 128, 0, st>>>(static_cast<char*>(out), static_cast<const char*>(x), int64_t(row_bytes), rows);
  check_launch("gather_rows");
}

void convert(cudaStream_t st, void* out, DType out_t, const void* x, DType x_t, int64_t n) {
  if (n == 0) return;
  dispatch2(out_t, x_t, [&](auto o, auto i) {
    using TO = decltype(o);
    using TX = decltype(i);
    convert_kernel<<<grid_for(n, 256), 256, 0, st>>>(static_cast<TO*>(out), static_cast<const TX*>(x), n);
  });
  check_launch("convert");
}

void moe_route(cudaStream_t st, int32_t* ids, float* weights, const float* logits, int64_t n, int E, int k,
               bool normalize) {
  if (n == 0) return;
  moe_route_kernel<<<grid_for(n, 64), 64, 0, st>>>(ids, weights, logits, n, E, k, normalize);
  check_launch("moe_route");
}

void scatter_add(cudaStream_t st, float* acc, const void* y, DType t, const int32_t* token, const float* w, int64_t m,
                 int64_t d) {
  if (m == 0) return;
  dispatch1(t, [&](auto x) {
    using T = decltype(x);
    scatter_add_kernel<<<m, threads_for(d), 0, st>>>(acc, static_cast<const T*>(y), token, w, d);
  });
  check_launch("scatter_add");
}

void argmax_rows(cudaStream_t st, int32_t* out, const float* logits, int64_t rows, int64_t vocab) {
  if (rows == 0) return;
  launch_pdl(argmax_kernel, unsigned(rows), 1024, 0, st, out, logits, vocab);
  check_launch("argmax_rows");
}

}  // namespace rill::cuda
