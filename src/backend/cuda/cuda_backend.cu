#include "backend/cuda/cuda_backend.h"

#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <tuple>
#include <vector>

#include "backend/cuda/common.cuh"
#include "backend/cuda/kernels.h"
#include "core/thread_pool.h"

namespace rill {

namespace {

using cuda::check_cuda;

void expect(bool ok, const char* op, const std::string& what) {
  if (!ok) throw Error(std::string("cuda backend: ") + op + ": " + what);
}

void check_lt(cublasStatus_t s, const char* what) {
  if (s != CUBLAS_STATUS_SUCCESS)
    throw Error(std::string("cuda backend: cuBLASLt ") + what + " failed (status " + std::to_string(int(s)) + ")");
}

bool is_act(DType t) { return t == DType::F32 || t == DType::BF16; }

// The stream and library handles outlive the backend object for as long as any tensor still holds
// device memory, because a tensor's deleter frees on the stream.
struct StreamState {
  int device = 0;
  cudaStream_t stream = nullptr;
  ~StreamState() {
    if (stream) {
      cudaStreamSynchronize(stream);
      cudaStreamDestroy(stream);
    }
  }
};

// A GEMM shape with its cuBLASLt descriptors and the algorithm chosen for it, made once.
struct GemmPlan {
  cublasLtMatmulDesc_t op = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
  cublasLtMatmulAlgo_t algo{};
  ~GemmPlan() {
    if (op) cublasLtMatmulDescDestroy(op);
    if (a) cublasLtMatrixLayoutDestroy(a);
    if (b) cublasLtMatrixLayoutDestroy(b);
    if (c) cublasLtMatrixLayoutDestroy(c);
  }
};

class CudaBackend final : public Backend {
 public:
  CudaBackend(int device, DType dtype) : st_(std::make_shared<StreamState>()), dt_(dtype) {
    expect(dtype == DType::BF16 || dtype == DType::F32, "dtype",
           std::string(dtype_name(dtype)) + " is not one of bf16, f32");
    int count = 0;
    check_cuda(cudaGetDeviceCount(&count), "cudaGetDeviceCount");
    expect(device >= 0 && device < count, "device",
           "cuda:" + std::to_string(device) + " does not exist (" + std::to_string(count) + " devices)");
    st_->device = device;
    check_cuda(cudaSetDevice(device), "cudaSetDevice");
    check_cuda(cudaGetDeviceProperties(&props_, device), "cudaGetDeviceProperties");
    check_cuda(cudaStreamCreateWithFlags(&st_->stream, cudaStreamNonBlocking), "cudaStreamCreate");
    // Keep freed memory in the pool: after warm-up no allocation reaches cudaMalloc.
    cudaMemPool_t pool;
    check_cuda(cudaDeviceGetDefaultMemPool(&pool, device), "cudaDeviceGetDefaultMemPool");
    uint64_t keep = UINT64_MAX;
    check_cuda(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &keep), "cudaMemPoolSetAttribute");
    check_lt(cublasLtCreate(&lt_), "create");
    const char* inv = std::getenv("RILL_BATCH_INVARIANT");
    batch_invariant_ = inv && std::string(inv) == "1";
    gemm_ws_ = alloc(DType::U8, {kGemmWorkspace});
  }
  ~CudaBackend() override {
    cudaStreamSynchronize(st_->stream);
    staging_.reset();
    plans_.clear();
    if (lt_) cublasLtDestroy(lt_);
  }

  Device device() const override { return Device::CUDA; }
  std::string name() const override {
    return "cuda:" + std::to_string(st_->device) + " (" + props_.name + ", sm_" +
           std::to_string(props_.major) + std::to_string(props_.minor) +
           (dt_ == DType::F32 ? ", float32" : "") + ")";
  }
  // bf16 by default; float32 mode keeps weights, activations and the KV cache in f32.
  DType activation_dtype() const override { return dt_; }
  void* stream() const { return st_->stream; }
  DType kv_dtype() const override { return dt_; }
  bool memory_info(size_t* free_bytes, size_t* total_bytes) override {
    return cudaMemGetInfo(free_bytes, total_bytes) == cudaSuccess;
  }

  Tensor alloc(DType dtype, Shape shape) override {
    expect(!capturing_, "alloc", "a recorded graph must not allocate (size the buffers before recording)");
    Tensor t;
    t.dtype = dtype;
    t.shape = shape;
    t.device = Device::CUDA;
    const size_t bytes = std::max<size_t>(256, (t.nbytes() + 255) & ~size_t(255));
    void* p = nullptr;
    const cudaError_t e = cudaMallocAsync(&p, bytes, st_->stream);
    if (e != cudaSuccess) {
      cudaGetLastError();
      size_t free_b = 0, total_b = 0;
      cudaMemGetInfo(&free_b, &total_b);
      throw Error("cuda backend: out of device memory allocating " + std::to_string(bytes >> 20) + " MiB (" +
                  std::to_string(free_b >> 20) + " MiB free of " + std::to_string(total_b >> 20) + " MiB)");
    }
    auto st = st_;
    t.data = p;
    t.storage = std::shared_ptr<void>(p, [st](void* q) { cudaFreeAsync(q, st->stream); });
    return t;
  }

  // Host weights go through pinned staging buffers: host threads copy (and so fault in, from the page cache
  // or the disk, several places at once) into one buffer while the copy engine moves the one before to the
  // device. f16 and f32 weights are converted on the device.
  Tensor upload_weight(const Tensor& host) override {
    expect(host.dtype == DType::F32 || host.dtype == DType::BF16 || host.dtype == DType::F16, "upload_weight",
           "weights of dtype " + std::string(dtype_name(host.dtype)) + " are not supported");
    Tensor t = alloc(dt_, host.shape);
    if (host.device == Device::CUDA) {
      cuda::convert(st_->stream, t.data, dt_, host.data, host.dtype, host.numel());
      return t;
    }
    if (host.dtype == dt_) {
      staged_copy(t.data, host.data, host.nbytes());
      return t;
    }
    const Tensor raw = alloc(host.dtype, host.shape);  // freed in stream order, after the conversion
    staged_copy(raw.data, host.data, host.nbytes());
    cuda::convert(st_->stream, t.data, dt_, raw.data, host.dtype, host.numel());
    return t;
  }
  void end_upload() override {
    if (!staging_) return;
    synchronize();
    staging_.reset();
  }

  void write(const Tensor& dst, const void* src, size_t bytes) override {
    expect(!capturing_, "write", "a recorded graph must not copy from the host");
    expect(bytes <= dst.nbytes(), "write", "more bytes than the tensor holds");
    if (bytes == 0) return;
    // From pageable memory the copy is staged before this returns, so `src` may be freed right after.
    check_cuda(cudaMemcpyAsync(dst.data, src, bytes, cudaMemcpyHostToDevice, st_->stream), "write");
  }
  void read(void* dst, const Tensor& src, size_t bytes) override {
    expect(!capturing_, "read", "a recorded graph must not read back");
    expect(bytes <= src.nbytes(), "read", "more bytes than the tensor holds");
    if (bytes > 0) check_cuda(cudaMemcpyAsync(dst, src.data, bytes, cudaMemcpyDeviceToHost, st_->stream), "read");
    synchronize();
  }
  void fill_zero(const Tensor& t) override {
    check_cuda(cudaMemsetAsync(t.data, 0, t.nbytes(), st_->stream), "fill_zero");
  }
  void synchronize() override { check_cuda(cudaStreamSynchronize(st_->stream), "synchronize"); }

  bool can_record() const override { return true; }
  bool begin_capture() override {
    check_cuda(cudaStreamBeginCapture(st_->stream, cudaStreamCaptureModeThreadLocal), "begin capture");
    capturing_ = true;
    return true;
  }
  std::unique_ptr<Graph> end_capture() override;

  void embedding(const Tensor& out, const Tensor& table, const Tensor& ids) override {
    const int64_t n = ids.numel(), d = table.row_size();
    expect(is_act(out.dtype) && out.numel() == n * d, "embedding", "bad output shape");
    expect(table.dtype == dt_, "embedding", "table must be an uploaded weight");
    cuda::embedding(st_->stream, out.data, out.dtype, table.data, table.dtype, ids.ptr<int32_t>(), n, d,
                    table.rows());
  }
  void rmsnorm(const Tensor& out, const Tensor& x, const Tensor& weight, float eps) override {
    const int64_t d = weight.numel(), rows = x.numel() / d;
    expect(x.numel() % d == 0 && out.numel() == x.numel(), "rmsnorm", "shape mismatch");
    expect(weight.dtype == dt_, "rmsnorm", "weight must be an uploaded weight");
    cuda::rmsnorm(st_->stream, out.data, out.dtype, x.data, x.dtype, weight.data, weight.dtype, rows, d, eps);
  }
  void add_rmsnorm(const Tensor& residual, const Tensor& out, const Tensor& delta, const Tensor& weight,
                   float eps) override {
    const int64_t d = weight.numel(), rows = residual.numel() / d;
    expect(residual.dtype == DType::F32, "add_rmsnorm", "the residual stream must be f32");
    expect(out.numel() == residual.numel() && delta.numel() == residual.numel(), "add_rmsnorm", "shape mismatch");
    expect(weight.dtype == dt_, "add_rmsnorm", "weight must be an uploaded weight");
    cuda::add_rmsnorm(st_->stream, residual.ptr<float>(), out.data, out.dtype, delta.data, delta.dtype,
                      weight.data, weight.dtype, rows, d, eps);
  }

  void linear(const Tensor& out, const Tensor& x, const Tensor& w, const Tensor& bias) override {
    const int64_t in = w.shape[1], o = w.shape[0], n = x.numel() / in;
    expect(w.shape.rank == 2 && w.dtype == dt_, "linear", "weight must be an uploaded 2-D matrix");
    expect(x.dtype == dt_ && x.numel() == n * in, "linear",
           "input " + x.shape.str() + " (" + std::string(dtype_name(x.dtype)) + ") does not match weight " +
               w.shape.str());
    expect(is_act(out.dtype) && out.numel() == n * o, "linear", "output " + out.shape.str() + " does not match");
    if (n == 0) return;
    // A few rows (decode): a matrix-vector kernel that streams the weights once, with no split-K reduction
    // pass. Not under RILL_BATCH_INVARIANT, where every row count takes the same cuBLASLt algorithms.
    cuda::GemvGroup g;
    g.w[0] = w.data;
    g.out[0] = out.data;
    g.rows[0] = o;
    g.count = 1;
    if (batch_invariant_ || dt_ != DType::BF16 || !few_rows(g, out.dtype, x.data, n, in)) {
      const GemmPlan& plan = gemm_plan(o, n, in, out.dtype, w.data, x.data, out.data);
      const float alpha = 1.f, beta = 0.f;
      check_lt(cublasLtMatmul(lt_, plan.op, &alpha, w.data, plan.a, x.data, plan.b, &beta, out.data, plan.c,
                              out.data, plan.c, &plan.algo, gemm_ws_.data, size_t(kGemmWorkspace), st_->stream),
               "matmul");
    }
    if (!bias.empty()) {
      expect(bias.numel() == o, "linear", "bias size does not match the output features");
      expect(bias.dtype == dt_, "linear", "bias must be an uploaded weight");
      cuda::add_bias(st_->stream, out.data, out.dtype, bias.data, bias.dtype, n, o);
    }
  }

  // Projections of one input in one matrix-vector launch when they are few rows (decode), else one by one.
  void linears(const Tensor& x, const LinearOut* outs, int count) override {
    bool one_pass = !batch_invariant_ && count >= 1 && count <= 3 && x.dtype == DType::BF16;
    cuda::GemvGroup g;
    const int64_t in = count > 0 ? outs[0].w.shape[1] : 0, n = in > 0 ? x.numel() / in : 0;
    for (int i = 0; one_pass && i < count; ++i) {
      const Tensor& w = outs[i].w;
      one_pass = w.shape.rank == 2 && w.dtype == DType::BF16 && w.shape[1] == in && x.numel() == n * in &&
                 outs[i].out.numel() == n * w.shape[0] && outs[i].out.dtype == outs[0].out.dtype;
      g.w[i] = w.data;
      g.out[i] = outs[i].out.data;
      g.rows[i] = w.shape[0];
    }
    g.count = count;
    if (!one_pass || !few_rows(g, outs[0].out.dtype, x.data, n, in)) {
      Backend::linears(x, outs, count);
      return;
    }
    for (int i = 0; i < count; ++i)
      if (!outs[i].bias.empty()) {
        expect(outs[i].bias.numel() == g.rows[i], "linear", "bias size does not match the output features");
        expect(outs[i].bias.dtype == dt_, "linear", "bias must be an uploaded weight");
        cuda::add_bias(st_->stream, outs[i].out.data, outs[i].out.dtype, outs[i].bias.data,
                       outs[i].bias.dtype, n, g.rows[i]);
      }
  }

  void swiglu(const Tensor& out, const Tensor& x, const Tensor& gate, const Tensor& gate_bias, const Tensor& up,
              const Tensor& up_bias, const Tensor& gate_buf, const Tensor& up_buf) override {
    const int64_t in = gate.shape[1], f = gate.shape[0], n = in > 0 ? x.numel() / in : 0;
    const bool one_pass = !batch_invariant_ && gate_bias.empty() && up_bias.empty() && x.dtype == DType::BF16 &&
                          gate.dtype == DType::BF16 && up.dtype == DType::BF16 && up.shape == gate.shape &&
                          x.numel() == n * in && out.numel() == n * f;
    if (!one_pass || !cuda::swiglu_gemv(st_->stream, out.data, out.dtype, x.data, gate.data, up.data, n, f, in))
      Backend::swiglu(out, x, gate, gate_bias, up, up_bias, gate_buf, up_buf);
  }

  void rope(const Tensor& x, int head_dim, const Tensor& positions, const Tensor& inv_freq, const Tensor& rope_row,
            float attention_factor) override {
    const int64_t n = positions.numel(), width = x.row_size();
    expect(x.rows() == n && width % head_dim == 0, "rope", "x must be [tokens, heads * head_dim]");
    expect(inv_freq.dtype == DType::F64 && inv_freq.row_size() == head_dim / 2, "rope",
           "inv_freq must be f64 [rows, head_dim/2]");
    cuda::rope(st_->stream, x.data, x.dtype, n, width, head_dim, positions.ptr<int32_t>(), inv_freq.ptr<double>(),
               rope_row.empty() ? nullptr : rope_row.ptr<int32_t>(), attention_factor);
  }
  void kv_write(const KvLayer& kv, const Tensor& k, const Tensor& v, const Tensor& slot_mapping) override {
    const int64_t n = slot_mapping.numel(), width = kv.k.numel() / (kv.k.shape[0] * kv.k.shape[1]);
    expect(kv.k.dtype == dt_ && kv.v.dtype == dt_, "kv_write",
           "the KV cache must be " + std::string(dtype_name(dt_)));
    expect(k.numel() == n * width && v.numel() == n * width && k.dtype == v.dtype, "kv_write",
           "k/v width does not match the cache");
    cuda::kv_write(st_->stream, kv.k.data, kv.v.data, dt_, k.data, v.data, k.dtype,
                   slot_mapping.ptr<int32_t>(), n, width, kv.k.shape[0] * kv.k.shape[1]);
  }
  size_t attention_workspace(const KvLayer& kv, const AttentionBatch& batch, int num_heads,
                             int sliding_window) override {
    if (batch.num_tokens == 0) return 0;
    return cuda::attention_workspace_bytes(attention_args(Tensor{}, Tensor{}, kv, batch, num_heads, 1.f,
                                                          sliding_window, Tensor{}));
  }
  void rope_kv_write(const Tensor& q, const Tensor& k, const Tensor& v, const KvLayer& kv, const Tensor& slot_mapping,
                     int head_dim, const Tensor& positions, const Tensor& inv_freq, const Tensor& rope_row,
                     float attention_factor) override {
    const int64_t n = positions.numel(), kv_heads = kv.k.shape[2];
    expect(kv.k.dtype == dt_ && kv.v.dtype == dt_ && kv.k.shape[3] == head_dim, "rope_kv_write",
           "the KV cache must be " + std::string(dtype_name(dt_)) + " with head_dim " +
               std::to_string(head_dim));
    expect(q.rows() == n && k.rows() == n && q.row_size() % head_dim == 0 && k.row_size() == kv_heads * head_dim &&
               v.numel() == k.numel() && slot_mapping.numel() == n && q.dtype == k.dtype && k.dtype == v.dtype,
           "rope_kv_write", "q, k, v must be [tokens, heads * head_dim] with one slot per token");
    expect(inv_freq.dtype == DType::F64 && inv_freq.row_size() == head_dim / 2, "rope_kv_write",
           "inv_freq must be f64 [rows, head_dim/2]");
    cuda::rope_kv_write(st_->stream, q.data, k.data, v.data, q.dtype, kv.k.data, kv.v.data, dt_, n,
                        int(q.row_size() / head_dim), int(kv_heads), head_dim, positions.ptr<int32_t>(),
                        inv_freq.ptr<double>(), rope_row.empty() ? nullptr : rope_row.ptr<int32_t>(),
                        attention_factor, slot_mapping.ptr<int32_t>(), kv.k.shape[0] * kv.k.shape[1]);
  }
  void qkv_rope_kv_write(const Tensor& x, const LinearOut* qkv, const KvLayer& kv, const Tensor& slot_mapping,
                         int head_dim, const Tensor& positions, const Tensor& inv_freq, const Tensor& rope_row,
                         float attention_factor) override {
    const Tensor &wq = qkv[0].w, &wk = qkv[1].w, &wv = qkv[2].w;
    const int64_t in = wq.shape.rank == 2 ? wq.shape[1] : 0, n = positions.numel();
    const int64_t kv_heads = kv.k.shape[2];
    bool fused = !batch_invariant_ && rope_row.empty() && x.dtype == DType::BF16 && in > 0 && x.numel() == n * in &&
                 head_dim > 0 && kv.k.dtype == DType::BF16 && kv.v.dtype == DType::BF16 && kv.k.shape[3] == head_dim &&
                 inv_freq.dtype == DType::F64 && inv_freq.row_size() == head_dim / 2 && slot_mapping.numel() == n;
    for (int i = 0; fused && i < 3; ++i)
      fused = qkv[i].bias.empty() && qkv[i].w.dtype == DType::BF16 && qkv[i].w.shape.rank == 2 &&
              qkv[i].w.shape[1] == in && qkv[i].out.dtype == DType::BF16 && qkv[i].out.numel() == n * qkv[i].w.shape[0];
    fused = fused && wq.shape[0] % head_dim == 0 && wk.shape[0] == kv_heads * head_dim && wv.shape == wk.shape;
    if (fused) {
      cuda::QkvRope a;
      a.wq = wq.data, a.wk = wk.data, a.wv = wv.data;
      a.q = qkv[0].out.data, a.k_cache = kv.k.data, a.v_cache = kv.v.data;
      a.H = int(wq.shape[0] / head_dim), a.KV = int(kv_heads), a.head_dim = head_dim;
      a.positions = positions.ptr<int32_t>(), a.inv_freq = inv_freq.ptr<double>();
      a.attention_factor = attention_factor;
      a.slots = slot_mapping.ptr<int32_t>(), a.num_slots = kv.k.shape[0] * kv.k.shape[1];
      if (cuda::qkv_rope(st_->stream, a, x.data, n, in)) return;
    }
    Backend::qkv_rope_kv_write(x, qkv, kv, slot_mapping, head_dim, positions, inv_freq, rope_row, attention_factor);
  }
  void attention(const Tensor& out, const Tensor& q, const KvLayer& kv, const AttentionBatch& batch, int num_heads,
                 float scale, int sliding_window, const Tensor& q_sink) override {
    expect(q.dtype == dt_ && q.numel() == int64_t(batch.num_tokens) * num_heads * kv.k.shape[3] &&
               out.numel() == q.numel(),
           "attention", "q/out shape mismatch");
    expect(kv.k.dtype == dt_ && kv.v.dtype == dt_, "attention",
           "the KV cache must be " + std::string(dtype_name(dt_)));
    expect(dt_ == DType::BF16 || out.dtype == DType::F32, "attention", "float32 mode writes an f32 output");
    expect(batch.sinks.empty() ||
               (!batch.hole_end.empty() && q_sink.numel() == q.numel() && q_sink.dtype == dt_),
           "attention", "sinks need hole_end and q_sink");
    expect(batch.max_ctx_len > 0 || batch.num_tokens == 0, "attention", "batch.max_ctx_len is not set");
    cuda::AttentionArgs a = attention_args(out, q, kv, batch, num_heads, scale, sliding_window, q_sink);
    a.batch_invariant = batch_invariant_;
    const size_t ws = cuda::attention_workspace_bytes(a);
    Tensor scratch = batch.workspace;
    if (ws > 0 && scratch.empty()) scratch = alloc(DType::U8, {int64_t(ws)});
    expect(ws == 0 || scratch.nbytes() >= ws, "attention",
           "batch.workspace holds " + std::to_string(scratch.nbytes()) + " bytes, " + std::to_string(ws) + " needed");
    cuda::attention(st_->stream, a, scratch.data);
  }
  void silu_mul(const Tensor& out, const Tensor& gate, const Tensor& up) override {
    expect(gate.numel() == out.numel() && up.numel() == out.numel() && gate.dtype == out.dtype &&
               up.dtype == out.dtype,
           "silu_mul", "shape mismatch");
    cuda::silu_mul(st_->stream, out.data, gate.data, up.data, out.dtype, out.numel());
  }
  void moe_route(const Tensor& ids, const Tensor& weights, const Tensor& router_logits, int k,
                 bool normalize) override {
    const int64_t n = router_logits.rows(), E = router_logits.row_size();
    expect(ids.numel() == n * k && weights.numel() == n * k, "moe_route", "ids/weights must be [n, k]");
    expect(router_logits.dtype == DType::F32 && E <= 1024 && k <= E, "moe_route",
           "router logits must be f32 with at most 1024 experts");
    cuda::moe_route(st_->stream, ids.ptr<int32_t>(), weights.ptr<float>(), router_logits.ptr<float>(), n, int(E), k,
                    normalize);
  }
  // Routing is read back to the host (one sync per MoE layer), then each expert runs its three GEMMs
  // over the rows routed to it and adds them, weighted, into an f32 accumulator.
  void moe_experts(const Tensor& out, const Tensor& x, const Tensor& ids, const Tensor& weights,
                   const std::vector<ExpertWeights>& experts) override {
    const int64_t n = x.rows(), d = x.row_size(), k = ids.row_size();
    expect(out.numel() == n * d && out.dtype == x.dtype, "moe_experts", "output shape mismatch");
    std::vector<int32_t> hid(static_cast<size_t>(n * k));
    std::vector<float> hw(static_cast<size_t>(n * k));
    read(hid.data(), ids, hid.size() * 4);
    read(hw.data(), weights, hw.size() * 4);
    std::vector<std::vector<int32_t>> rows(experts.size());
    std::vector<std::vector<float>> ws(experts.size());
    for (int64_t t = 0; t < n; ++t)
      for (int64_t j = 0; j < k; ++j) {
        const int e = hid[size_t(t * k + j)];
        expect(e >= 0 && size_t(e) < experts.size(), "moe_experts", "expert id out of range");
        rows[size_t(e)].push_back(int32_t(t));
        ws[size_t(e)].push_back(hw[size_t(t * k + j)]);
      }
    Tensor acc = alloc(DType::F32, {n, d});
    fill_zero(acc);
    for (size_t e = 0; e < experts.size(); ++e) {
      if (rows[e].empty()) continue;
      const int64_t m = int64_t(rows[e].size()), f = experts[e].gate.shape[0];
      Tensor idx = alloc(DType::I32, {m}), wt = alloc(DType::F32, {m});
      write(idx, rows[e].data(), size_t(m) * 4);
      write(wt, ws[e].data(), size_t(m) * 4);
      Tensor xe = alloc(x.dtype, {m, d}), g = alloc(x.dtype, {m, f}), u = alloc(x.dtype, {m, f});
      Tensor ye = alloc(x.dtype, {m, d});
      gather_rows(xe, x, idx);
      linear(g, xe, experts[e].gate, Tensor{});
      linear(u, xe, experts[e].up, Tensor{});
      silu_mul(g, g, u);
      linear(ye, g, experts[e].down, Tensor{});
      cuda::scatter_add(st_->stream, acc.ptr<float>(), ye.data, ye.dtype, idx.ptr<int32_t>(), wt.ptr<float>(), m, d);
    }
    cuda::convert(st_->stream, out.data, out.dtype, acc.data, DType::F32, n * d);
  }
  void argmax_rows(const Tensor& ids, const Tensor& logits) override {
    expect(ids.numel() == logits.rows() && logits.dtype == DType::F32, "argmax_rows", "ids must be [rows], logits f32");
    cuda::argmax_rows(st_->stream, ids.ptr<int32_t>(), logits.ptr<float>(), logits.rows(), logits.row_size());
  }
  void mask_logits(const Tensor& logits, const Tensor& mask) override {
    const int64_t m = logits.rows(), vocab = logits.row_size();
    expect(logits.dtype == DType::F32 && mask.dtype == DType::I32 && mask.numel() == m * ((vocab + 31) / 32),
           "mask_logits", "logits must be f32 [rows, vocab] and mask i32 [rows * ceil(vocab / 32)]");
    cuda::mask_logits(st_->stream, logits.ptr<float>(), reinterpret_cast<const uint32_t*>(mask.ptr<int32_t>()), m, vocab);
  }
  void sample_rows(const Tensor& ids, const Tensor& logits, const Tensor& rows, const Tensor& penalties) override {
    expect(ids.numel() == logits.rows() && logits.dtype == DType::F32, "sample_rows", "ids must be [rows], logits f32");
    expect(rows.nbytes() == size_t(logits.rows()) * sizeof(SampleRow), "sample_rows",
           "rows must hold one SampleRow per logits row");
    cuda::sample_rows(st_->stream, ids.ptr<int32_t>(), logits.ptr<float>(), logits.rows(), logits.row_size(),
                      static_cast<const SampleRow*>(rows.data),
                      penalties.empty() ? nullptr : static_cast<const PenaltyEntry*>(penalties.data),
                      int64_t(penalties.nbytes() / sizeof(PenaltyEntry)));
  }
  void top_logprobs(const Tensor& out, const Tensor& logits, const Tensor& ids, int k) override {
    const int64_t m = logits.rows();
    expect(logits.dtype == DType::F32 && ids.dtype == DType::I32 && ids.numel() == m, "top_logprobs",
           "logits must be f32 [rows, vocab] and ids i32 [rows]");
    expect(k >= 0 && k <= kMaxTopLogprobs, "top_logprobs", "k must be in [0, " + std::to_string(kMaxTopLogprobs) + "]");
    expect(out.dtype == DType::F32 && out.numel() == m * (1 + 2 * k), "top_logprobs", "out must be f32 [rows, 1 + 2k]");
    cuda::top_logprobs(st_->stream, out.ptr<float>(), logits.ptr<float>(), ids.ptr<int32_t>(), m, logits.row_size(), k);
  }
  void gather_rows(const Tensor& out, const Tensor& x, const Tensor& rows) override {
    const int64_t m = rows.numel(), w = x.row_size();
    expect(out.numel() == m * w && out.dtype == x.dtype, "gather_rows", "output shape mismatch");
    cuda::gather_rows(st_->stream, out.data, x.data, size_t(w) * dtype_size(x.dtype), rows.ptr<int32_t>(), m);
  }

 private:
  static constexpr int64_t kGemmWorkspace = 32 << 20;

  static cuda::AttentionArgs attention_args(const Tensor& out, const Tensor& q, const KvLayer& kv,
                                            const AttentionBatch& batch, int num_heads, float scale,
                                            int sliding_window, const Tensor& q_sink) {
    cuda::AttentionArgs a;
    a.num_tokens = batch.num_tokens;
    a.num_seqs = batch.num_seqs;
    a.H = num_heads;
    a.KV = int(kv.k.shape[2]);
    a.hd = int(kv.k.shape[3]);
    a.bs = int(kv.k.shape[1]);
    a.kv_t = kv.k.dtype;
    a.q = q.data;
    a.q_sink = batch.sinks.empty() ? nullptr : q_sink.data;
    a.out = out.data;
    a.out_t = out.dtype;
    a.k_cache = kv.k.data;
    a.v_cache = kv.v.data;
    a.q_start = batch.q_start.ptr<int32_t>();
    a.ctx_len = batch.ctx_len.ptr<int32_t>();
    a.tables = batch.block_tables.ptr<int32_t>();
    a.token_seq = batch.token_seq.ptr<int32_t>();
    a.sinks = batch.sinks.empty() ? nullptr : batch.sinks.ptr<int32_t>();
    a.hole_end = batch.hole_end.empty() ? nullptr : batch.hole_end.ptr<int32_t>();
    a.max_blocks = batch.max_blocks_per_seq;
    a.sliding_window = sliding_window;
    a.max_q_len = batch.max_q_len;
    a.max_ctx_len = batch.max_ctx_len;
    if (int(batch.host_q_len.size()) == batch.num_seqs) a.host_q_len = batch.host_q_len.data();
    if (int(batch.host_sinks.size()) == batch.num_seqs) a.host_sinks = batch.host_sinks.data();
    a.scale = scale;
    return a;
  }

  // Products of a few rows (decode): the matrix-vector kernel for up to 8 rows. For 9 to 64, the tensor-core
  // kernel of gemm_rows.cu takes a group of small matrices that share x (q, k and v: one launch where
  // cuBLASLt takes three, two of them short and slow); single matrices and large groups (gate and up) stream
  // as fast or faster through cuBLASLt (bench/results/cuda-rows-gemm-h100-2026-11-23.txt). False where
  // neither kernel takes the shape (then cuBLASLt does).
  bool few_rows(const cuda::GemvGroup& g, DType out_t, const void* x, int64_t n, int64_t in) {
    if (cuda::gemv(st_->stream, g, out_t, x, n, in)) return true;
    int64_t rows = 0;
    for (int m = 0; m < g.count; ++m) rows += g.rows[m];
    return g.count > 1 && rows <= kRowsGroupMaxRows && cuda::gemm_rows(st_->stream, g, out_t, x, n, in);
  }
  static constexpr int64_t kRowsGroupMaxRows = 16384;

  // cuBLASLt is column-major: the row-major out[n, o] = x[n, i] · w[o, i]^T is, column-major,
  // out(o x n) = w^T(o x i) · x(i x n), with w stored i x o (transposed) and x stored i x n.
  // A plan (descriptors) is made per exact shape; its algorithm is chosen once per shape class (algo_for).
  const GemmPlan& gemm_plan(int64_t o, int64_t n, int64_t in, DType out_t, const void* w, const void* x,
                            void* out) {
    const auto key = std::make_tuple(o, n, in, int(out_t));
    auto it = plans_.find(key);
    if (it != plans_.end()) return *it->second;
    auto plan = std::make_unique<GemmPlan>();
    describe(*plan, o, n, in, out_t);
    plan->algo = algo_for(*plan, o, n, in, out_t, w, x, out);
    const GemmPlan& ref = *plan;
    plans_.emplace(key, std::move(plan));
    return ref;
  }

  // The operation and layouts of out[n, o] = x[n, in] · w[o, in]^T.
  void describe(GemmPlan& plan, int64_t o, int64_t n, int64_t in, DType out_t) const {
    check_lt(cublasLtMatmulDescCreate(&plan.op, CUBLAS_COMPUTE_32F, CUDA_R_32F), "matmul desc");
    const cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
    check_lt(cublasLtMatmulDescSetAttribute(plan.op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta), "transa");
    check_lt(cublasLtMatmulDescSetAttribute(plan.op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb), "transb");
    // float32 mode: f32 in and CUBLAS_COMPUTE_32F, which is true f32 (TF32 would need _FAST_TF32).
    const cudaDataType_t ct = out_t == DType::F32 ? CUDA_R_32F : CUDA_R_16BF;
    const cudaDataType_t in_t = dt_ == DType::F32 ? CUDA_R_32F : CUDA_R_16BF;
    check_lt(cublasLtMatrixLayoutCreate(&plan.a, in_t, uint64_t(in), uint64_t(o), in), "layout a");
    check_lt(cublasLtMatrixLayoutCreate(&plan.b, in_t, uint64_t(in), uint64_t(n), in), "layout b");
    check_lt(cublasLtMatrixLayoutCreate(&plan.c, ct, uint64_t(o), uint64_t(n), o), "layout c");
  }

  // The heuristic's candidates (at most `max`) for the shape `desc` describes.
  std::vector<cublasLtMatmulHeuristicResult_t> candidates(const GemmPlan& desc, int max) const {
    cublasLtMatmulPreference_t pref;
    check_lt(cublasLtMatmulPreferenceCreate(&pref), "preference");
    const uint64_t ws = kGemmWorkspace;
    cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof ws);
    std::vector<cublasLtMatmulHeuristicResult_t> results(size_t(std::max(1, max)));
    int count = 0;
    const cublasStatus_t s = cublasLtMatmulAlgoGetHeuristic(
        lt_, desc.op, desc.a, desc.b, desc.c, desc.c, pref, int(results.size()), results.data(), &count);
    cublasLtMatmulPreferenceDestroy(pref);
    check_lt(s, "heuristic");
    results.resize(size_t(std::max(0, count)));
    return results;
  }

  bool supports(const GemmPlan& plan, const cublasLtMatmulAlgo_t& algo) const {
    cublasLtMatmulHeuristicResult_t r{};
    return cublasLtMatmulAlgoCheck(lt_, plan.op, plan.a, plan.b, plan.c, plan.c, &algo, &r) ==
               CUBLAS_STATUS_SUCCESS &&
           r.workspaceSize <= size_t(kGemmWorkspace);
  }

  // Shapes share an algorithm by class: the same matrix (o x in) and output dtype, and a row count in the
  // same power-of-two bucket (exact up to 8). The first shape of a class chooses it among the heuristic's
  // candidates for the bucket's row count that also run this shape: the first, or, with a tuning cache, the
  // fastest of them timed on this product's own operands (outside a graph recording), or the choice the cache
  // kept. So a prompt of a
  // length not seen before queries nothing and loads no new kernel once the warm-up (Engine) has run each
  // bucket. With RILL_BATCH_INVARIANT=1 every exact shape takes the heuristic's first algorithm that does not
  // split the reduction over k: then a row's result does not depend on how many rows are in the batch.
  cublasLtMatmulAlgo_t algo_for(const GemmPlan& plan, int64_t o, int64_t n, int64_t in, DType out_t,
                                const void* w, const void* x, void* out) {
    auto no_algorithm = [&] {
      return Error("cuda backend: linear: cuBLASLt has no algorithm for " + std::to_string(n) + "x" +
                   std::to_string(in) + " · " + std::to_string(in) + "x" + std::to_string(o));
    };
    if (batch_invariant_) {
      const auto results = candidates(plan, 16);
      if (results.empty()) throw no_algorithm();
      for (const auto& r : results) {
        int32_t splitk = 1;
        size_t written = 0;
        cublasLtMatmulAlgoConfigGetAttribute(&r.algo, CUBLASLT_ALGO_CONFIG_SPLITK_NUM, &splitk, sizeof splitk,
                                             &written);
        if (splitk <= 1) return r.algo;
      }
      return results[0].algo;
    }
    const int64_t bucket =
        n <= 8 ? n : std::max<int64_t>(16, int64_t(1) << (64 - __builtin_clzll(uint64_t(n - 1))));
    const AlgoKey key{o, bucket, in, int(out_t)};
    if (auto it = algos_.find(key); it != algos_.end() && supports(plan, it->second)) return it->second;
    if (auto it = cached_.find(key); it != cached_.end() && supports(plan, it->second)) {
      ++from_cache_;
      algos_[key] = it->second;
      return it->second;
    }
    const auto t0 = std::chrono::steady_clock::now();
    std::vector<cublasLtMatmulHeuristicResult_t> found;
    {
      GemmPlan probe;  // the bucket's shape, for the heuristic
      describe(probe, o, bucket, in, out_t);
      for (const auto& r : candidates(probe, kTuneCandidates))
        if (supports(plan, r.algo)) found.push_back(r);
    }
    if (found.empty()) found = candidates(plan, 1);
    if (found.empty()) throw no_algorithm();
    cublasLtMatmulAlgo_t best = found[0].algo;
    // Timing picks among near-equal candidates by noise, so two processes could choose differently (and compute
    // slightly differently in bf16): only with a tuning cache, which makes the choice once for every later run.
    // Without one, the heuristic's first choice, as deterministic as the library.
    if (!capturing_ && found.size() > 1 && !tuning_dir_.empty()) {
      // Each candidate once to load its kernel, then the best of three timed runs.
      cudaEvent_t a = nullptr, b = nullptr;
      check_cuda(cudaEventCreate(&a), "event");
      check_cuda(cudaEventCreate(&b), "event");
      float best_ms = 1e30f;
      const float alpha = 1.f, beta = 0.f;
      for (const auto& r : found) {
        auto run = [&] {
          return cublasLtMatmul(lt_, plan.op, &alpha, w, plan.a, x, plan.b, &beta, out, plan.c, out, plan.c,
                                &r.algo, gemm_ws_.data, size_t(kGemmWorkspace),
                                st_->stream) == CUBLAS_STATUS_SUCCESS;
        };
        if (!run()) continue;
        float ms = 1e30f;
        for (int rep = 0; rep < 3; ++rep) {
          cudaEventRecord(a, st_->stream);
          const bool ok = run();
          cudaEventRecord(b, st_->stream);
          float t = 0;
          if (ok && cudaEventSynchronize(b) == cudaSuccess && cudaEventElapsedTime(&t, a, b) == cudaSuccess)
            ms = std::min(ms, t);
        }
        if (ms < best_ms) {
          best_ms = ms;
          best = r.algo;
        }
      }
      cudaEventDestroy(a);
      cudaEventDestroy(b);
      cudaGetLastError();
    }
    algos_[key] = best;
    ++tuned_;
    tune_seconds_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    return best;
  }

 public:
  void set_tuning_cache(const std::string& dir) override {
    tuning_dir_ = dir;
    cached_.clear();
    if (dir.empty()) return;
    const std::string path = tuning_path();
    std::ifstream in(path);
    if (!in) return;  // a first run
    try {
      const nlohmann::json j = nlohmann::json::parse(in);
      if (j.at("key").get<std::string>() != tuning_key()) return;
      for (const auto& e : j.at("algos")) {
        const std::string hex = e.at(4).get<std::string>();
        cublasLtMatmulAlgo_t algo{};
        if (hex.size() != 2 * sizeof algo)
          throw Error("algorithm of " + std::to_string(hex.size() / 2) + " bytes");
        auto* bytes = reinterpret_cast<uint8_t*>(&algo);
        for (size_t i = 0; i < sizeof algo; ++i)
          bytes[i] = uint8_t(std::stoul(hex.substr(2 * i, 2), nullptr, 16));
        cached_[AlgoKey{e.at(0).get<int64_t>(), e.at(1).get<int64_t>(), e.at(2).get<int64_t>(),
                        e.at(3).get<int>()}] = algo;
      }
    } catch (const std::exception& e) {
      cached_.clear();
      std::fprintf(stderr, "rill: %s: ignored (%s); it is written anew\n", path.c_str(), e.what());
    }
  }
  void save_tuning() override {
    if (tuning_dir_.empty() || tuned_ == 0) return;
    std::map<AlgoKey, cublasLtMatmulAlgo_t> all = cached_;
    for (const auto& [k, v] : algos_) all[k] = v;
    nlohmann::json list = nlohmann::json::array();
    for (const auto& [k, algo] : all) {
      std::string hex;
      const auto* bytes = reinterpret_cast<const uint8_t*>(&algo);
      for (size_t i = 0; i < sizeof algo; ++i) {
        char h[3];
        std::snprintf(h, sizeof h, "%02x", bytes[i]);
        hex += h;
      }
      list.push_back({std::get<0>(k), std::get<1>(k), std::get<2>(k), std::get<3>(k), hex});
    }
    const std::string path = tuning_path(), tmp = path + ".tmp" + std::to_string(::getpid());
    std::error_code ec;
    std::filesystem::create_directories(tuning_dir_, ec);
    {
      std::ofstream out(tmp);
      out << nlohmann::json({{"key", tuning_key()}, {"algos", list}}).dump() << "\n";
      if (!out) {
        std::fprintf(stderr, "rill: %s: cannot write the tuning cache\n", tmp.c_str());
        return;
      }
    }
    std::filesystem::rename(tmp, path, ec);
    if (ec)
      std::fprintf(stderr, "rill: %s: cannot write the tuning cache (%s)\n", path.c_str(),
                   ec.message().c_str());
    cached_ = std::move(all);
    tuned_total_ += tuned_;
    tuned_ = 0;
  }
  std::string tuning_summary() const override {
    char buf[160];
    std::snprintf(buf, sizeof buf, "GEMM algorithms: %d shape classes chosen (%.2f s), %d from the tuning cache",
                  tuned_total_ + tuned_, tune_seconds_, from_cache_);
    return buf;
  }

 private:
  // What a tuning file is valid for: the GPU, its driver, the cuBLASLt version and rill's number format.
  std::string tuning_key() const {
    int driver = 0;
    cudaDriverGetVersion(&driver);
    return std::string(props_.name) + " sm_" + std::to_string(props_.major) + std::to_string(props_.minor) +
           " driver " + std::to_string(driver) + " cublasLt " + std::to_string(cublasLtGetVersion()) + " " +
           std::string(dtype_name(dt_));
  }
  std::string tuning_path() const {
    std::string name = tuning_key();
    for (char& c : name)
      if (!std::isalnum(static_cast<unsigned char>(c))) c = '-';
    return (std::filesystem::path(tuning_dir_) / ("gemm-" + name + ".json")).string();
  }

  // Pinned staging for upload_weight (made on the first upload, freed by end_upload()).
  struct Staging {
    static constexpr size_t kSlot = size_t(64) << 20;
    static constexpr int kSlots = 3;
    void* host[kSlots] = {};
    cudaEvent_t done[kSlots] = {};
    bool busy[kSlots] = {};
    int next = 0;
    ThreadPool pool{8};
    Staging() {
      for (int i = 0; i < kSlots; ++i) {
        check_cuda(cudaHostAlloc(&host[i], kSlot, cudaHostAllocDefault), "cudaHostAlloc (staging)");
        check_cuda(cudaEventCreateWithFlags(&done[i], cudaEventDisableTiming), "event");
      }
    }
    ~Staging() {
      for (int i = 0; i < kSlots; ++i) {
        if (done[i]) {
          cudaEventSynchronize(done[i]);
          cudaEventDestroy(done[i]);
        }
        if (host[i]) cudaFreeHost(host[i]);
      }
    }
  };

  void staged_copy(void* dst, const void* src, size_t bytes) {
    expect(!capturing_, "upload_weight", "a recorded graph must not copy from the host");
    if (!staging_) staging_ = std::make_unique<Staging>();
    Staging& sg = *staging_;
    const auto* from = static_cast<const uint8_t*>(src);
    auto* to = static_cast<uint8_t*>(dst);
    const size_t page = size_t(::sysconf(_SC_PAGESIZE));
    for (size_t off = 0; off < bytes; off += Staging::kSlot) {
      const size_t len = std::min(Staging::kSlot, bytes - off);
      // Ask the kernel to read the piece after this one while this one is copied (mapped files).
      if (off + len < bytes) {
        const uintptr_t begin = reinterpret_cast<uintptr_t>(from + off + len) & ~uintptr_t(page - 1);
        ::madvise(reinterpret_cast<void*>(begin), std::min(Staging::kSlot, bytes - off - len) + page,
                  MADV_WILLNEED);
      }
      const int s = sg.next;
      sg.next = (sg.next + 1) % Staging::kSlots;
      if (sg.busy[s]) check_cuda(cudaEventSynchronize(sg.done[s]), "staging");
      auto* slot = static_cast<uint8_t*>(sg.host[s]);
      sg.pool.parallel_for(int64_t(len), int64_t(4) << 20, [&](int64_t b, int64_t e) {
        std::memcpy(slot + b, from + off + size_t(b), size_t(e - b));
      });
      check_cuda(cudaMemcpyAsync(to + off, slot, len, cudaMemcpyHostToDevice, st_->stream), "upload_weight");
      check_cuda(cudaEventRecord(sg.done[s], st_->stream), "staging");
      sg.busy[s] = true;
    }
  }

  using AlgoKey = std::tuple<int64_t, int64_t, int64_t, int>;  // o, row bucket, in, output dtype
  static constexpr int kTuneCandidates = 4;
  std::map<AlgoKey, cublasLtMatmulAlgo_t> algos_;   // chosen in this process
  std::map<AlgoKey, cublasLtMatmulAlgo_t> cached_;  // read from (and last written to) the tuning cache
  std::string tuning_dir_;
  int tuned_ = 0, tuned_total_ = 0, from_cache_ = 0;
  double tune_seconds_ = 0;
  std::unique_ptr<Staging> staging_;

  std::shared_ptr<StreamState> st_;
  DType dt_;  // weights, activations and KV: bf16, or f32 (float32 mode)
  cudaDeviceProp props_{};
  cublasLtHandle_t lt_ = nullptr;
  bool batch_invariant_ = false;
  bool capturing_ = false;
  Tensor gemm_ws_;
  std::map<std::tuple<int64_t, int64_t, int64_t, int>, std::unique_ptr<GemmPlan>> plans_;
};

// An instantiated CUDA graph, replayed on the backend's stream.
class CudaGraph final : public Graph {
 public:
  CudaGraph(std::shared_ptr<StreamState> st, cudaGraphExec_t exec) : st_(std::move(st)), exec_(exec) {}
  ~CudaGraph() override { cudaGraphExecDestroy(exec_); }
  void replay() override { check_cuda(cudaGraphLaunch(exec_, st_->stream), "graph launch"); }

 private:
  std::shared_ptr<StreamState> st_;
  cudaGraphExec_t exec_;
};

std::unique_ptr<Graph> CudaBackend::end_capture() {
  cudaGraph_t graph = nullptr;
  capturing_ = false;
  const cudaError_t e = cudaStreamEndCapture(st_->stream, &graph);
  cudaGetLastError();  // an op that failed inside the capture left its error here
  if (e != cudaSuccess || !graph) {
    if (graph) cudaGraphDestroy(graph);
    check_cuda(e == cudaSuccess ? cudaErrorStreamCaptureInvalidated : e, "end capture");
  }
  cudaGraphExec_t exec = nullptr;
  const cudaError_t ie = cudaGraphInstantiate(&exec, graph, 0);
  cudaGraphDestroy(graph);
  check_cuda(ie, "graph instantiate");
  return std::make_unique<CudaGraph>(st_, exec);
}

}  // namespace

std::unique_ptr<Backend> make_cuda_backend(int device, DType dtype) {
  return std::make_unique<CudaBackend>(device, dtype);
}

void* cuda_stream(Backend& backend) {
  auto* cuda = dynamic_cast<CudaBackend*>(&backend);
  return cuda ? cuda->stream() : nullptr;
}

}  // namespace rill
