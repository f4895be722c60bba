#include "backend/cuda/device_info.h"

#include <cuda_runtime.h>

#include <cstdio>

namespace rill::cuda {

namespace {
__global__ void iota_kernel(int* out, int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) out[i] = i * 3;
}
}  // namespace

int device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) return 0;
  return n;
}

std::string device_description(int i) {
  cudaDeviceProp p{};
  const cudaError_t err = cudaGetDeviceProperties(&p, i);
  if (err != cudaSuccess) return cudaGetErrorString(err);
  char buf[640];
  std::snprintf(buf, sizeof buf, "%s (sm_%d%d, %.1f GiB)", p.name, p.major, p.minor,
                double(p.totalGlobalMem) / (1024.0 * 1024.0 * 1024.0));
  return buf;
}

bool self_test() {
  constexpr int n = 1000;
  int* d = nullptr;
  if (cudaMalloc(&d, n * sizeof(int)) != cudaSuccess) return false;
  iota_kernel<<<(n + 255) / 256, 256>>>(d, n);
  int h[n];
  const bool ok = cudaMemcpy(h, d, sizeof h, cudaMemcpyDeviceToHost) == cudaSuccess;
  cudaFree(d);
  if (!ok) return false;
  for (int i = 0; i < n; ++i)
    if (h[i] != i * 3) return false;
  return true;
}

}  // namespace rill::cuda
