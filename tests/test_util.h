// Helpers shared by the tests: where ../shared is, and reading reference tensors.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "formats/safetensors.h"

namespace rill::test {

// The shared data folder beside the repository (RILL_SHARED_DIR overrides, e.g. on the GPU machine).
inline std::string shared_dir() {
  if (const char* env = std::getenv("RILL_SHARED_DIR")) return env;
  return RILL_DEFAULT_SHARED_DIR;
}
inline std::string shared(const std::string& rel) { return shared_dir() + "/" + rel; }

// Build-time locations, each overridable from the environment, so the test binaries also run from a copy
// of the checkout elsewhere (the GPU machine: tools/device/gpu_tests.sh).
inline std::string env_or(const char* name, const char* fallback) {
  const char* v = std::getenv(name);
  return v && *v ? v : fallback;
}
inline std::string models_dir() { return env_or("RILL_MODELS_DIR", RILL_MODELS_DIR); }
inline std::string test_data_dir() { return env_or("RILL_TEST_DATA_DIR", RILL_TEST_DATA_DIR); }
inline std::string make_random_model_bin() { return env_or("RILL_MAKE_RANDOM_MODEL", RILL_MAKE_RANDOM_MODEL); }

// The device the model tests run on: the CPU, or CUDA when RILL_TEST_DEVICE=cuda (CTest's gpu-labelled
// entries set it, so `ctest -L gpu` runs the golden, engine and streaming tests on the GPU).
inline bool test_on_gpu() {
  const char* d = std::getenv("RILL_TEST_DEVICE");
  return d && std::string(d) == "cuda";
}
// The GPU in float32 mode (RILL_TEST_DTYPE=float32: CTest's gpu_f32 entries), which must give what the CPU
// gives, to f32 rounding.
inline bool test_gpu_f32() {
  const char* d = std::getenv("RILL_TEST_DTYPE");
  return test_on_gpu() && d && std::string(d) == "float32";
}
// The GPU in its default bf16 mode, whose tolerances are bf16's.
inline bool test_gpu_bf16() {
  return test_on_gpu() && !test_gpu_f32();
}
// The backend for the test's device; null when that device is absent (the caller skips, visibly).
inline std::unique_ptr<Backend> test_backend(int cpu_threads) {
  if (!test_on_gpu()) return make_cpu_backend(cpu_threads);
  if (!cuda_available()) return nullptr;
  return make_backend("cuda", 0, test_gpu_f32() ? "float32" : "auto");
}
#define RILL_TEST_BACKEND(lhs, threads)                                                    \
  lhs = ::rill::test::test_backend(threads);                                               \
  if (!lhs) GTEST_SKIP() << "skipped: RILL_TEST_DEVICE=cuda, but there is no CUDA device " \
                            "(or this build has no CUDA)"
// Relative logit tolerance: `cpu` on the CPU and on the GPU in float32 mode (f32 compute); on the GPU in
// bf16, where weights, activations and KV are bf16, 5e-2 (golden_test.cpp says why not the 3e-2).
inline double logit_tolerance(double cpu) {
  return test_gpu_bf16() ? 5e-2 : cpu;
}

inline std::vector<int32_t> ids_of(const Tensor& t) {
  std::vector<int32_t> v(static_cast<size_t>(t.numel()));
  for (int64_t i = 0; i < t.numel(); ++i)
    v[size_t(i)] = t.dtype == DType::I64 ? int32_t(t.ptr<int64_t>()[i]) : t.ptr<int32_t>()[i];
  return v;
}

inline std::vector<float> floats_of(const Tensor& t) {
  return std::vector<float>(t.ptr<float>(), t.ptr<float>() + t.numel());
}

// max |a - b| / max |b|: the acceptance metric for logits.
inline double rel_max_diff(const float* a, const float* b, size_t n) {
  double diff = 0, ref = 0;
  for (size_t i = 0; i < n; ++i) {
    diff = std::max(diff, std::fabs(double(a[i]) - double(b[i])));
    ref = std::max(ref, std::fabs(double(b[i])));
  }
  return diff / ref;
}

// A scratch directory removed when the test ends.
struct TempDir {
  std::filesystem::path path;
  TempDir() {
    path = std::filesystem::temp_directory_path() /
           ("rill-test-" + std::to_string(::getpid()) + "-" + std::to_string(counter()++));
    std::filesystem::create_directories(path);
  }
  ~TempDir() { std::filesystem::remove_all(path); }
  std::string operator/(const std::string& name) const { return (path / name).string(); }
  static int& counter() {
    static int c = 0;
    return c;
  }
};

}  // namespace rill::test
