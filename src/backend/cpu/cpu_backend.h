// CpuBackend: the Backend on host memory. Ops run synchronously on the calling thread plus the backend's
// own thread pool; tensors are plain (64-byte aligned) host allocations, and weights in f32/bf16/f16 are
// used in place, straight from the checkpoint's memory map.
#pragma once

#include <chrono>
#include <map>
#include <memory>
#include <mutex>
#include <unordered_map>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "backend/cpu/vec.h"
#include "core/thread_pool.h"

namespace rill {

class CpuBackend final : public Backend {
 public:
  explicit CpuBackend(int num_threads);
  ~CpuBackend() override;

  Device device() const override { return Device::CPU; }
  std::string name() const override;

  Tensor alloc(DType dtype, Shape shape) override;
  Tensor upload_weight(const Tensor& host) override;
  void write(const Tensor& dst, const void* src, size_t bytes) override;
  void read(void* dst, const Tensor& src, size_t bytes) override;
  void fill_zero(const Tensor& t) override;
  void synchronize() override {}

  void embedding(const Tensor& out, const Tensor& table, const Tensor& ids) override;
  void rmsnorm(const Tensor& out, const Tensor& x, const Tensor& weight, float eps) override;
  void add_rmsnorm(const Tensor& residual, const Tensor& out, const Tensor& delta, const Tensor& weight,
                   float eps) override;
  void linear(const Tensor& out, const Tensor& x, const Tensor& w, const Tensor& bias) override;
  void linears(const Tensor& x, const LinearOut* outs, int count) override;
  void swiglu(const Tensor& out, const Tensor& x, const Tensor& gate, const Tensor& gate_bias, const Tensor& up,
              const Tensor& up_bias, const Tensor& gate_buf, const Tensor& up_buf) override;
  void rope(const Tensor& x, int head_dim, const Tensor& positions, const Tensor& inv_freq, const Tensor& rope_row,
            float attention_factor) override;
  void kv_write(const KvLayer& kv, const Tensor& k, const Tensor& v, const Tensor& slot_mapping) override;
  void rope_kv_write(const Tensor& q, const Tensor& k, const Tensor& v, const KvLayer& kv, const Tensor& slot_mapping,
                     int head_dim, const Tensor& positions, const Tensor& inv_freq, const Tensor& rope_row,
                     float attention_factor) override;
  void attention(const Tensor& out, const Tensor& q, const KvLayer& kv, const AttentionBatch& batch, int num_heads,
                 float scale, int sliding_window, const Tensor& q_sink = {}) override;
  void silu_mul(const Tensor& out, const Tensor& gate, const Tensor& up) override;
  void moe_route(const Tensor& ids, const Tensor& weights, const Tensor& router_logits, int k,
                 bool normalize) override;
  void moe_experts(const Tensor& out, const Tensor& x, const Tensor& ids, const Tensor& weights,
                   const std::vector<ExpertWeights>& experts) override;
  void gather_rows(const Tensor& out, const Tensor& x, const Tensor& rows) override;
  void argmax_rows(const Tensor& ids, const Tensor& logits) override;
  void mask_logits(const Tensor& logits, const Tensor& mask) override;
  void sample_rows(const Tensor& ids, const Tensor& logits, const Tensor& rows, const Tensor& penalties) override;
  void top_logprobs(const Tensor& out, const Tensor& logits, const Tensor& ids, int k) override;

 private:
  // RILL_CPU_PROFILE=1: the wall time of each op, prompt and decode (up to 4 rows) apart, printed to stderr
  // when the backend is destroyed. Off, an op pays one branch.
  struct Profile {
    struct Stat {
      double seconds = 0;
      int64_t calls = 0;
    };
    struct Timer {
      Profile* p;
      const char* op;
      bool decode;
      std::chrono::steady_clock::time_point start;
      ~Timer();
    };
    std::map<std::string, Stat> ops;
  };
  Profile::Timer time_op(const char* op, int64_t rows) {
    return {profile_.get(), op, rows <= 4, profile_ ? std::chrono::steady_clock::now() : std::chrono::steady_clock::time_point{}};
  }
  void project(const Tensor& x, const LinearOut* outs, int count, const Tensor* swiglu);
  // A weight's packed form (cpu::PackedMatrix), made on first use and kept while the weight's storage lives
  // (a weight without storage, a bare view, is packed for the call).
  struct Packed {
    cpu::PackedMatrix m;
    std::shared_ptr<void> buffer;
  };
  Packed packed(const Tensor& w);
  std::shared_ptr<void> arena_alloc(size_t bytes);
  struct PackedEntry {
    std::weak_ptr<void> owner;
    cpu::PackedMatrix m;
    std::shared_ptr<void> buffer;
  };

  ThreadPool pool_;
  std::mutex packed_mu_;
  std::unordered_map<const void*, PackedEntry> packed_weights_;
  std::shared_ptr<void> arena_;  // the chunk packed weights are carved from now
  size_t arena_used_ = 0;
  std::unique_ptr<Profile> profile_;
};

}  // namespace rill
