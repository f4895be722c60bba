// RoPE (angles formed in double, exact for positions in the millions) and the write of K and V into the paged
// cache, alone or fused.
#include <cuda_bf16.h>

#include <cmath>
#include <cstdint>

#include "backend/cuda/common.cuh"
#include "backend/cuda/kernels.h"

namespace rill::cuda {

namespace {

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

}  // namespace

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

}  // namespace rill::cuda
