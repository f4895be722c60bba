// The CUDA backend's products against the CPU's: cuBLASLt GEMMs, the decode matrix-vector and 9-64-row
// tensor-core kernels (row and batch invariance included), the fused q/k/v + RoPE + KV write, SwiGLU, SiLU·mul
// and MoE experts.
#include "cuda_test_util.h"

namespace rill::test {
namespace {

TEST_F(CudaOps, LinearMatchesCpu) {
  const int64_t in = 256, o = 200;
  HostWeight w(random_bf16(size_t(in * o), 1, 0.05f), {o, in});
  HostWeight bias(random_bf16(size_t(o), 2), {o});
  const Tensor wc = cpu_->upload_weight(w.host), wg = gpu_->upload_weight(w.host);
  const Tensor bc = cpu_->upload_weight(bias.host), bg = gpu_->upload_weight(bias.host);
  for (int64_t n : {1, 7, 8, 9, 64, 300})
    for (DType out_t : {DType::F32, DType::BF16}) {
      const auto x = random_bf16(size_t(n * in), uint32_t(n));
      Tensor yc = cpu_->alloc(DType::F32, {n, o}), yg = gpu_->alloc(out_t, {n, o});
      cpu_->linear(yc, put(*cpu_, x, {n, in}), wc, bc);
      gpu_->linear(yg, put(*gpu_, x, {n, in}), wg, bg);
      const auto a = get(*cpu_, yc), b = get(*gpu_, yg);
      EXPECT_LE(rel_max_diff(b.data(), a.data(), a.size()), out_t == DType::F32 ? 1e-5 : 8e-3)
          << "n " << n << " out " << dtype_name(out_t);
    }
}

// Up to 8 rows (decode) take the matrix-vector kernel: each row's result is the same whatever the other rows,
// and shapes it does not take (k not a multiple of 8) still go through cuBLASLt.
TEST_F(CudaOps, FewRowLinearIsRowInvariant) {
  for (int64_t in : {4096, 1000, 260}) {
    const int64_t o = 72;
    HostWeight w(random_bf16(size_t(in * o), 11, 0.05f), {o, in});
    const Tensor wc = cpu_->upload_weight(w.host), wg = gpu_->upload_weight(w.host);
    const auto x = random_bf16(size_t(8 * in), 12);
    Tensor full = gpu_->alloc(DType::F32, {8, o});
    gpu_->linear(full, put(*gpu_, x, {8, in}), wg, Tensor{});
    const auto all = get(*gpu_, full);
    Tensor ref = cpu_->alloc(DType::F32, {8, o});
    cpu_->linear(ref, put(*cpu_, x, {8, in}), wc, Tensor{});
    const auto want = get(*cpu_, ref);
    EXPECT_LE(rel_max_diff(all.data(), want.data(), want.size()), 1e-5) << "k " << in;
    for (int64_t n = 1; n < 8; ++n) {
      Tensor part = gpu_->alloc(DType::F32, {n, o});
      gpu_->linear(part, put(*gpu_, std::vector<float>(x.begin(), x.begin() + n * in), {n, in}), wg, Tensor{});
      const auto got = get(*gpu_, part);
      if (in % 8 == 0) {
        EXPECT_TRUE(std::equal(got.begin(), got.end(), all.begin())) << "k " << in << ", " << n << " rows";
      }
    }
  }
}

// Projections of one input (q, k, v) in one pass give what three linear() calls give, biases included
// (exactly up to 8 rows, where both take the matrix-vector kernel).
TEST_F(CudaOps, LinearsEqualLinearOneByOne) {
  const int64_t in = 512;
  const int64_t rows[3] = {256, 64, 64};
  std::vector<HostWeight> w, b;
  for (int i = 0; i < 3; ++i) {
    w.emplace_back(random_bf16(size_t(rows[i] * in), uint32_t(20 + i), 0.05f), Shape{rows[i], in});
    b.emplace_back(random_bf16(size_t(rows[i]), uint32_t(30 + i)), Shape{rows[i]});
  }
  for (int64_t n : {1, 5, 8, 12}) {
    const Tensor x = put(*gpu_, random_bf16(size_t(n * in), uint32_t(n)), {n, in});
    Backend::LinearOut outs[3];
    std::vector<Tensor> one(3);
    for (int i = 0; i < 3; ++i) {
      const Tensor wg = gpu_->upload_weight(w[size_t(i)].host), bg = gpu_->upload_weight(b[size_t(i)].host);
      outs[i] = {gpu_->alloc(DType::BF16, {n, rows[i]}), wg, i == 1 ? Tensor{} : bg};
      one[size_t(i)] = gpu_->alloc(DType::BF16, {n, rows[i]});
      gpu_->linear(one[size_t(i)], x, outs[i].w, outs[i].bias);
    }
    gpu_->linears(x, outs, 3);
    for (int i = 0; i < 3; ++i) {
      const auto grouped = get(*gpu_, outs[i].out), alone = get(*gpu_, one[size_t(i)]);
      if (n <= 8) {
        EXPECT_EQ(grouped, alone) << n << " rows, output " << i;  // the same matrix-vector kernel
      } else {
        // 9+ rows: the group takes gemm_rows.cu's kernel and a single matrix cuBLASLt; they round alike only
        // up to the order of their sums.
        EXPECT_LE(rel_max_diff(grouped.data(), alone.data(), alone.size()), 8e-3)
            << n << " rows, output " << i;
      }
    }
  }
}

// The one-pass SwiGLU (up to 8 rows) against the CPU's two products and silu·mul; more rows take those parts.
TEST_F(CudaOps, SwigluMatchesCpu) {
  const int64_t in = 512, f = 200;
  HostWeight gate(random_bf16(size_t(f * in), 40, 0.05f), {f, in}), up(random_bf16(size_t(f * in), 41, 0.05f), {f, in});
  const Tensor gc = cpu_->upload_weight(gate.host), uc = cpu_->upload_weight(up.host);
  const Tensor gg = gpu_->upload_weight(gate.host), ug = gpu_->upload_weight(up.host);
  for (int64_t n : {1, 3, 8, 12}) {
    const auto x = random_bf16(size_t(n * in), uint32_t(50 + n));
    Tensor oc = cpu_->alloc(DType::F32, {n, f}), uc_buf = cpu_->alloc(DType::F32, {n, f});
    cpu_->swiglu(oc, put(*cpu_, x, {n, in}), gc, Tensor{}, uc, Tensor{}, oc, uc_buf);
    Tensor og = gpu_->alloc(DType::BF16, {n, f}), ug_buf = gpu_->alloc(DType::BF16, {n, f});
    gpu_->swiglu(og, put(*gpu_, x, {n, in}), gg, Tensor{}, ug, Tensor{}, og, ug_buf);
    const auto a = get(*cpu_, oc), b = get(*gpu_, og);
    EXPECT_LE(rel_max_diff(b.data(), a.data(), a.size()), 2e-2) << n << " rows";
  }
}

#ifdef RILL_HAVE_CUDA
// silu(gate) * up: 16 bytes per load where all three pointers are 16-byte aligned, else one entry at a time;
// a count that is not a multiple of the pack leaves a tail. Each against the host, in bf16 and f32.
TEST_F(CudaOps, SiluMulPackedAndUnaligned) {
  auto st = static_cast<cudaStream_t>(cuda_stream(*gpu_));
  const int64_t n = 1003;
  const auto g = random_bf16(size_t(n + 1), 80, 2.f), u = random_bf16(size_t(n + 1), 81);
  for (DType t : {DType::BF16, DType::F32})
    for (int64_t off : {0, 1}) {  // off 1: every pointer one entry past a 16-byte boundary
      const Tensor gg = put(*gpu_, g, {n + 1}, t), ug = put(*gpu_, u, {n + 1}, t);
      Tensor og = gpu_->alloc(t, {n + 1});
      const size_t es = t == DType::F32 ? 4 : 2;
      auto at = [&](const Tensor& x) { return static_cast<char*>(x.data) + off * es; };
      cuda::silu_mul(st, at(og), at(gg), at(ug), t, n);
      const auto o = get(*gpu_, og);
      double worst = 0;
      for (int64_t i = 0; i < n; ++i) {
        const float a = g[size_t(i + off)], want = a / (1.f + std::exp(-a)) * u[size_t(i + off)];
        worst = std::max(worst, double(std::fabs(o[size_t(i + off)] - want)) / (std::fabs(want) + 1e-2));
      }
      EXPECT_LE(worst, t == DType::F32 ? 1e-5 : 1e-2) << dtype_name(t) << ", offset " << off;
    }
}

// 9 to 64 rows (a batch of decoding sequences) take the tensor-core kernel of gemm_rows.cu: called directly
// here, so that a shape it refuses fails the test rather than passing through cuBLASLt. Shapes cover every
// n-tile count (up to 16, 32, 64 rows), a cluster of 1, 3 and 8 blocks along k (k of 256, 768 and 2048), a
// last block of weight rows only partly used, three matrices at once, and f32 and bf16 outputs.
TEST_F(CudaOps, RowsKernelsMatchCpu) {
  auto st = static_cast<cudaStream_t>(cuda_stream(*gpu_));
  struct Case {
    int64_t k;
    std::vector<int64_t> rows;
  };
  for (const Case& c : {Case{256, {144}}, Case{768, {400}}, Case{2048, {512}}, Case{512, {256, 64, 64}}}) {
    std::vector<HostWeight> w;
    std::vector<Tensor> wc, wg;
    for (size_t m = 0; m < c.rows.size(); ++m) {
      w.emplace_back(random_bf16(size_t(c.rows[m] * c.k), uint32_t(60 + m), 0.05f), Shape{c.rows[m], c.k});
      wc.push_back(cpu_->upload_weight(w.back().host));
      wg.push_back(gpu_->upload_weight(w.back().host));
    }
    for (int64_t n : {9, 16, 17, 40, 64})
      for (DType out_t : {DType::F32, DType::BF16}) {
        const auto x = random_bf16(size_t(n * c.k), uint32_t(n));
        const Tensor xg = put(*gpu_, x, {n, c.k}), xc = put(*cpu_, x, {n, c.k});
        cuda::GemvGroup g;
        std::vector<Tensor> outs;
        for (size_t m = 0; m < c.rows.size(); ++m) {
          outs.push_back(gpu_->alloc(out_t, {n, c.rows[m]}));
          g.w[m] = wg[m].data, g.out[m] = outs.back().data, g.rows[m] = c.rows[m];
        }
        g.count = int(c.rows.size());
        ASSERT_TRUE(cuda::gemm_rows(st, g, out_t, xg.data, n, c.k)) << "k " << c.k << ", " << n << " rows";
        for (size_t m = 0; m < c.rows.size(); ++m) {
          Tensor ref = cpu_->alloc(DType::F32, {n, c.rows[m]});
          cpu_->linear(ref, xc, wc[m], Tensor{});
          const auto a = get(*cpu_, ref), b = get(*gpu_, outs[m]);
          EXPECT_LE(rel_max_diff(b.data(), a.data(), a.size()), out_t == DType::F32 ? 1e-5 : 8e-3)
              << "k " << c.k << ", " << n << " rows, matrix " << m << ", out " << dtype_name(out_t);
        }
      }
  }
  // Shapes it refuses: 8 rows or fewer, more than 64, k not a multiple of 256, rows not a multiple of 16.
  const int64_t k = 1024, f = 208;
  HostWeight w(random_bf16(size_t(f * k), 70, 0.05f), {f, k});
  const Tensor wg = gpu_->upload_weight(w.host);
  cuda::GemvGroup g;
  g.w[0] = wg.data, g.rows[0] = f, g.count = 1;
  Tensor big = gpu_->alloc(DType::F32, {65, f});
  g.out[0] = big.data;
  const Tensor x65 = put(*gpu_, random_bf16(size_t(65 * k), 90), {65, k});
  EXPECT_FALSE(cuda::gemm_rows(st, g, DType::F32, x65.data, 8, k));
  EXPECT_FALSE(cuda::gemm_rows(st, g, DType::F32, x65.data, 65, k));
  EXPECT_FALSE(cuda::gemm_rows(st, g, DType::F32, x65.data, 32, 1000));
  g.rows[0] = 200;
  EXPECT_FALSE(cuda::gemm_rows(st, g, DType::F32, x65.data, 32, k));
}

// A row's result from the rows kernel (q, k and v through linears(), 9 to 64 rows) does not depend on how
// many rows are beside it: the split of k follows the weights' shape alone, and each output is summed in the
// same order.
TEST_F(CudaOps, RowsKernelIsRowInvariant) {
  const int64_t k = 4096, rows[3] = {512, 128, 128};
  std::vector<HostWeight> w;
  std::vector<Tensor> wg;
  for (int m = 0; m < 3; ++m) {
    w.emplace_back(random_bf16(size_t(rows[m] * k), uint32_t(91 + m), 0.05f), Shape{rows[m], k});
    wg.push_back(gpu_->upload_weight(w.back().host));
  }
  const auto x = random_bf16(size_t(64 * k), 95);
  auto project = [&](int64_t n) {
    std::vector<Tensor> outs;
    Backend::LinearOut lo[3];
    for (int m = 0; m < 3; ++m) {
      outs.push_back(gpu_->alloc(DType::F32, {n, rows[m]}));
      lo[m] = {outs.back(), wg[size_t(m)], Tensor{}};
    }
    gpu_->linears(put(*gpu_, std::vector<float>(x.begin(), x.begin() + n * k), {n, k}), lo, 3);
    std::vector<std::vector<float>> got;
    for (const Tensor& t : outs) got.push_back(get(*gpu_, t));
    return got;
  };
  const auto all = project(64);
  {
    // Recorded in a CUDA graph (as decode steps are: a cluster launch with programmatic dependent launch),
    // replayed, it gives the same.
    const Tensor xg = put(*gpu_, x, {64, k});
    std::vector<Tensor> outs;
    Backend::LinearOut lo[3];
    for (int m = 0; m < 3; ++m) {
      outs.push_back(gpu_->alloc(DType::F32, {64, rows[m]}));
      gpu_->fill_zero(outs.back());
      lo[m] = {outs.back(), wg[size_t(m)], Tensor{}};
    }
    ASSERT_TRUE(gpu_->begin_capture());
    gpu_->linears(xg, lo, 3);
    auto graph = gpu_->end_capture();
    ASSERT_TRUE(graph);
    graph->replay();
    for (int m = 0; m < 3; ++m)
      EXPECT_EQ(get(*gpu_, outs[size_t(m)]), all[size_t(m)]) << "graph, matrix " << m;
  }
  for (int64_t n : {9, 16, 17, 33, 63}) {
    const auto part = project(n);
    for (int m = 0; m < 3; ++m)
      EXPECT_TRUE(std::equal(part[size_t(m)].begin(), part[size_t(m)].end(), all[size_t(m)].begin()))
          << "first " << n << " rows, matrix " << m;
  }
}
#endif

// With RILL_BATCH_INVARIANT=1, a row's result does not depend on how many rows are beside it (what the
// engine's batch-invariance tests need); without it cuBLASLt may split skinny GEMMs' reduction.
TEST_F(CudaOps, LinearRowsAreBatchInvariant) {
  const char* before = std::getenv("RILL_BATCH_INVARIANT");
  setenv("RILL_BATCH_INVARIANT", "1", 1);
  gpu_ = make_backend("cuda");
  if (before) setenv("RILL_BATCH_INVARIANT", before, 1);
  else unsetenv("RILL_BATCH_INVARIANT");
  const int64_t in = 512, o = 384;
  HostWeight w(random_bf16(size_t(in * o), 3, 0.05f), {o, in});
  const Tensor wg = gpu_->upload_weight(w.host);
  const auto x = random_bf16(size_t(256 * in), 4);
  Tensor full = gpu_->alloc(DType::BF16, {256, o});
  gpu_->linear(full, put(*gpu_, x, {256, in}), wg, Tensor{});
  const auto all = get(*gpu_, full);
  for (int64_t n : {1, 2, 5, 16, 33, 128}) {
    Tensor part = gpu_->alloc(DType::BF16, {n, o});
    gpu_->linear(part, put(*gpu_, std::vector<float>(x.begin(), x.begin() + n * in), {n, in}), wg, Tensor{});
    const auto got = get(*gpu_, part);
    EXPECT_TRUE(std::equal(got.begin(), got.end(), all.begin())) << "first " << n << " rows";
  }
}

// The q/k/v projections fused with RoPE and the KV write give, to the bit, what linears and rope_kv_write give
// one after the other (q rotated; k and v in the caches; nothing for a negative slot), for 1 to 8 rows (the
// fused kernel) and 9 (the fallback), at head sizes 64 and 128.
TEST_F(CudaOps, QkvRopeKvWriteEqualsItsParts) {
  for (int64_t hd : {int64_t(64), int64_t(128)})
    for (int64_t n : {int64_t(1), int64_t(3), int64_t(8), int64_t(9)}) {
      const int64_t d = 256, H = 4, KV = 2, blocks = 6, bs = 4;
      const auto x = random_bf16(size_t(n * d), 21);
      HostWeight wq(random_bf16(size_t(H * hd * d), 22, 0.1f), {H * hd, d});
      HostWeight wk(random_bf16(size_t(KV * hd * d), 23, 0.1f), {KV * hd, d});
      HostWeight wv(random_bf16(size_t(KV * hd * d), 24, 0.1f), {KV * hd, d});
      std::vector<int32_t> pos, slots;
      for (int64_t i = 0; i < n; ++i) {
        pos.push_back(int32_t(i * 7919 % 100003));
        slots.push_back(i == 1 ? -1 : int32_t((i * 5) % (blocks * bs)));
      }
      const Tensor Wq = gpu_->upload_weight(wq.host), Wk = gpu_->upload_weight(wk.host), Wv = gpu_->upload_weight(wv.host);
      auto run = [&](bool fused) {
        const KvLayer kv = zeroed_kv(*gpu_, blocks, bs, KV, hd);
        const Tensor f = rope_frequencies(*gpu_, hd, 500000.0);
        const Tensor xg = put(*gpu_, x, {n, d}), p = put_i32(*gpu_, pos), sl = put_i32(*gpu_, slots);
        const Tensor q = gpu_->alloc(DType::BF16, {n, H * hd}), k = gpu_->alloc(DType::BF16, {n, KV * hd}),
                     v = gpu_->alloc(DType::BF16, {n, KV * hd});
        const Backend::LinearOut qkv[] = {{q, Wq, {}}, {k, Wk, {}}, {v, Wv, {}}};
        if (fused) {
          gpu_->qkv_rope_kv_write(xg, qkv, kv, sl, int(hd), p, f, Tensor{}, 0.9f);
        } else {
          gpu_->linears(xg, qkv, 3);
          gpu_->rope_kv_write(q, k, v, kv, sl, int(hd), p, f, Tensor{}, 0.9f);
        }
        return std::vector<std::vector<float>>{get(*gpu_, q), get(*gpu_, kv.k), get(*gpu_, kv.v)};
      };
      const auto want = run(false), got = run(true);
      const char* names[] = {"q", "k cache", "v cache"};
      for (int t = 0; t < 3; ++t) {
        size_t diff = 0;
        for (size_t i = 0; i < want[size_t(t)].size(); ++i) diff += want[size_t(t)][i] != got[size_t(t)][i];
        EXPECT_EQ(diff, 0u) << names[t] << ": head_dim " << hd << ", " << n << " rows";
      }
    }
}

TEST_F(CudaOps, MoeMatchesCpu) {
  const int64_t n = 19, d = 64, f = 96, E = 6;
  const int k = 2;
  const auto logits = random_bf16(size_t(n * E), 16);
  std::vector<std::unique_ptr<HostWeight>> keep;
  std::vector<ExpertWeights> ec, eg;
  for (int e = 0; e < E; ++e) {
    ExpertWeights wc, wg;
    for (auto [dst_c, dst_g, shape] : {std::tuple{&wc.gate, &wg.gate, Shape{f, d}}, std::tuple{&wc.up, &wg.up, Shape{f, d}},
                                       std::tuple{&wc.down, &wg.down, Shape{d, f}}}) {
      keep.push_back(std::make_unique<HostWeight>(random_bf16(size_t(f * d), uint32_t(100 + keep.size()), 0.1f), shape));
      *dst_c = cpu_->upload_weight(keep.back()->host);
      *dst_g = gpu_->upload_weight(keep.back()->host);
    }
    ec.push_back(wc);
    eg.push_back(wg);
  }
  const auto x = random_bf16(size_t(n * d), 17);
  auto run = [&](Backend& b, const std::vector<ExpertWeights>& experts) {
    const Tensor ids = b.alloc(DType::I32, {n, k}), w = b.alloc(DType::F32, {n, k});
    b.moe_route(ids, w, put(b, logits, {n, E}, DType::F32), k, true);
    Tensor out = b.alloc(b.device() == Device::CPU ? DType::F32 : DType::BF16, {n, d});
    b.moe_experts(out, put(b, x, {n, d}), ids, w, experts);
    std::vector<int32_t> hid(size_t(n * k));
    b.read(hid.data(), ids, hid.size() * 4);
    return std::make_pair(hid, get(b, out));
  };
  const auto [ids_c, out_c] = run(*cpu_, ec);
  const auto [ids_g, out_g] = run(*gpu_, eg);
  EXPECT_EQ(ids_c, ids_g);
  EXPECT_LE(rel_max_diff(out_g.data(), out_c.data(), out_c.size()), 2e-2);
}

}  // namespace
}  // namespace rill::test
