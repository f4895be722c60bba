// The CUDA backend's other element-wise and row-wise kernels: embedding, SiLU·mul, bias, row gathers, dtype
// conversion, MoE routing and scatter, argmax; and the device facts the launchers ask (PDL on or off, SM count).
// Every kernel computes in f32 and rounds once when it stores bf16.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>

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

template <typename TO, typename TW>
__global__ void embedding_kernel(TO* out, const TW* table, const int32_t* ids, int64_t d, int64_t vocab) {
  const int64_t i = blockIdx.x;
  const int32_t id = ids[i];
  const bool ok = id >= 0 && id < vocab;
  for (int64_t j = threadIdx.x; j < d; j += blockDim.x)
    out[i * d + j] = from_f<TO>(ok ? to_f(table[int64_t(id) * d + j]) : 0.f);
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

template <typename TO>
__global__ void convert_f16_kernel(TO* out, const __half* x, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    out[i] = from_f<TO>(__half2float(x[i]));
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
  if (x_t == DType::F16) {  // weights only: f16 checkpoints, converted once on upload
    dispatch1(out_t, [&](auto o) {
      using TO = decltype(o);
      convert_f16_kernel<<<grid_for(n, 256), 256, 0, st>>>(static_cast<TO*>(out),
                                                           static_cast<const __half*>(x), n);
    });
    check_launch("convert");
    return;
  }
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

__global__ void mask_logits_kernel(float* logits, const uint32_t* mask, int64_t vocab, int64_t words) {
  const int64_t row = blockIdx.y;
  const int64_t t = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (t >= vocab) return;
  if (!((mask[row * words + (t >> 5)] >> (t & 31)) & 1u)) logits[row * vocab + t] = -INFINITY;
}

void mask_logits(cudaStream_t st, float* logits, const uint32_t* mask, int64_t rows, int64_t vocab) {
  if (rows == 0) return;
  mask_logits_kernel<<<dim3(unsigned((vocab + 255) / 256), unsigned(rows)), 256, 0, st>>>(logits, mask, vocab,
                                                                                          (vocab + 31) / 32);
  check_launch("mask_logits");
}

void argmax_rows(cudaStream_t st, int32_t* out, const float* logits, int64_t rows, int64_t vocab) {
  if (rows == 0) return;
  launch_pdl(argmax_kernel, unsigned(rows), 1024, 0, st, out, logits, vocab);
  check_launch("argmax_rows");
}

}  // namespace rill::cuda
