// Helpers shared by the CUDA backend's kernels: bf16/f32 loads and stores, warp reductions, dtype
// dispatch and launch checks.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <string>

#include "core/dtype.h"
#include "core/error.h"

namespace rill::cuda {

using bf16 = __nv_bfloat16;

__device__ __forceinline__ float to_f(float x) { return x; }
__device__ __forceinline__ float to_f(bf16 x) { return __bfloat162float(x); }
template <typename T>
__device__ __forceinline__ T from_f(float x);
template <>
__device__ __forceinline__ float from_f<float>(float x) { return x; }
template <>
__device__ __forceinline__ bf16 from_f<bf16>(float x) { return __float2bfloat16(x); }  // round to nearest even

__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

__host__ __device__ inline const bf16* as_bf16(const void* p) { return static_cast<const bf16*>(p); }

inline void check_cuda(cudaError_t e, const char* what) {
  if (e != cudaSuccess) throw Error(std::string("cuda backend: ") + what + ": " + cudaGetErrorString(e));
}
// Reports a failed launch (bad configuration) at the op that made it.
inline void check_launch(const char* op) { check_cuda(cudaGetLastError(), op); }

// Programmatic dependent launch (Hopper): a kernel launched with launch_pdl may be scheduled while the kernel
// before it on the stream is finishing, so its launch and whatever it does first overlap that kernel's tail.
// It must call pdl_wait() before it reads anything an earlier kernel wrote, and before it writes anything
// (so that no earlier kernel still reads what it overwrites). Weights may be touched before. pdl_wait() also
// lets the next kernel launch (its blocks then wait in their own pdl_wait() for this one to finish). Off with
// RILL_CUDA_PDL=0 (then pdl_wait() returns at once).
__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}
// D (16x8, f32) += A (16x16, bf16, row-major fragments) B (16x8, bf16, column-major fragments): one
// tensor-core MMA (mma.sync m16n8k16).
__device__ __forceinline__ void mma_bf16(float* c, const uint32_t* a, uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
// Copies 16 bytes from global to shared memory asynchronously (cp.async, bypassing L1); zero-fills them
// when !ok.
__device__ __forceinline__ void cp_async16(void* dst, const void* src, bool ok) {
  const uint32_t d = static_cast<uint32_t>(__cvta_generic_to_shared(dst));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(d), "l"(src), "r"(ok ? 16 : 0));
}
// A 16-byte load of weights that are read once per step: not kept in L1.
__device__ __forceinline__ uint4 load_stream(const void* p) {
  uint4 r;
  asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
               : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w)
               : "l"(p));
  return r;
}
// Starts the L2 fetch of a line of read-only data (a weight) that the kernel reads soon.
__device__ __forceinline__ void prefetch_l2(const void* p) { asm volatile("prefetch.global.L2 [%0];" ::"l"(p)); }

// f(value, index) for each entry of an f32 row of n, split over the block's threads: 16-byte loads, four in
// flight per thread, when the row allows it (then one SM reads a 128k-entry row without waiting on each load).
template <class F>
__device__ __forceinline__ void for_each_in_row(const float* row, int n, const F& f) {
  const int step = int(blockDim.x);
  if (n % 4 == 0 && (reinterpret_cast<uintptr_t>(row) & 15) == 0) {
    const float4* row4 = reinterpret_cast<const float4*>(row);
    const int n4 = n / 4;
    int q = threadIdx.x;
    for (; q + 3 * step < n4; q += 4 * step) {
      float4 v[4];
#pragma unroll
      for (int u = 0; u < 4; ++u) v[u] = row4[q + u * step];
#pragma unroll
      for (int u = 0; u < 4; ++u) {
        const int j = (q + u * step) * 4;
        f(v[u].x, j), f(v[u].y, j + 1), f(v[u].z, j + 2), f(v[u].w, j + 3);
      }
    }
    for (; q < n4; q += step) {
      const float4 v = row4[q];
      f(v.x, q * 4), f(v.y, q * 4 + 1), f(v.z, q * 4 + 2), f(v.w, q * 4 + 3);
    }
  } else {
    for (int i = threadIdx.x; i < n; i += step) f(row[i], i);
  }
}

// The order of an argmax: the larger value first, the lower id on ties.
__device__ __forceinline__ bool ranks_before(float a, int ia, float b, int ib) {
  return a > b || (a == b && ia < ib);
}

// The block's best (v, i) by ranks_before, returned to every thread; sv and si are 32-entry shared arrays.
__device__ inline void block_best(float& v, int& i, float* sv, int* si) {
  for (int o = 16; o > 0; o >>= 1) {
    const float ov = __shfl_xor_sync(0xffffffffu, v, o);
    const int oi = __shfl_xor_sync(0xffffffffu, i, o);
    if (ranks_before(ov, oi, v, i)) v = ov, i = oi;
  }
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  __syncthreads();  // sv and si are free again
  if (lane == 0) sv[warp] = v, si[warp] = i;
  __syncthreads();
  v = sv[0], i = si[0];
  for (int w = 1; w < int(blockDim.x / 32); ++w)
    if (ranks_before(sv[w], si[w], v, i)) v = sv[w], i = si[w];
}

__device__ __forceinline__ float silu_times(float g, float u) {
  return g / (1.f + expf(-g)) * u;
}

// Row kernels run one block per row: wide rows get many threads, so that a decode step's few rows are not
// latency-bound on one SM.
inline int threads_for(int64_t d) { return d >= 4096 ? 1024 : d >= 1024 ? 256 : d >= 256 ? 128 : 64; }
inline unsigned grid_for(int64_t n, int threads) {
  return unsigned(std::min<int64_t>((n + threads - 1) / threads, 65536));
}

bool pdl_enabled();
int sm_count();  // the device's streaming multiprocessors (the first device asked about)
template <typename... KArgs, typename... Args>
void launch_pdl(void (*kernel)(KArgs...), dim3 grid, dim3 block, size_t smem, cudaStream_t st, Args... args) {
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  cudaLaunchConfig_t cfg{};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = smem;
  cfg.stream = st;
  cfg.attrs = attr;
  cfg.numAttrs = pdl_enabled() ? 1 : 0;
  check_cuda(cudaLaunchKernelEx(&cfg, kernel, static_cast<KArgs>(args)...), "kernel launch");
}

// Calls f with a value of the C++ type for an activation dtype (f32 or bf16).
template <typename F>
void dispatch1(DType t, F&& f) {
  if (t == DType::F32) f(float{});
  else if (t == DType::BF16) f(bf16{});
  else throw Error("cuda backend: activations must be f32 or bf16, not " + std::string(dtype_name(t)));
}
template <typename F>
void dispatch2(DType a, DType b, F&& f) {
  dispatch1(a, [&](auto x) { dispatch1(b, [&](auto y) { f(x, y); }); });
}

}  // namespace rill::cuda
