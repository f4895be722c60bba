#include "backend/cpu/cpu_backend.h"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <mutex>
#include <numeric>

#include "backend/cpu/vec.h"
#include "core/error.h"

namespace rill {

namespace {

void expect(bool ok, const char* op, const std::string& what) {
  if (!ok) throw Error(std::string("cpu backend: ") + op + ": " + what);
}

// A weight vector (norm weights, biases) as f32: the pointer itself when already f32, else converted
// into `tmp`. Called once per op, never per row.
const float* as_f32(const Tensor& w, std::vector<float>& tmp) {
  if (w.dtype == DType::F32) return w.ptr<float>();
  tmp.resize(size_t(w.numel()));
  cpu::to_f32(w.dtype, w.data, tmp.data(), w.numel());
  return tmp.data();
}

// Host memory for tensors: 64-byte aligned; from 4 MiB on, 2 MiB aligned and marked for transparent huge pages,
// so that streaming the weights and the KV cache does not miss the TLB every 4 KiB (most kernels ship THP as
// "madvise").
std::shared_ptr<void> host_alloc(size_t bytes) {
  constexpr size_t kHuge = size_t(2) << 20;
  const bool huge = bytes >= 2 * kHuge;
  const size_t align = huge ? kHuge : 64;
  bytes = std::max<size_t>(64, (bytes + align - 1) / align * align);
  void* p = std::aligned_alloc(align, bytes);
  if (!p) throw Error("cpu backend: out of memory allocating " + std::to_string(bytes) + " bytes");
#if defined(MADV_HUGEPAGE)
  if (huge) madvise(p, bytes, MADV_HUGEPAGE);
#endif
  return std::shared_ptr<void>(p, std::free);
}

bool is_weight_dtype(DType t) { return t == DType::F32 || t == DType::BF16 || t == DType::F16; }

// silu(g) * u: SwiGLU's product, the same expression in silu_mul and the fused pass (which must agree bit for bit).
inline float silu_times(float g, float u) { return g / (1.f + std::exp(-g)) * u; }

void rmsnorm_row(float* out, const float* x, const float* w, int64_t d, float eps) {
  double ss = 0.0;
  for (int64_t i = 0; i < d; ++i) ss += double(x[i]) * x[i];
  const float inv = float(1.0 / std::sqrt(ss / double(d) + double(eps)));
  for (int64_t i = 0; i < d; ++i) out[i] = w[i] * (x[i] * inv);
}

}  // namespace

std::unique_ptr<Backend> make_cpu_backend(int num_threads) { return std::make_unique<CpuBackend>(num_threads); }

CpuBackend::CpuBackend(int num_threads) : pool_(num_threads) {
  if (const char* env = std::getenv("RILL_CPU_PROFILE"); env && *env && std::string(env) != "0")
    profile_ = std::make_unique<Profile>();
}

CpuBackend::~CpuBackend() {
  if (!profile_ || profile_->ops.empty()) return;
  double total = 0;
  for (const auto& [op, st] : profile_->ops) total += st.seconds;
  std::vector<std::pair<std::string, Profile::Stat>> rows(profile_->ops.begin(), profile_->ops.end());
  std::sort(rows.begin(), rows.end(), [](const auto& a, const auto& b) { return a.second.seconds > b.second.seconds; });
  std::fprintf(stderr, "rill: cpu ops (RILL_CPU_PROFILE), %.3f s in all:\n", total);
  for (const auto& [op, st] : rows)
    std::fprintf(stderr, "  %-28s %8.3f s %5.1f%% %9ld calls %9.1f us/call\n", op.c_str(), st.seconds,
                 100 * st.seconds / total, long(st.calls), 1e6 * st.seconds / double(st.calls));
}

CpuBackend::Profile::Timer::~Timer() {
  if (!p) return;
  Stat& st = p->ops[std::string(op) + (decode ? " (decode)" : " (prompt)")];
  st.seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  ++st.calls;
}

std::string CpuBackend::name() const {
  return "cpu (" + std::to_string(pool_.size()) + " threads, " + (cpu::has_avx2() ? "avx2+fma" : "portable") +
         ")";
}

Tensor CpuBackend::alloc(DType dtype, Shape shape) {
  Tensor t;
  t.dtype = dtype;
  t.shape = shape;
  t.device = Device::CPU;
  t.storage = host_alloc(t.nbytes());
  t.data = t.storage.get();
  return t;
}

Tensor CpuBackend::upload_weight(const Tensor& host) {
  if (is_weight_dtype(host.dtype)) return host;  // used in place (memory-mapped)
  throw Error("cpu backend: weights of dtype " + std::string(dtype_name(host.dtype)) + " are not supported");
}

void CpuBackend::write(const Tensor& dst, const void* src, size_t bytes) {
  expect(bytes <= dst.nbytes(), "write", "more bytes than the tensor holds");
  std::memcpy(dst.data, src, bytes);
}

void CpuBackend::read(void* dst, const Tensor& src, size_t bytes) {
  expect(bytes <= src.nbytes(), "read", "more bytes than the tensor holds");
  std::memcpy(dst, src.data, bytes);
}

void CpuBackend::fill_zero(const Tensor& t) { std::memset(t.data, 0, t.nbytes()); }

void CpuBackend::embedding(const Tensor& out, const Tensor& table, const Tensor& ids) {
  const auto timer = time_op("embedding", ids.numel());
  const int64_t n = ids.numel(), d = table.row_size(), vocab = table.rows();
  expect(out.dtype == DType::F32 && out.rows() == n && out.row_size() == d, "embedding", "bad output shape");
  const int32_t* id = ids.ptr<int32_t>();
  for (int64_t i = 0; i < n; ++i) expect(id[i] >= 0 && id[i] < vocab, "embedding", "token id out of range");
  const size_t esz = dtype_size(table.dtype);
  pool_.parallel_for(n, 16, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i)
      cpu::to_f32(table.dtype, static_cast<const char*>(table.data) + size_t(id[i]) * d * esz,
                  out.ptr<float>() + i * d, d);
  });
}

void CpuBackend::rmsnorm(const Tensor& out, const Tensor& x, const Tensor& weight, float eps) {
  const auto timer = time_op("rmsnorm", x.numel() / weight.numel());
  const int64_t d = weight.numel(), rows = x.numel() / d;
  expect(x.numel() % d == 0 && out.numel() == x.numel(), "rmsnorm", "shape mismatch");
  std::vector<float> tmp;
  const float* w = as_f32(weight, tmp);
  pool_.parallel_for(rows, 64, [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) rmsnorm_row(out.ptr<float>() + r * d, x.ptr<float>() + r * d, w, d, eps);
  });
}

void CpuBackend::add_rmsnorm(const Tensor& residual, const Tensor& out, const Tensor& delta, const Tensor& weight,
                             float eps) {
  const auto timer = time_op("add_rmsnorm", residual.numel() / weight.numel());
  const int64_t d = weight.numel(), rows = residual.numel() / d;
  expect(delta.numel() == residual.numel() && out.numel() == residual.numel(), "add_rmsnorm", "shape mismatch");
  std::vector<float> tmp;
  const float* w = as_f32(weight, tmp);
  pool_.parallel_for(rows, 64, [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) {
      float* res = residual.ptr<float>() + r * d;
      const float* del = delta.ptr<float>() + r * d;
      for (int64_t i = 0; i < d; ++i) res[i] += del[i];
      rmsnorm_row(out.ptr<float>() + r * d, res, w, d, eps);
    }
  });
}

void CpuBackend::linear(const Tensor& out, const Tensor& x, const Tensor& w, const Tensor& bias) {
  const LinearOut one[] = {{out, w, bias}};
  linears(x, one, 1);
}

void CpuBackend::linears(const Tensor& x, const LinearOut* outs, int count) { project(x, outs, count, nullptr); }

void CpuBackend::swiglu(const Tensor& out, const Tensor& x, const Tensor& gate, const Tensor& gate_bias,
                        const Tensor& up, const Tensor& up_bias, const Tensor& gate_buf, const Tensor& up_buf) {
  expect(gate.shape == up.shape, "swiglu", "gate " + gate.shape.str() + " and up " + up.shape.str() + " differ");
  expect(out.numel() == gate_buf.numel(), "swiglu", "output " + out.shape.str() + " does not match");
  const LinearOut both[] = {{gate_buf, gate, gate_bias}, {up_buf, up, up_bias}};
  project(x, both, 2, &out);
}

// Packed weights are carved from 64 MiB huge-page chunks: one matrix is often under the 4 MiB from which a buffer
// of its own gets huge pages (a 768 x 768 bf16 matrix is 1.2 MB), and decode streams all of them. A piece shares
// ownership of its chunk, which is freed when its last piece is.
std::shared_ptr<void> CpuBackend::arena_alloc(size_t bytes) {
  constexpr size_t kChunk = size_t(64) << 20, kAlign = 4096;
  bytes = (bytes + kAlign - 1) / kAlign * kAlign;
  if (bytes > kChunk / 4) return host_alloc(bytes);
  if (!arena_ || arena_used_ + bytes > kChunk) {
    arena_ = host_alloc(kChunk);
    arena_used_ = 0;
  }
  void* p = static_cast<char*>(arena_.get()) + arena_used_;
  arena_used_ += bytes;
  return std::shared_ptr<void>(arena_, p);
}

CpuBackend::Packed CpuBackend::packed(const Tensor& w) {
  std::lock_guard<std::mutex> lock(packed_mu_);
  auto it = packed_weights_.find(w.data);
  if (it != packed_weights_.end() && w.storage && it->second.owner.lock() == w.storage &&
      it->second.m.dtype == w.dtype && it->second.m.rows == w.shape[0] && it->second.m.in == w.shape[1])
    return {it->second.m, it->second.buffer};
  const int64_t rows = w.shape[0], in = w.shape[1];
  std::shared_ptr<void> buffer = arena_alloc(cpu::packed_bytes(w.dtype, rows, in));
  void* p = buffer.get();
  const cpu::PackedMatrix m{w.dtype, rows, in, p};
  pool_.parallel_for(m.panels(), 1, [&](int64_t b, int64_t e) { cpu::pack_panels(w.dtype, w.data, rows, in, b, e, p); });
#if defined(MADV_COLD)
  // The row-major original (usually the checkpoint's memory map) is now read only for embedding rows: let the
  // kernel reclaim its pages first (their contents stay; a page touched again comes back).
  const uintptr_t page = uintptr_t(sysconf(_SC_PAGESIZE)), begin = (uintptr_t(w.data) + page - 1) & ~(page - 1);
  const uintptr_t end = (uintptr_t(w.data) + w.nbytes()) & ~(page - 1);
  if (w.storage && end > begin) madvise(reinterpret_cast<void*>(begin), end - begin, MADV_COLD);
#endif
  if (w.storage) {  // kept while the weight lives; entries of weights gone are dropped here
    std::erase_if(packed_weights_, [](const auto& kv) { return kv.second.owner.expired(); });
    packed_weights_[w.data] = PackedEntry{w.storage, m, buffer};
  }
  return {m, buffer};
}

// The projections of one input, as one parallel pass over their packed weights (cpu::PackedMatrix): one token
// runs the GEMV, split by panels across threads; more run the GEMM, tasks of (panel, tile of 48 tokens).
// With `swiglu`, outs[0] and outs[1] (gate, up) are computed panel by panel together and
// *swiglu = silu(gate) * up is written from the panel's rows while they are in cache.
void CpuBackend::project(const Tensor& x, const LinearOut* outs, int count, const Tensor* swiglu) {
  const int64_t in = outs[0].w.shape.rank == 2 ? outs[0].w.shape[1] : 0, n = in > 0 ? x.numel() / in : 0;
  const auto timer = time_op(swiglu ? "swiglu" : count == 1 ? "linear" : count == 3 ? "linears (qkv)" : "linears", n);
  expect(count >= 1 && count <= 4, "linear", "1 to 4 projections per pass");
  expect(x.dtype == DType::F32 && in > 0 && x.numel() == n * in, "linear",
         "input " + x.shape.str() + " does not match weight " + outs[0].w.shape.str());
  std::vector<float> bias_tmp[4];
  const float* bias[4] = {};
  Packed w[4];
  int64_t first_panel[5] = {0};
  for (int i = 0; i < count; ++i) {
    const LinearOut& p = outs[i];
    const int64_t o = p.w.shape[0];
    expect(p.w.shape.rank == 2 && is_weight_dtype(p.w.dtype) && p.w.shape[1] == in, "linear",
           "weight " + p.w.shape.str() + " must be a 2-D f32/bf16/f16 matrix with " + std::to_string(in) + " columns");
    expect(p.out.dtype == DType::F32 && p.out.numel() == n * o, "linear",
           "output " + p.out.shape.str() + " does not match [" + std::to_string(n) + ", " + std::to_string(o) + "]");
    if (!p.bias.empty()) {
      expect(p.bias.numel() == o, "linear", "bias size does not match the output features");
      bias[i] = as_f32(p.bias, bias_tmp[i]);
    }
    w[i] = packed(p.w);
    // With swiglu, the tasks run over the panels of gate only, and do up's alongside.
    first_panel[i + 1] = first_panel[i] + (swiglu && i == 1 ? 0 : w[i].m.panels());
  }
  const int64_t total = first_panel[count];
  const float* xp = x.ptr<float>();
  const int last = swiglu ? 1 : 0;  // projections a task computes beyond its own
  // Panel p of projection i for tokens [t0, t1): compute, add the bias, finish the SwiGLU.
  auto run = [&](int i, int64_t p, int64_t t0, int64_t t1) {
    const int64_t r0 = p * cpu::kPanelRows, r1 = std::min(r0 + cpu::kPanelRows, w[i].m.rows);
    for (int j = i; j <= i + last; ++j) {
      const int64_t o = w[j].m.rows;
      float* op = outs[j].out.ptr<float>();
      if (t1 - t0 == 1) cpu::gemv_packed(w[j].m, xp + t0 * in, p, p + 1, op + t0 * o);
      else cpu::gemm_packed(w[j].m, p, xp + t0 * in, in, t1 - t0, op + t0 * o, o);
      if (bias[j])
        for (int64_t t = t0; t < t1; ++t)
          for (int64_t r = r0; r < r1; ++r) op[t * o + r] += bias[j][r];
    }
    if (!swiglu) return;
    const int64_t f = w[0].m.rows;
    for (int64_t t = t0; t < t1; ++t) {
      const float* g = outs[0].out.ptr<float>() + t * f;
      const float* u = outs[1].out.ptr<float>() + t * f;
      float* o = swiglu->ptr<float>() + t * f;
      for (int64_t r = r0; r < r1; ++r) o[r] = silu_times(g[r], u[r]);
    }
  };
  auto locate = [&](int64_t panel) {
    int i = 0;
    while (panel >= first_panel[i + 1]) ++i;
    return i;
  };
  // Tasks: (panel, tile of tokens), tiles innermost so that a thread's consecutive tasks reuse the panel in
  // cache. One token: one tile, and each thread gets a contiguous run of panels to stream.
  constexpr int64_t kTileTokens = 48;
  const int64_t tiles = (n + kTileTokens - 1) / kTileTokens;
  const int64_t grain = n == 1 ? std::max<int64_t>(1, (total + pool_.size() - 1) / pool_.size()) : 1;
  pool_.parallel_for(total * tiles, grain, [&](int64_t b, int64_t e) {
    for (int64_t item = b; item < e; ++item) {
      const int64_t panel = item / tiles, tile = item % tiles;
      const int i = locate(panel);
      run(i, panel - first_panel[i], tile * kTileTokens, std::min(n, (tile + 1) * kTileTokens));
    }
  });
}

namespace {
// cos and sin of token t's angles (pos * inv_freq in double), times attention_factor.
void rope_angles(const Tensor& inv_freq, const int32_t* pos, const int32_t* row, int64_t t, int64_t half,
                 float attention_factor, float* c, float* s) {
  const double* f = inv_freq.ptr<double>() + (row ? row[t] : 0) * half;
  for (int64_t i = 0; i < half; ++i) {
    const double angle = double(pos[t]) * f[i];
    c[i] = float(std::cos(angle) * attention_factor);
    s[i] = float(std::sin(angle) * attention_factor);
  }
}

// Rotate-half RoPE of every head of one token's row.
void rope_row(float* xt, int64_t width, int64_t head_dim, const float* c, const float* s) {
  const int64_t half = head_dim / 2;
  for (int64_t h = 0; h < width; h += head_dim)
    for (int64_t i = 0; i < half; ++i) {
      const float x1 = xt[h + i], x2 = xt[h + i + half];
      xt[h + i] = x1 * c[i] - x2 * s[i];
      xt[h + i + half] = x2 * c[i] + x1 * s[i];
    }
}
}  // namespace

void CpuBackend::rope(const Tensor& x, int head_dim, const Tensor& positions, const Tensor& inv_freq,
                      const Tensor& rope_row_ids, float attention_factor) {
  const auto timer = time_op("rope", positions.numel());
  const int64_t n = positions.numel(), half = head_dim / 2, width = x.row_size();
  expect(x.rows() == n && width % head_dim == 0, "rope", "x must be [tokens, heads * head_dim]");
  expect(inv_freq.dtype == DType::F64 && inv_freq.row_size() == half, "rope", "inv_freq must be f64 [rows, head_dim/2]");
  const int32_t* pos = positions.ptr<int32_t>();
  const int32_t* row = rope_row_ids.empty() ? nullptr : rope_row_ids.ptr<int32_t>();
  pool_.parallel_for(n, 8, [&](int64_t b, int64_t e) {
    std::vector<float> c(static_cast<size_t>(half)), s(static_cast<size_t>(half));
    for (int64_t t = b; t < e; ++t) {
      rope_angles(inv_freq, pos, row, t, half, attention_factor, c.data(), s.data());
      rope_row(x.ptr<float>() + t * width, width, head_dim, c.data(), s.data());
    }
  });
}

// One pass per token: the angles once for q and k, then k and v into their cache slot.
void CpuBackend::rope_kv_write(const Tensor& q, const Tensor& k, const Tensor& v, const KvLayer& kv,
                               const Tensor& slot_mapping, int head_dim, const Tensor& positions,
                               const Tensor& inv_freq, const Tensor& rope_row_ids, float attention_factor) {
  const auto timer = time_op("rope_kv_write", positions.numel());
  const int64_t n = positions.numel(), half = head_dim / 2, qw = q.row_size();
  const int64_t width = kv.k.numel() / (kv.k.shape[0] * kv.k.shape[1]), slots = kv.k.shape[0] * kv.k.shape[1];
  expect(q.rows() == n && qw % head_dim == 0 && width % head_dim == 0, "rope_kv_write",
         "q must be [tokens, heads * head_dim]");
  expect(k.numel() == n * width && v.numel() == n * width && slot_mapping.numel() == n, "rope_kv_write",
         "k/v width does not match the cache");
  expect(inv_freq.dtype == DType::F64 && inv_freq.row_size() == half, "rope_kv_write",
         "inv_freq must be f64 [rows, head_dim/2]");
  const int32_t* pos = positions.ptr<int32_t>();
  const int32_t* row = rope_row_ids.empty() ? nullptr : rope_row_ids.ptr<int32_t>();
  const int32_t* slot = slot_mapping.ptr<int32_t>();
  for (int64_t t = 0; t < n; ++t) expect(slot[t] >= 0 && slot[t] < slots, "rope_kv_write", "slot out of range");
  pool_.parallel_for(n, 8, [&](int64_t b, int64_t e) {
    std::vector<float> c(static_cast<size_t>(half)), s(static_cast<size_t>(half));
    for (int64_t t = b; t < e; ++t) {
      rope_angles(inv_freq, pos, row, t, half, attention_factor, c.data(), s.data());
      rope_row(q.ptr<float>() + t * qw, qw, head_dim, c.data(), s.data());
      float* kt = k.ptr<float>() + t * width;
      rope_row(kt, width, head_dim, c.data(), s.data());
      std::memcpy(kv.k.ptr<float>() + slot[t] * width, kt, size_t(width) * 4);
      std::memcpy(kv.v.ptr<float>() + slot[t] * width, v.ptr<float>() + t * width, size_t(width) * 4);
    }
  });
}

void CpuBackend::kv_write(const KvLayer& kv, const Tensor& k, const Tensor& v, const Tensor& slot_mapping) {
  const auto timer = time_op("kv_write", slot_mapping.numel());
  const int64_t n = slot_mapping.numel(), width = kv.k.numel() / (kv.k.shape[0] * kv.k.shape[1]);
  const int64_t slots = kv.k.shape[0] * kv.k.shape[1];
  expect(k.numel() == n * width && v.numel() == n * width, "kv_write", "k/v width does not match the cache");
  const int32_t* slot = slot_mapping.ptr<int32_t>();
  for (int64_t t = 0; t < n; ++t) {
    expect(slot[t] >= 0 && slot[t] < slots, "kv_write", "slot out of range");
    std::memcpy(kv.k.ptr<float>() + slot[t] * width, k.ptr<float>() + t * width, size_t(width) * 4);
    std::memcpy(kv.v.ptr<float>() + slot[t] * width, v.ptr<float>() + t * width, size_t(width) * 4);
  }
}

void CpuBackend::attention(const Tensor& out, const Tensor& q, const KvLayer& kv, const AttentionBatch& batch,
                           int num_heads, float scale, int sliding_window, const Tensor& q_sink) {
  const auto timer = time_op("attention", batch.num_tokens);
  const int64_t n = batch.num_tokens, bs = kv.k.shape[1], kv_heads = kv.k.shape[2], hd = kv.k.shape[3];
  expect(q.numel() == n * num_heads * hd && out.numel() == q.numel(), "attention", "q/out shape mismatch");
  expect(num_heads % kv_heads == 0, "attention", "heads not a multiple of kv heads");
  const int32_t* q_start = batch.q_start.ptr<int32_t>();
  const int32_t* ctx_len = batch.ctx_len.ptr<int32_t>();
  const int32_t* tables = batch.block_tables.ptr<int32_t>();
  const int32_t* token_seq = batch.token_seq.ptr<int32_t>();
  const int32_t* sinks = batch.sinks.empty() ? nullptr : batch.sinks.ptr<int32_t>();
  const int32_t* hole_end = batch.hole_end.empty() ? nullptr : batch.hole_end.ptr<int32_t>();
  expect(!sinks || (hole_end && q_sink.numel() == q.numel()), "attention", "sinks need hole_end and q_sink");
  const int64_t group = num_heads / kv_heads, kv_width = kv_heads * hd;
  const float* kc = kv.k.ptr<float>();
  const float* vc = kv.v.ptr<float>();
  pool_.parallel_for(n * num_heads, 1, [&](int64_t b, int64_t e) {
    thread_local std::vector<float> scores;
    thread_local std::vector<float> acc;
    acc.resize(size_t(hd));
    for (int64_t item = b; item < e; ++item) {
      const int64_t t = item / num_heads, h = item % num_heads, kvh = h / group;
      const int s = token_seq[t];
      const int64_t q_len = q_start[s + 1] - q_start[s];
      const int64_t self = ctx_len[s] - q_len + (t - q_start[s]);  // this token's own cache index
      const int64_t lo = sliding_window > 0 ? std::max<int64_t>(0, self - sliding_window + 1) : 0;
      const int32_t* table = tables + int64_t(s) * batch.max_blocks_per_seq;
      const float* qv = q.ptr<float>() + t * num_heads * hd + h * hd;
      // Sink window: entries [0, ns) are sinks, scored with the sink query; [ns, hole) are skipped.
      const int64_t ns = sinks ? sinks[s] : 0, hole = sinks ? std::max<int64_t>(ns, hole_end[t]) : 0;
      const float* qs = ns > 0 ? q_sink.ptr<float>() + t * num_heads * hd + h * hd : qv;
      // The keys attended: [lo, ns) with the sink query, then [max(lo, hole), self] (all of [lo, self] without
      // sinks), each cut at block edges into runs of consecutive slots; `f(j, count, offset)` per run.
      auto runs = [&](auto&& f) {
        const int64_t ranges[2][2] = {{lo, std::min(ns, self + 1)}, {std::max(lo, hole), self + 1}};
        int64_t offset = 0;
        for (const auto& r : ranges)
          for (int64_t j = r[0]; j < r[1];) {
            const int64_t count = std::min(r[1], (j / bs + 1) * bs) - j;
            f(j, count, offset);
            j += count;
            offset += count;
          }
        return offset;
      };
      const auto slot = [&](int64_t j) { return (int64_t(table[j / bs]) * bs + j % bs) * kv_width + kvh * hd; };
      scores.resize(size_t(self - lo + 1));
      const int64_t m = runs([&](int64_t j, int64_t count, int64_t off) {
        cpu::dot_rows(j < ns ? qs : qv, kc + slot(j), kv_width, count, hd, scale, scores.data() + off);
      });
      const float mx = *std::max_element(scores.begin(), scores.begin() + m);
      const float sum = cpu::exp_sum(scores.data(), m, mx);
      std::fill(acc.begin(), acc.end(), 0.f);
      runs([&](int64_t j, int64_t count, int64_t off) {
        cpu::weighted_sum(scores.data() + off, vc + slot(j), kv_width, count, hd, acc.data());
      });
      float* o = out.ptr<float>() + t * num_heads * hd + h * hd;
      const float inv = 1.f / sum;
      for (int64_t i = 0; i < hd; ++i) o[i] = acc[size_t(i)] * inv;
    }
  });
}

void CpuBackend::silu_mul(const Tensor& out, const Tensor& gate, const Tensor& up) {
  const auto timer = time_op("silu_mul", gate.rows());
  const int64_t n = out.numel();
  expect(gate.numel() == n && up.numel() == n, "silu_mul", "shape mismatch");
  pool_.parallel_for(n, 1 << 14, [&](int64_t b, int64_t e) {
    const float* g = gate.ptr<float>();
    const float* u = up.ptr<float>();
    float* o = out.ptr<float>();
    for (int64_t i = b; i < e; ++i) o[i] = silu_times(g[i], u[i]);
  });
}

void CpuBackend::moe_route(const Tensor& ids, const Tensor& weights, const Tensor& router_logits, int k,
                           bool normalize) {
  const int64_t n = router_logits.rows(), E = router_logits.row_size();
  expect(ids.numel() == n * k && weights.numel() == n * k, "moe_route", "ids/weights must be [n, k]");
  std::vector<float> p(static_cast<size_t>(E));
  std::vector<int> order(static_cast<size_t>(E));
  for (int64_t t = 0; t < n; ++t) {
    const float* l = router_logits.ptr<float>() + t * E;
    const float mx = *std::max_element(l, l + E);
    double sum = 0.0;
    for (int64_t e = 0; e < E; ++e) sum += (p[size_t(e)] = std::exp(l[e] - mx));
    for (float& v : p) v = float(v / sum);
    std::iota(order.begin(), order.end(), 0);
    std::partial_sort(order.begin(), order.begin() + k, order.end(),
                      [&](int a, int b) { return p[size_t(a)] > p[size_t(b)] || (p[size_t(a)] == p[size_t(b)] && a < b); });
    double top = 0.0;
    for (int j = 0; j < k; ++j) top += p[size_t(order[size_t(j)])];
    for (int j = 0; j < k; ++j) {
      ids.ptr<int32_t>()[t * k + j] = order[size_t(j)];
      weights.ptr<float>()[t * k + j] = normalize ? float(p[size_t(order[size_t(j)])] / top) : p[size_t(order[size_t(j)])];
    }
  }
}

void CpuBackend::moe_experts(const Tensor& out, const Tensor& x, const Tensor& ids, const Tensor& weights,
                             const std::vector<ExpertWeights>& experts) {
  const auto timer = time_op("moe_experts", x.rows());
  const int64_t n = x.rows(), d = x.row_size(), k = ids.row_size();
  expect(out.numel() == n * d, "moe_experts", "output shape mismatch");
  fill_zero(out);
  // Group tokens by expert so each expert's weights are streamed once per step, through the same
  // multithreaded linear as dense layers.
  std::vector<std::vector<std::pair<int64_t, float>>> routed(experts.size());
  for (int64_t t = 0; t < n; ++t)
    for (int64_t j = 0; j < k; ++j) {
      const int e = ids.ptr<int32_t>()[t * k + j];
      expect(e >= 0 && size_t(e) < experts.size(), "moe_experts", "expert id out of range");
      routed[size_t(e)].push_back({t, weights.ptr<float>()[t * k + j]});
    }
  for (size_t e = 0; e < experts.size(); ++e) {
    const auto& tokens = routed[e];
    if (tokens.empty()) continue;
    const int64_t m = int64_t(tokens.size()), f = experts[e].gate.shape[0];
    Tensor xe = alloc(DType::F32, {m, d}), g = alloc(DType::F32, {m, f}), u = alloc(DType::F32, {m, f});
    Tensor ye = alloc(DType::F32, {m, d});
    for (int64_t i = 0; i < m; ++i)
      std::memcpy(xe.ptr<float>() + i * d, x.ptr<float>() + tokens[size_t(i)].first * d, size_t(d) * 4);
    linear(g, xe, experts[e].gate, Tensor{});
    linear(u, xe, experts[e].up, Tensor{});
    silu_mul(g, g, u);
    linear(ye, g, experts[e].down, Tensor{});
    for (int64_t i = 0; i < m; ++i)
      cpu::axpy_f32(tokens[size_t(i)].second, ye.ptr<float>() + i * d, out.ptr<float>() + tokens[size_t(i)].first * d, d);
  }
}

void CpuBackend::gather_rows(const Tensor& out, const Tensor& x, const Tensor& rows) {
  const int64_t m = rows.numel(), w = x.row_size();
  expect(out.numel() == m * w, "gather_rows", "output shape mismatch");
  for (int64_t i = 0; i < m; ++i) {
    const int32_t r = rows.ptr<int32_t>()[i];
    expect(r >= 0 && r < x.rows(), "gather_rows", "row out of range");
    std::memcpy(out.ptr<float>() + i * w, x.ptr<float>() + int64_t(r) * w, size_t(w) * 4);
  }
}

void CpuBackend::argmax_rows(const Tensor& ids, const Tensor& logits) {
  const auto timer = time_op("argmax_rows", logits.rows());
  const int64_t m = logits.rows(), vocab = logits.row_size();
  expect(ids.numel() == m && logits.dtype == DType::F32, "argmax_rows", "ids must be [rows], logits f32");
  for (int64_t i = 0; i < m; ++i) {
    const float* row = logits.ptr<float>() + i * vocab;
    ids.ptr<int32_t>()[i] = int32_t(std::max_element(row, row + vocab) - row);  // first maximum on ties
  }
}

void CpuBackend::mask_logits(const Tensor& logits, const Tensor& mask) {
  const int64_t m = logits.rows(), vocab = logits.row_size(), words = (vocab + 31) / 32;
  expect(logits.dtype == DType::F32 && mask.dtype == DType::I32 && mask.numel() == m * words, "mask_logits",
         "logits must be f32 [rows, vocab] and mask i32 [rows * ceil(vocab / 32)]");
  for (int64_t i = 0; i < m; ++i) {
    float* row = logits.ptr<float>() + i * vocab;
    const auto* bits = reinterpret_cast<const uint32_t*>(mask.ptr<int32_t>() + i * words);
    for (int64_t t = 0; t < vocab; ++t)
      if (!((bits[t >> 5] >> (t & 31)) & 1)) row[t] = -std::numeric_limits<float>::infinity();
  }
}

void CpuBackend::sample_rows(const Tensor& ids, const Tensor& logits, const Tensor& rows, const Tensor& penalties) {
  const auto timer = time_op("sample_rows", logits.rows());
  const int64_t m = logits.rows(), vocab = logits.row_size();
  expect(ids.numel() == m && logits.dtype == DType::F32, "sample_rows", "ids must be [rows], logits f32");
  expect(rows.nbytes() == size_t(m) * sizeof(SampleRow), "sample_rows", "rows must hold one SampleRow per logits row");
  const auto* pen = penalties.empty() ? nullptr : reinterpret_cast<const PenaltyEntry*>(penalties.data);
  const size_t entries = penalties.nbytes() / sizeof(PenaltyEntry);
  for (int64_t i = 0; i < m; ++i) {
    SampleRow r;
    std::memcpy(&r, static_cast<const char*>(rows.data) + size_t(i) * sizeof(SampleRow), sizeof(SampleRow));
    expect(r.penalty_begin >= 0 && r.penalty_begin <= r.penalty_end && size_t(r.penalty_end) <= entries,
           "sample_rows", "a row's penalty range is outside the penalty list");
    ids.ptr<int32_t>()[i] = sample_row(logits.ptr<float>() + i * vocab, int(vocab), r, pen);
  }
}

void CpuBackend::top_logprobs(const Tensor& out, const Tensor& logits, const Tensor& ids, int k) {
  const auto timer = time_op("top_logprobs", logits.rows());
  const int64_t m = logits.rows(), vocab = logits.row_size();
  expect(logits.dtype == DType::F32 && ids.dtype == DType::I32 && ids.numel() == m, "top_logprobs",
         "logits must be f32 [rows, vocab] and ids i32 [rows]");
  expect(k >= 0 && k <= kMaxTopLogprobs, "top_logprobs", "k must be in [0, " + std::to_string(kMaxTopLogprobs) + "]");
  expect(out.dtype == DType::F32 && out.numel() == m * (1 + 2 * k), "top_logprobs", "out must be f32 [rows, 1 + 2k]");
  for (int64_t i = 0; i < m; ++i)
    top_logprobs_row(logits.ptr<float>() + i * vocab, int(vocab), ids.ptr<int32_t>()[i], k,
                     out.ptr<float>() + i * (1 + 2 * k));
}

}  // namespace rill
