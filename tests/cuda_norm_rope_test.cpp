// The CUDA backend's norms, RoPE and KV writes against the CPU's, fused and alone.
#include "cuda_test_util.h"

namespace rill::test {
namespace {

TEST_F(CudaOps, NormRopeActivationsMatchCpu) {
  const int64_t n = 37, d = 256, hd = 64;
  const auto x = random_bf16(size_t(n * d), 5), delta = random_bf16(size_t(n * d), 6);
  HostWeight w(random_bf16(size_t(d), 7), {d});
  const Tensor wc = cpu_->upload_weight(w.host), wg = gpu_->upload_weight(w.host);
  // rmsnorm from the f32 residual, then add_rmsnorm.
  Tensor rc = put(*cpu_, x, {n, d}), rg = put(*gpu_, x, {n, d}, DType::F32);
  Tensor hc = cpu_->alloc(DType::F32, {n, d}), hg = gpu_->alloc(DType::BF16, {n, d});
  cpu_->rmsnorm(hc, rc, wc, 1e-5f);
  gpu_->rmsnorm(hg, rg, wg, 1e-5f);
  auto a = get(*cpu_, hc), b = get(*gpu_, hg);
  EXPECT_LE(rel_max_diff(b.data(), a.data(), a.size()), 8e-3);
  cpu_->add_rmsnorm(rc, hc, put(*cpu_, delta, {n, d}), wc, 1e-5f);
  gpu_->add_rmsnorm(rg, hg, put(*gpu_, delta, {n, d}), wg, 1e-5f);
  a = get(*cpu_, rc), b = get(*gpu_, rg);
  EXPECT_LE(rel_max_diff(b.data(), a.data(), a.size()), 1e-6) << "residual";
  a = get(*cpu_, hc), b = get(*gpu_, hg);
  EXPECT_LE(rel_max_diff(b.data(), a.data(), a.size()), 8e-3) << "normed";
  // RoPE at positions up to the millions, with per-token frequency rows (dynamic NTK).
  std::vector<int32_t> pos(n), row(n);
  for (int64_t i = 0; i < n; ++i) pos[size_t(i)] = int32_t(i * 40009 % 3000017), row[size_t(i)] = int32_t(i % 2);
  std::vector<double> inv(static_cast<size_t>(hd));
  for (int64_t i = 0; i < hd; ++i) inv[size_t(i)] = std::pow(10000.0, -2.0 * double(i % (hd / 2)) / double(hd)) * (i < hd / 2 ? 1.0 : 0.5);
  auto rope_on = [&](Backend& b, Tensor t) {
    Tensor f = b.alloc(DType::F64, {2, hd / 2});
    b.write(f, inv.data(), inv.size() * 8);
    b.rope(t, int(hd), put_i32(b, pos), f, put_i32(b, row), 0.9f);
    return get(b, t);
  };
  a = rope_on(*cpu_, put(*cpu_, x, {n, d}));
  b = rope_on(*gpu_, put(*gpu_, x, {n, d}, DType::F32));
  EXPECT_LE(rel_max_diff(b.data(), a.data(), a.size()), 1e-5) << "rope";
  // silu * up, gather, embedding.
  Tensor sc = put(*cpu_, x, {n, d}), sg = put(*gpu_, x, {n, d});
  cpu_->silu_mul(sc, sc, put(*cpu_, delta, {n, d}));
  gpu_->silu_mul(sg, sg, put(*gpu_, delta, {n, d}));
  a = get(*cpu_, sc), b = get(*gpu_, sg);
  EXPECT_LE(rel_max_diff(b.data(), a.data(), a.size()), 8e-3) << "silu_mul";
  const std::vector<int32_t> rows = {3, 0, 36, 3};
  Tensor gc = cpu_->alloc(DType::F32, {4, d}), gg = gpu_->alloc(DType::BF16, {4, d});
  cpu_->gather_rows(gc, put(*cpu_, x, {n, d}), put_i32(*cpu_, rows));
  gpu_->gather_rows(gg, put(*gpu_, x, {n, d}), put_i32(*gpu_, rows));
  EXPECT_EQ(get(*cpu_, gc), get(*gpu_, gg)) << "gather_rows";
  HostWeight table(x, {n, d});
  Tensor ec = cpu_->alloc(DType::F32, {4, d}), eg = gpu_->alloc(DType::F32, {4, d});
  cpu_->embedding(ec, cpu_->upload_weight(table.host), put_i32(*cpu_, rows));
  gpu_->embedding(eg, gpu_->upload_weight(table.host), put_i32(*gpu_, rows));
  EXPECT_EQ(get(*cpu_, ec), get(*gpu_, eg)) << "embedding";
}

// rmsnorm and add_rmsnorm at widths that take each shape of the register-held kernel (4-entry chunks: one,
// two or four per thread) and the fallback loop (a width not a multiple of 4), with bf16 and f32 outputs, and
// with f32 weights in float32 mode.
TEST_F(CudaOps, NormsMatchCpuAtEveryWidth) {
  auto gpu32 = make_backend("cuda", 0, "float32");
  const int64_t n = 5;
  for (int64_t d : {64, 70, 896, 3584, 4096})
    for (Backend* g : {gpu_.get(), gpu32.get()})
      for (DType out_t : {DType::BF16, DType::F32}) {
        if (g == gpu32.get() && out_t == DType::BF16) continue;
        const auto x = random_bf16(size_t(n * d), 31), delta = random_bf16(size_t(n * d), 32);
        HostWeight w(random_bf16(size_t(d), 33), {d});
        const Tensor wc = cpu_->upload_weight(w.host), wg = g->upload_weight(w.host);
        Tensor rc = put(*cpu_, x, {n, d}), rg = put(*g, x, {n, d}, DType::F32);
        Tensor hc = cpu_->alloc(DType::F32, {n, d}), hg = g->alloc(out_t, {n, d});
        const double tol = out_t == DType::F32 ? 1e-5 : 8e-3;
        const std::string what = "d " + std::to_string(d) + (g == gpu32.get() ? " float32" : "") + " out " +
                                 std::string(dtype_name(out_t));
        cpu_->rmsnorm(hc, rc, wc, 1e-5f);
        g->rmsnorm(hg, rg, wg, 1e-5f);
        auto a = get(*cpu_, hc), b = get(*g, hg);
        EXPECT_LE(rel_max_diff(b.data(), a.data(), a.size()), tol) << "rmsnorm " << what;
        cpu_->add_rmsnorm(rc, hc, put(*cpu_, delta, {n, d}), wc, 1e-5f);
        g->add_rmsnorm(rg, hg, put(*g, delta, {n, d}, out_t), wg, 1e-5f);
        a = get(*cpu_, rc), b = get(*g, rg);
        EXPECT_LE(rel_max_diff(b.data(), a.data(), a.size()), 1e-6) << "residual " << what;
        a = get(*cpu_, hc), b = get(*g, hg);
        EXPECT_LE(rel_max_diff(b.data(), a.data(), a.size()), tol) << "add_rmsnorm " << what;
      }
}

TEST_F(CudaOps, KvWriteStoresSlots) {
  const int64_t blocks = 4, bs = 8, kvh = 2, hd = 32, width = kvh * hd;
  KvLayer kv;
  kv.k = gpu_->alloc(DType::BF16, {blocks, bs, kvh, hd});
  kv.v = gpu_->alloc(DType::BF16, {blocks, bs, kvh, hd});
  gpu_->fill_zero(kv.k);
  gpu_->fill_zero(kv.v);
  const auto k = random_bf16(size_t(3 * width), 8), v = random_bf16(size_t(3 * width), 9);
  const std::vector<int32_t> slots = {5, 31, 12};
  gpu_->kv_write(kv, put(*gpu_, k, {3, width}), put(*gpu_, v, {3, width}), put_i32(*gpu_, slots));
  const auto kc = get(*gpu_, kv.k), vc = get(*gpu_, kv.v);
  for (size_t t = 0; t < 3; ++t)
    for (int64_t j = 0; j < width; ++j) {
      EXPECT_EQ(kc[size_t(slots[t] * width + j)], k[t * size_t(width) + size_t(j)]);
      EXPECT_EQ(vc[size_t(slots[t] * width + j)], v[t * size_t(width) + size_t(j)]);
    }
  EXPECT_EQ(kc[0], 0.f);
}

// The fused RoPE + KV write gives, to the bit, what rope(q), rope(k) and kv_write give one after another, and
// writes nothing for a negative slot.
TEST_F(CudaOps, RopeKvWriteEqualsItsParts) {
  const int64_t n = 5, H = 6, KV = 2, hd = 64, blocks = 4, bs = 4;
  const auto q = random_bf16(size_t(n * H * hd), 13), k = random_bf16(size_t(n * KV * hd), 14);
  const auto v = random_bf16(size_t(n * KV * hd), 15);
  const std::vector<int32_t> pos = {0, 7, 123456, 3, 2000000}, slots = {4, -1, 15, 0, 9};
  auto run = [&](bool fused) {
    const KvLayer kv = zeroed_kv(*gpu_, blocks, bs, KV, hd);
    const Tensor f = rope_frequencies(*gpu_, hd, 10000.0);
    Tensor qg = put(*gpu_, q, {n, H * hd}), kg = put(*gpu_, k, {n, KV * hd}), vg = put(*gpu_, v, {n, KV * hd});
    const Tensor p = put_i32(*gpu_, pos), sl = put_i32(*gpu_, slots);
    if (fused) {
      gpu_->rope_kv_write(qg, kg, vg, kv, sl, int(hd), p, f, Tensor{}, 0.9f);
    } else {
      gpu_->rope(qg, int(hd), p, f, Tensor{}, 0.9f);
      gpu_->rope(kg, int(hd), p, f, Tensor{}, 0.9f);
      gpu_->kv_write(kv, kg, vg, sl);
    }
    return std::vector<std::vector<float>>{get(*gpu_, qg), get(*gpu_, kg), get(*gpu_, kv.k), get(*gpu_, kv.v)};
  };
  const auto parts = run(false), fused = run(true);
  const char* what[] = {"q", "k", "k cache", "v cache"};
  for (size_t i = 0; i < parts.size(); ++i) EXPECT_EQ(parts[i], fused[i]) << what[i];
}

}  // namespace
}  // namespace rill::test
