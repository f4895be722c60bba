// CPU backend ops against straightforward reference loops, on odd sizes that hit every vector tail,
// with weights in f32, bf16 and f16, and attention over a scattered block table.
#include <limits>
#include <random>

#include "backend/backend.h"
#include "backend/cpu/vec.h"
#include "core/error.h"
#include "core/thread_pool.h"
#include "test_util.h"

namespace rill::test {
namespace {

std::vector<float> randn(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d;
  std::vector<float> v(n);
  for (float& x : v) x = d(rng);
  return v;
}

Tensor host(std::vector<float>& v, Shape s) { return Tensor{v.data(), DType::F32, s}; }

TEST(DType, ConversionsRoundTrip) {
  for (float f : {0.f, 1.f, -2.5f, 3.140625f, 65504.f, 1e-7f, -0.f}) {
    EXPECT_EQ(f16_to_f32(f32_to_f16(f)), f16_to_f32(f32_to_f16(f16_to_f32(f32_to_f16(f)))));
    EXPECT_NEAR(f16_to_f32(f32_to_f16(f)), f, std::fabs(f) * 1e-3 + 6e-8);
    EXPECT_NEAR(bf16_to_f32(f32_to_bf16(f)), f, std::fabs(f) * 8e-3);
  }
  EXPECT_EQ(f32_to_bf16(1.f), 0x3f80);
  EXPECT_EQ(f32_to_f16(1.f), 0x3c00);
  EXPECT_TRUE(std::isinf(f16_to_f32(f32_to_f16(1e6f))));
  EXPECT_TRUE(std::isnan(bf16_to_f32(f32_to_bf16(NAN))));
  EXPECT_EQ(f16_to_f32(0x0001), std::ldexp(1.f, -24));  // smallest subnormal
}

// Weights rounded to `dtype` (w is updated to the rounded values) as a tensor over `w16` or `w`.
Tensor weight_of(DType dtype, std::vector<float>& w, std::vector<uint16_t>& w16, Shape shape) {
  w16.resize(w.size());
  for (size_t i = 0; i < w.size(); ++i) {
    w16[i] = dtype == DType::BF16 ? f32_to_bf16(w[i]) : f32_to_f16(w[i]);
    w[i] = dtype == DType::BF16 ? bf16_to_f32(w16[i]) : dtype == DType::F16 ? f16_to_f32(w16[i]) : w[i];
  }
  return dtype == DType::F32 ? host(w, shape) : Tensor{w16.data(), dtype, shape};
}

class LinearTest : public testing::TestWithParam<std::tuple<DType, int, int>> {};

TEST_P(LinearTest, MatchesReference) {
  // Sizes not multiples of the vector width, of the 16-row strips, of the 64-row panels or of the 256-column
  // blocks of the kernels.
  const auto [dtype, n, in] = GetParam();
  const int out = 45 + in;
  auto backend = make_cpu_backend(3);
  auto x = randn(size_t(n * in), 1), w = randn(size_t(out * in), 2), b = randn(size_t(out), 3);
  std::vector<uint16_t> w16;
  Tensor wt = weight_of(dtype, w, w16, {out, in});
  Tensor y = backend->alloc(DType::F32, {n, out});
  backend->linear(y, host(x, {n, in}), backend->upload_weight(wt), host(b, {out}));
  for (int t = 0; t < n; ++t)
    for (int r = 0; r < out; ++r) {
      double ref = b[size_t(r)];
      for (int i = 0; i < in; ++i) ref += double(x[size_t(t * in + i)]) * w[size_t(r * in + i)];
      ASSERT_NEAR(y.ptr<float>()[t * out + r], ref, 1e-4 * std::sqrt(double(in))) << "token " << t << " row " << r;
    }
}

INSTANTIATE_TEST_SUITE_P(Dtypes, LinearTest,
                         testing::Combine(testing::Values(DType::F32, DType::BF16, DType::F16), testing::Values(1, 3, 50),
                                          testing::Values(67, 300)));

// A token's output does not depend on how many tokens share the step: the GEMV (one token) and the GEMM (a
// prompt, or a batch of decodes) sum every row in the same order, so the bits agree. This is what makes greedy
// results the same alone or batched, and chunked prefill the same as token-by-token decoding.
TEST(Backend, BatchedRowsEqualSingleRowsBitwise) {
  for (DType dtype : {DType::F32, DType::BF16, DType::F16}) {
    const int in = 300, out = 130, n = 13;
    auto backend = make_cpu_backend(2);
    auto x = randn(size_t(n * in), 4), w = randn(size_t(out * in), 5);
    std::vector<uint16_t> w16;
    const Tensor wt = backend->upload_weight(weight_of(dtype, w, w16, {out, in}));
    Tensor all = backend->alloc(DType::F32, {n, out}), one = backend->alloc(DType::F32, {1, out});
    backend->linear(all, host(x, {n, in}), wt, Tensor{});
    for (int t = 0; t < n; ++t) {
      backend->linear(one, Tensor{x.data() + t * in, DType::F32, {1, in}}, wt, Tensor{});
      for (int r = 0; r < out; ++r)
        ASSERT_EQ(one.ptr<float>()[r], all.ptr<float>()[t * out + r]) << dtype_name(dtype) << " token " << t << " row " << r;
    }
  }
}

// The fused passes (q, k, v from one input; SwiGLU's gate and up) give the bits of the separate ops.
TEST(Backend, FusedProjectionsEqualSeparateOps) {
  const int in = 70, f = 90;
  auto backend = make_cpu_backend(2);
  for (int n : {1, 9}) {
    auto x = randn(size_t(n * in), 6), g = randn(size_t(f * in), 7), u = randn(size_t(f * in), 8);
    auto gb = randn(size_t(f), 9), ub = randn(size_t(f), 10);
    std::vector<uint16_t> g16, u16;
    const Tensor gt = weight_of(DType::BF16, g, g16, {f, in}), ut = weight_of(DType::BF16, u, u16, {f, in});
    Tensor gate = backend->alloc(DType::F32, {n, f}), up = backend->alloc(DType::F32, {n, f});
    Tensor fused = backend->alloc(DType::F32, {n, f}), expect = backend->alloc(DType::F32, {n, f});
    backend->swiglu(fused, host(x, {n, in}), gt, host(gb, {f}), ut, host(ub, {f}), gate, up);
    backend->linear(gate, host(x, {n, in}), gt, host(gb, {f}));
    backend->linear(up, host(x, {n, in}), ut, host(ub, {f}));
    backend->silu_mul(expect, gate, up);
    for (int i = 0; i < n * f; ++i) ASSERT_EQ(fused.ptr<float>()[i], expect.ptr<float>()[i]) << "swiglu, n " << n << ", " << i;

    Tensor a = backend->alloc(DType::F32, {n, f}), b = backend->alloc(DType::F32, {n, f});
    const Backend::LinearOut both[] = {{a, gt, host(gb, {f})}, {b, ut, Tensor{}}};
    backend->linears(host(x, {n, in}), both, 2);
    backend->linear(gate, host(x, {n, in}), gt, host(gb, {f}));
    backend->linear(up, host(x, {n, in}), ut, Tensor{});
    for (int i = 0; i < n * f; ++i) {
      ASSERT_EQ(a.ptr<float>()[i], gate.ptr<float>()[i]) << "linears, n " << n << ", " << i;
      ASSERT_EQ(b.ptr<float>()[i], up.ptr<float>()[i]) << "linears, n " << n << ", " << i;
    }
  }
}

TEST(Backend, RmsNormAndFusedResidual) {
  auto backend = make_cpu_backend(2);
  const int rows = 5, d = 13;
  auto x = randn(rows * d, 4), w = randn(d, 5), delta = randn(rows * d, 6);
  Tensor out = backend->alloc(DType::F32, {rows, d});
  backend->rmsnorm(out, host(x, {rows, d}), host(w, {d}), 1e-5f);
  auto res = x;
  Tensor out2 = backend->alloc(DType::F32, {rows, d});
  backend->add_rmsnorm(host(res, {rows, d}), out2, host(delta, {rows, d}), host(w, {d}), 1e-5f);
  for (int r = 0; r < rows; ++r) {
    double ss = 0, ss2 = 0;
    for (int i = 0; i < d; ++i) {
      ss += x[size_t(r * d + i)] * x[size_t(r * d + i)];
      const double s = x[size_t(r * d + i)] + delta[size_t(r * d + i)];
      ss2 += s * s;
    }
    for (int i = 0; i < d; ++i) {
      EXPECT_NEAR(out.ptr<float>()[r * d + i], w[size_t(i)] * x[size_t(r * d + i)] / std::sqrt(ss / d + 1e-5), 1e-5);
      const double s = x[size_t(r * d + i)] + delta[size_t(r * d + i)];
      EXPECT_NEAR(res[size_t(r * d + i)], s, 1e-6);
      EXPECT_NEAR(out2.ptr<float>()[r * d + i], w[size_t(i)] * s / std::sqrt(ss2 / d + 1e-5), 1e-5);
    }
  }
}

TEST(Backend, RopeRotatesHalvesInDouble) {
  auto backend = make_cpu_backend(1);
  const int hd = 4, heads = 2;
  std::vector<float> x = {1, 0, 0, 0, 0, 1, 2, 3};  // one token, two heads
  std::vector<int32_t> pos = {3'000'000};           // far beyond any training context
  std::vector<double> inv = {1.0, 0.01};
  backend->rope(host(x, {1, heads * hd}), hd, Tensor{pos.data(), DType::I32, {1}}, Tensor{inv.data(), DType::F64, {1, 2}},
                Tensor{}, 1.0f);
  const double a0 = 3e6 * 1.0, a1 = 3e6 * 0.01;
  EXPECT_NEAR(x[0], std::cos(a0), 1e-6);
  EXPECT_NEAR(x[2], std::sin(a0), 1e-6);
  // second head: (x0, x1, x2, x3) = (0, 1, 2, 3)
  EXPECT_NEAR(x[4], 0 * std::cos(a0) - 2 * std::sin(a0), 1e-5);
  EXPECT_NEAR(x[5], 1 * std::cos(a1) - 3 * std::sin(a1), 1e-5);
  EXPECT_NEAR(x[6], 2 * std::cos(a0) + 0 * std::sin(a0), 1e-5);
  EXPECT_NEAR(x[7], 3 * std::cos(a1) + 1 * std::sin(a1), 1e-5);
}

// Two sequences in one flat batch, their KV scattered over non-contiguous blocks; sequence 0 has 9
// cached tokens plus 3 new ones, sequence 1 has 4 new tokens. Compared with dense causal attention.
// The fused RoPE + KV write gives the bits of rope(q), rope(k) and kv_write.
TEST(Backend, RopeKvWriteEqualsItsParts) {
  auto backend = make_cpu_backend(2);
  const int n = 11, hd = 8, heads = 4, kv_heads = 2, blocks = 4, bs = 4;
  std::vector<int32_t> pos(n), slots(n);
  for (int t = 0; t < n; ++t) pos[size_t(t)] = 1000 * t + 7, slots[size_t(t)] = (t * 5) % (blocks * bs);
  std::vector<double> inv = {1.0, 0.3, 0.01, 1e-4};
  const Tensor p{pos.data(), DType::I32, {n}}, sl{slots.data(), DType::I32, {n}}, f{inv.data(), DType::F64, {1, hd / 2}};
  KvLayer fused{backend->alloc(DType::F32, {blocks, bs, kv_heads, hd}), backend->alloc(DType::F32, {blocks, bs, kv_heads, hd})};
  KvLayer parts{backend->alloc(DType::F32, {blocks, bs, kv_heads, hd}), backend->alloc(DType::F32, {blocks, bs, kv_heads, hd})};
  for (const KvLayer& kv : {fused, parts}) backend->fill_zero(kv.k), backend->fill_zero(kv.v);
  auto q1 = randn(size_t(n * heads * hd), 11), k1 = randn(size_t(n * kv_heads * hd), 12), v = randn(size_t(n * kv_heads * hd), 13);
  auto q2 = q1, k2 = k1;
  backend->rope_kv_write(host(q1, {n, heads * hd}), host(k1, {n, kv_heads * hd}), host(v, {n, kv_heads * hd}), fused, sl,
                         hd, p, f, Tensor{}, 0.9f);
  backend->rope(host(q2, {n, heads * hd}), hd, p, f, Tensor{}, 0.9f);
  backend->rope(host(k2, {n, kv_heads * hd}), hd, p, f, Tensor{}, 0.9f);
  backend->kv_write(parts, host(k2, {n, kv_heads * hd}), host(v, {n, kv_heads * hd}), sl);
  EXPECT_EQ(q1, q2);
  EXPECT_EQ(k1, k2);
  for (int64_t i = 0; i < fused.k.numel(); ++i) {
    ASSERT_EQ(fused.k.ptr<float>()[i], parts.k.ptr<float>()[i]) << i;
    ASSERT_EQ(fused.v.ptr<float>()[i], parts.v.ptr<float>()[i]) << i;
  }
}

TEST(Backend, PagedAttentionMatchesDense) {
  auto backend = make_cpu_backend(3);
  const int H = 4, KVH = 2, hd = 8, bs = 4, blocks = 10;
  KvLayer kv{backend->alloc(DType::F32, {blocks, bs, KVH, hd}), backend->alloc(DType::F32, {blocks, bs, KVH, hd})};
  const std::vector<std::vector<int32_t>> tables = {{7, 2, 9, 0}, {5, 3}};
  const std::vector<int> ctx = {12, 4}, qlen = {3, 4};
  // Fill each sequence's full K/V history.
  std::vector<std::vector<float>> K(2), V(2);
  for (int s = 0; s < 2; ++s) {
    K[size_t(s)] = randn(size_t(ctx[size_t(s)] * KVH * hd), 10 + s);
    V[size_t(s)] = randn(size_t(ctx[size_t(s)] * KVH * hd), 20 + s);
    std::vector<int32_t> slots;
    for (int j = 0; j < ctx[size_t(s)]; ++j) slots.push_back(tables[size_t(s)][size_t(j / bs)] * bs + j % bs);
    backend->kv_write(kv, host(K[size_t(s)], {ctx[size_t(s)], KVH * hd}), host(V[size_t(s)], {ctx[size_t(s)], KVH * hd}),
                      Tensor{slots.data(), DType::I32, {int64_t(slots.size())}});
  }
  const int n = qlen[0] + qlen[1];
  auto q = randn(size_t(n * H * hd), 30);
  std::vector<int32_t> q_start = {0, 3, 7}, ctx_len = {12, 4}, token_seq = {0, 0, 0, 1, 1, 1, 1};
  std::vector<int32_t> flat = {7, 2, 9, 0, 5, 3, 0, 0};
  AttentionBatch ab;
  ab.num_seqs = 2;
  ab.num_tokens = n;
  ab.max_blocks_per_seq = 4;
  ab.q_start = Tensor{q_start.data(), DType::I32, {3}};
  ab.ctx_len = Tensor{ctx_len.data(), DType::I32, {2}};
  ab.block_tables = Tensor{flat.data(), DType::I32, {2, 4}};
  ab.token_seq = Tensor{token_seq.data(), DType::I32, {n}};
  for (int window : {0, 5}) {
    Tensor out = backend->alloc(DType::F32, {n, H * hd});
    backend->attention(out, host(q, {n, H * hd}), kv, ab, H, 0.3f, window);
    for (int t = 0; t < n; ++t) {
      const int s = token_seq[size_t(t)];
      const int self = ctx[size_t(s)] - qlen[size_t(s)] + (t - q_start[size_t(s)]);
      const int lo = window > 0 ? std::max(0, self - window + 1) : 0;
      for (int h = 0; h < H; ++h) {
        const int g = h / (H / KVH);
        std::vector<double> p;
        double mx = -1e30, sum = 0;
        for (int j = lo; j <= self; ++j) {
          double sc = 0;
          for (int i = 0; i < hd; ++i)
            sc += double(q[size_t((t * H + h) * hd + i)]) * K[size_t(s)][size_t((j * KVH + g) * hd + i)];
          p.push_back(sc * 0.3);
          mx = std::max(mx, sc * 0.3);
        }
        for (double& v : p) sum += (v = std::exp(v - mx));
        for (int i = 0; i < hd; ++i) {
          double ref = 0;
          for (int j = lo; j <= self; ++j) ref += p[size_t(j - lo)] / sum * V[size_t(s)][size_t((j * KVH + g) * hd + i)];
          ASSERT_NEAR(out.ptr<float>()[(t * H + h) * hd + i], ref, 1e-5) << "window " << window << " token " << t;
        }
      }
    }
  }
}

TEST(Backend, MoeRouteAndExperts) {
  auto backend = make_cpu_backend(2);
  const int n = 3, d = 6, f = 5, E = 4, k = 2;
  auto logits = randn(n * E, 40), x = randn(n * d, 41);
  std::vector<std::vector<float>> wg, wu, wd;
  std::vector<ExpertWeights> experts;
  for (int e = 0; e < E; ++e) {
    wg.push_back(randn(f * d, 50 + e));
    wu.push_back(randn(f * d, 60 + e));
    wd.push_back(randn(d * f, 70 + e));
  }
  for (int e = 0; e < E; ++e) experts.push_back({host(wg[size_t(e)], {f, d}), host(wu[size_t(e)], {f, d}), host(wd[size_t(e)], {d, f})});
  for (bool normalize : {true, false}) {
    Tensor ids = backend->alloc(DType::I32, {n, k}), w = backend->alloc(DType::F32, {n, k});
    backend->moe_route(ids, w, host(logits, {n, E}), k, normalize);
    Tensor out = backend->alloc(DType::F32, {n, d});
    backend->moe_experts(out, host(x, {n, d}), ids, w, experts);
    for (int t = 0; t < n; ++t) {
      std::vector<double> p(E);
      double mx = -1e30, sum = 0;
      for (int e = 0; e < E; ++e) mx = std::max(mx, double(logits[size_t(t * E + e)]));
      for (int e = 0; e < E; ++e) sum += (p[size_t(e)] = std::exp(logits[size_t(t * E + e)] - mx));
      std::vector<int> order = {0, 1, 2, 3};
      std::sort(order.begin(), order.end(), [&](int a, int b) { return p[size_t(a)] > p[size_t(b)]; });
      const double top = (p[size_t(order[0])] + p[size_t(order[1])]) / sum;
      std::vector<double> ref(d, 0.0);
      for (int j = 0; j < k; ++j) {
        const int e = order[size_t(j)];
        ASSERT_EQ(ids.ptr<int32_t>()[t * k + j], e);
        const double wt = p[size_t(e)] / sum / (normalize ? top : 1.0);
        EXPECT_NEAR(w.ptr<float>()[t * k + j], wt, 1e-6);
        std::vector<double> act(f);
        for (int r = 0; r < f; ++r) {
          double g = 0, u = 0;
          for (int i = 0; i < d; ++i) {
            g += double(wg[size_t(e)][size_t(r * d + i)]) * x[size_t(t * d + i)];
            u += double(wu[size_t(e)][size_t(r * d + i)]) * x[size_t(t * d + i)];
          }
          act[size_t(r)] = g / (1 + std::exp(-g)) * u;
        }
        for (int r = 0; r < d; ++r) {
          double y = 0;
          for (int i = 0; i < f; ++i) y += double(wd[size_t(e)][size_t(r * f + i)]) * act[size_t(i)];
          ref[size_t(r)] += wt * y;
        }
      }
      for (int r = 0; r < d; ++r) EXPECT_NEAR(out.ptr<float>()[t * d + r], ref[size_t(r)], 1e-4);
    }
  }
}

TEST(Backend, BadArgumentsThrow) {
  auto backend = make_cpu_backend(1);
  auto x = randn(10, 1);
  std::vector<int32_t> bad = {12};
  Tensor out = backend->alloc(DType::F32, {1, 5});
  EXPECT_THROW(backend->embedding(out, host(x, {2, 5}), Tensor{bad.data(), DType::I32, {1}}), Error);
  EXPECT_THROW(backend->linear(out, host(x, {2, 5}), host(x, {5, 2}), Tensor{}), Error);
}

TEST(ThreadPool, CoversRangeExactlyOnce) {
  ThreadPool pool(4);
  for (int64_t n : {0, 1, 7, 1000}) {
    std::vector<std::atomic<int>> hits(static_cast<size_t>(n));
    pool.parallel_for(n, 3, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) hits[size_t(i)]++;
    });
    for (auto& h : hits) ASSERT_EQ(h.load(), 1);
  }
}

}  // namespace
}  // namespace rill::test

namespace rill::test {
namespace {

// --device values: a clear error naming the flag for unknown devices, and for CUDA where there is none.
TEST(BackendFactory, DeviceErrorsNameTheFlag) {
  EXPECT_EQ(make_backend("cpu", 1)->device(), Device::CPU);
  try {
    make_backend("tpu", 1);
    FAIL() << "tpu accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("--device"), std::string::npos) << e.what();
  }
  EXPECT_THROW(make_backend("cuda:x", 1), Error);
  if (!cuda_available()) {
    EXPECT_THROW(make_backend("cuda", 1), Error);
    EXPECT_EQ(make_backend("auto", 1)->device(), Device::CPU);
  }
}

// --dtype values: the CPU computes in f32 (auto, float32) and refuses bfloat16 naming the flag; unknown
// values are refused; on CUDA float32 mode keeps activations and the KV cache in f32.
TEST(BackendFactory, DtypeChoosesComputeOrNamesTheFlag) {
  EXPECT_EQ(make_backend("cpu", 1, "float32")->activation_dtype(), DType::F32);
  EXPECT_EQ(make_backend("cpu", 1, "auto")->kv_dtype(), DType::F32);
  for (const char* bad : {"bfloat16", "int4"}) {
    try {
      make_backend("cpu", 1, bad);
      FAIL() << bad << " accepted on the CPU";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("--dtype"), std::string::npos) << e.what();
    }
  }
  if (cuda_available()) {
    EXPECT_EQ(make_backend("cuda", 1)->kv_dtype(), DType::BF16);
    auto f32 = make_backend("cuda", 1, "float32");
    EXPECT_EQ(f32->activation_dtype(), DType::F32);
    EXPECT_EQ(f32->kv_dtype(), DType::F32);
  }
}

// Greedy on the device: argmax per row, ties to the lower id (what the sampler's greedy picks).
TEST(BackendFactory, CpuArgmaxRowsTiesToLowerId) {
  auto b = make_cpu_backend(1);
  const std::vector<float> logits = {0.f, 3.f, 3.f, -1.f, /**/ 5.f, 1.f, 5.f, 2.f};
  Tensor l = b->alloc(DType::F32, {2, 4});
  b->write(l, logits.data(), logits.size() * 4);
  Tensor ids = b->alloc(DType::I32, {2});
  b->argmax_rows(ids, l);
  EXPECT_EQ(ids.ptr<int32_t>()[0], 1);
  EXPECT_EQ(ids.ptr<int32_t>()[1], 0);
}

TEST(BackendFactory, CpuMaskLogitsKeepsOnlyAllowedTokens) {
  auto b = make_cpu_backend(1);
  const int64_t vocab = 37;  // two mask words per row, the second partly used
  std::vector<float> logits(size_t(2 * vocab), 1.f);
  Tensor l = b->alloc(DType::F32, {2, vocab});
  b->write(l, logits.data(), logits.size() * 4);
  const std::vector<uint32_t> mask = {0x5u, 0x10u, 0x0u, 0x1u};  // row 0: tokens 0, 2, 36; row 1: token 32
  Tensor m = b->alloc(DType::I32, {4});
  b->write(m, mask.data(), 16);
  b->mask_logits(l, m);
  for (int64_t r = 0; r < 2; ++r)
    for (int64_t t = 0; t < vocab; ++t) {
      const bool allowed = r == 0 ? (t == 0 || t == 2 || t == 36) : t == 32;
      EXPECT_EQ(l.ptr<float>()[r * vocab + t], allowed ? 1.f : -std::numeric_limits<float>::infinity()) << r << "," << t;
    }
  Tensor ids = b->alloc(DType::I32, {2});
  b->argmax_rows(ids, l);
  EXPECT_EQ(ids.ptr<int32_t>()[1], 32);
}

}  // namespace
}  // namespace rill::test
