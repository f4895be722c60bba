// Shared by the CUDA tests (cuda_*_test.cpp, one binary: cuda_test): the CUDA backend against the CPU backend
// op by op on random data, with the inputs rounded to bf16 on both sides so only the arithmetic differs. GPU
// tests are skipped, visibly, where there is no CUDA build or no device (CI); run them on the GPU machine with
// `ctest -L gpu`, which also runs the golden, engine and streaming tests on the GPU (RILL_TEST_DEVICE=cuda).
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>

#include "backend/backend.h"
#include "model/model.h"
#include "reference.h"
#include "test_util.h"

#ifdef RILL_HAVE_CUDA
#include "backend/cuda/cuda_backend.h"
#include "backend/cuda/device_info.h"
#include "backend/cuda/kernels.h"
#endif

namespace rill::test {

#define RILL_NEED_GPU()                                                                      \
  do {                                                                                       \
    if (!cuda_available()) GTEST_SKIP() << "skipped: no CUDA device (or a build without CUDA)"; \
  } while (0)

// Random values already rounded to bf16, so both backends see the same inputs.
inline std::vector<float> random_bf16(size_t n, uint32_t seed, float scale = 1.f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0.f, scale);
  std::vector<float> v(n);
  for (float& x : v) x = bf16_to_f32(f32_to_bf16(d(rng)));
  return v;
}

// A tensor holding `v` on `b`: f32 on the CPU, `dtype` (f32 or bf16) on the GPU.
inline Tensor put(Backend& b, const std::vector<float>& v, Shape s, DType gpu_dtype = DType::BF16) {
  const DType dt = b.device() == Device::CPU ? DType::F32 : gpu_dtype;
  Tensor t = b.alloc(dt, s);
  if (dt == DType::F32) {
    b.write(t, v.data(), v.size() * 4);
  } else {
    std::vector<uint16_t> h(v.size());
    for (size_t i = 0; i < v.size(); ++i) h[i] = f32_to_bf16(v[i]);
    b.write(t, h.data(), h.size() * 2);
  }
  return t;
}
inline Tensor put_i32(Backend& b, const std::vector<int32_t>& v) {
  Tensor t = b.alloc(DType::I32, {int64_t(v.size())});
  b.write(t, v.data(), v.size() * 4);
  return t;
}
inline std::vector<float> get(Backend& b, const Tensor& t) {
  std::vector<float> v(static_cast<size_t>(t.numel()));
  if (t.dtype == DType::F32) {
    b.read(v.data(), t, v.size() * 4);
  } else {
    std::vector<uint16_t> h(v.size());
    b.read(h.data(), t, h.size() * 2);
    for (size_t i = 0; i < v.size(); ++i) v[i] = bf16_to_f32(h[i]);
  }
  return v;
}
// A weight: bf16 host memory, uploaded (the CPU uses it in place).
struct HostWeight {
  std::vector<uint16_t> bits;
  Tensor host;
  HostWeight(const std::vector<float>& v, Shape s) : bits(v.size()) {
    for (size_t i = 0; i < v.size(); ++i) bits[i] = f32_to_bf16(v[i]);
    host.data = bits.data();
    host.dtype = DType::BF16;
    host.shape = s;
  }
};

// A bf16 KV cache layer [blocks, bs, kv_heads, hd] of zeros on `b`.
inline KvLayer zeroed_kv(Backend& b, int64_t blocks, int64_t bs, int64_t kv_heads, int64_t hd) {
  KvLayer kv;
  kv.k = b.alloc(DType::BF16, {blocks, bs, kv_heads, hd});
  kv.v = b.alloc(DType::BF16, {blocks, bs, kv_heads, hd});
  b.fill_zero(kv.k);
  b.fill_zero(kv.v);
  return kv;
}
// RoPE inverse frequencies theta^(-2i/hd) as the f64 [1, hd/2] tensor rope() takes.
inline Tensor rope_frequencies(Backend& b, int64_t hd, double theta) {
  std::vector<double> inv(static_cast<size_t>(hd / 2));
  for (int64_t i = 0; i < hd / 2; ++i) inv[size_t(i)] = std::pow(theta, -2.0 * double(i) / double(hd));
  Tensor f = b.alloc(DType::F64, {1, hd / 2});
  b.write(f, inv.data(), inv.size() * 8);
  return f;
}

class CudaOps : public testing::Test {
 protected:
  void SetUp() override {
    RILL_NEED_GPU();
    cpu_ = make_cpu_backend(2);
    gpu_ = make_backend("cuda");
  }
  std::unique_ptr<Backend> cpu_, gpu_;
};

}  // namespace rill::test
