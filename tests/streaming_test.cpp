// The sink-window KV policy (attention sinks + a window, StreamingLLM): what can be proven exactly.
//  - Before the first eviction a sink stream is the dense stream, bit for bit.
//  - With one layer, a token's output depends only on the K/V of the tokens it sees, and layer-0 K/V depend only
//    on each token and its position; so every token after an eviction must get the logits of a fresh forward
//    over [sinks, visible window] at positions 0..S+W'-1 (up to float rounding of the rotations).
//  - Memory stays bounded however long the stream runs; RoPE relative angles stay exact at positions ~1e6.
#include <cstdlib>

#include "backend/backend.h"
#include "core/error.h"
#include "engine/scorer.h"
#include "model/model.h"
#include "test_util.h"

namespace rill::test {
namespace {

std::string make_model(const TempDir& dir, int layers) {
  const std::string out = dir / "m";
  const std::string cmd = make_random_model_bin() + " --out " + out + " --dim 64 --layers " +
                          std::to_string(layers) + " --heads 4 --kv-heads 2 --ffn 96 --vocab 300 --context 256 --dtype f32 --seed 3 > /dev/null";
  EXPECT_EQ(std::system(cmd.c_str()), 0);
  return out;
}

std::vector<int32_t> random_tokens(int n, unsigned seed) {
  std::vector<int32_t> t;
  for (int i = 0; i < n; ++i) t.push_back(int32_t((seed = seed * 1103515245u + 12345u) >> 8) % 300);
  return t;
}

KvPolicy sink(int sinks, int window) { return KvPolicy::parse("sink", sinks, window); }

TEST(Streaming, SinkEqualsDenseUntilTheFirstEviction) {
  TempDir dir;
  std::unique_ptr<Backend> backend;
  RILL_TEST_BACKEND(backend, 2);
  Model model(read_checkpoint(make_model(dir, 2)), *backend);
  ModelRunner runner(model);
  KvCache kv(*backend, model.config(), 64, 8);
  const auto tokens = random_tokens(150, 1);
  std::vector<float> dense, windowed;
  {
    Scorer s(runner, kv, KvPolicy{}, 7);
    s.feed(tokens, Logits::All, &dense);
  }
  {
    Scorer s(runner, kv, sink(4, 160), 7);
    s.feed(tokens, Logits::All, &windowed);
    EXPECT_EQ(s.visible(), 150);
  }
  ASSERT_EQ(dense.size(), windowed.size());
  EXPECT_EQ(dense, windowed);  // bitwise
}

// A sink-window stream's results do not depend on how it is chunked: every token sees what it would see if the
// stream ran token by token (a 2-layer model, so later layers' cached K/V are compared too).
TEST(Streaming, ChunkingDoesNotChangeSinkWindowResults) {
  TempDir dir;
  std::unique_ptr<Backend> backend;
  RILL_TEST_BACKEND(backend, 2);
  Model model(read_checkpoint(make_model(dir, 2)), *backend);
  ModelRunner runner(model);
  KvCache kv(*backend, model.config(), 64, 8);
  const auto tokens = random_tokens(160, 5);
  std::vector<float> one_by_one, chunked, step;
  {
    Scorer s(runner, kv, sink(4, 40), 1);
    for (int32_t t : tokens) {
      s.feed({t}, Logits::All, &step);
      one_by_one.insert(one_by_one.end(), step.begin(), step.end());
    }
  }
  {
    Scorer s(runner, kv, sink(4, 40), 7);  // chunks capped at window / 4 = 10
    s.feed(tokens, Logits::All, &chunked);
  }
  ASSERT_EQ(one_by_one.size(), chunked.size());
  // Bitwise on the CPU. On the GPU cuBLASLt may pick another kernel for a 1-row and a 10-row GEMM, which
  // changes the last bits; a token that saw other keys would differ by far more.
  if (test_on_gpu()) EXPECT_LE(rel_max_diff(chunked.data(), one_by_one.data(), chunked.size()), 1e-3);
  else {
    for (size_t i = 0; i < chunked.size(); ++i)
      if (chunked[i] != one_by_one[i]) {
        ADD_FAILURE() << "first difference at logit " << i << " (token " << i / size_t(model.config().vocab_size) << ")";
        break;
      }
  }
}

// Every token after the first eviction, for sinks 4 (inside a block) and 0 (the plain window policy), token by
// token and in chunks.
class StreamingOneLayer : public testing::TestWithParam<std::tuple<int, int>> {};

TEST_P(StreamingOneLayer, TokensAfterEvictionSeeExactlySinksAndWindow) {
  const auto [sinks, chunk] = GetParam();
  TempDir dir;
  std::unique_ptr<Backend> backend;
  RILL_TEST_BACKEND(backend, 2);
  Model model(read_checkpoint(make_model(dir, 1)), *backend);
  ModelRunner runner(model);
  const int bs = 8, window = 40;
  KvCache kv(*backend, model.config(), 64, bs);
  KvCache fresh_kv(*backend, model.config(), 64, bs);
  const auto tokens = random_tokens(200, 7);
  const size_t vocab = size_t(model.config().vocab_size);
  Scorer s(runner, kv, sink(sinks, window), chunk);
  std::vector<float> logits, fresh;
  int64_t checked = 0, evictions_seen = 0, last_visible = 0;
  for (size_t begin = 0; begin < tokens.size(); begin += size_t(chunk)) {
    const size_t end = std::min(tokens.size(), begin + size_t(chunk));
    s.feed({tokens.begin() + long(begin), tokens.begin() + long(end)}, Logits::All, &logits);
    ASSERT_LE(s.visible(), sinks + window);
    ASSERT_LE(s.blocks_held(), SinkWindowState::max_blocks(s.policy(), bs));
    if (s.visible() < last_visible) ++evictions_seen;
    last_visible = s.visible();
    // Every token of the chunk saw exactly the sinks and its own window, as if the stream ran token by token.
    for (size_t t = begin; t < end; ++t) {
      const SinkWindowState own{SinkWindowState{}.evictions_for(int64_t(t) + 1, s.policy(), bs)};
      if (own.evicted_blocks == 0) continue;  // nothing evicted yet for this token
      std::vector<int32_t> seen(tokens.begin(), tokens.begin() + sinks);
      seen.insert(seen.end(), tokens.begin() + own.window_start(s.policy(), bs), tokens.begin() + long(t) + 1);
      ASSERT_LE(int(seen.size()), sinks + window);
      Scorer f(runner, fresh_kv, KvPolicy{}, 512);
      f.feed(seen, Logits::Last, &fresh);
      const float* got = logits.data() + (t - begin) * vocab;
      EXPECT_LE(rel_max_diff(got, fresh.data(), vocab), logit_tolerance(2e-5)) << "token " << t;
      ++checked;
    }
  }
  EXPECT_GT(checked, 10);
  EXPECT_GE(evictions_seen, 3);
}

INSTANTIATE_TEST_SUITE_P(SinksAndChunks, StreamingOneLayer,
                         testing::Combine(testing::Values(4, 0), testing::Values(1, 5)),
                         [](const auto& info) {
                           return "sinks" + std::to_string(std::get<0>(info.param)) + "_chunk" +
                                  std::to_string(std::get<1>(info.param));
                         });

TEST(Streaming, MemoryStaysBoundedOnALongStream) {
  TempDir dir;
  std::unique_ptr<Backend> backend;
  RILL_TEST_BACKEND(backend, 2);
  Model model(read_checkpoint(make_model(dir, 1)), *backend);
  ModelRunner runner(model);
  const int bs = 8;
  KvCache kv(*backend, model.config(), 16, bs);  // 128 entries: a dense stream could not get past 128 tokens
  Scorer s(runner, kv, sink(4, 48), 16);
  std::vector<float> logits;
  for (int i = 0; i < 100; ++i) {
    s.feed(random_tokens(16, unsigned(i)), Logits::Last, &logits);
    EXPECT_LE(s.blocks_held(), SinkWindowState::max_blocks(s.policy(), bs));
  }
  EXPECT_EQ(s.length(), 1600);
  Scorer dense(runner, kv, KvPolicy{}, 16);
  EXPECT_THROW(dense.feed(random_tokens(400, 1), Logits::Last, &logits), Error);
}

TEST(Streaming, PolicyErrorsNameTheParameter) {
  EXPECT_THROW(KvPolicy::parse("rolling", 4, 64), Error);
  try {
    sink(4, 8).validate(16, 512, "kv_policy.window");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("kv_policy.window"), std::string::npos);
  }
  EXPECT_THROW(sink(4, 1024).validate(16, 512), Error);  // beyond the model's context
  EXPECT_NO_THROW(sink(4, 508).validate(16, 512));
}

// RoPE in the millions: rotating q and k at (P + a, P + b) gives the scores of (a, b).
TEST(Streaming, RopeRelativeAnglesExactAtMillionsOfTokens) {
  std::unique_ptr<Backend> backend;
  RILL_TEST_BACKEND(backend, 1);
  const int hd = 64;
  std::vector<double> inv(hd / 2);
  for (int i = 0; i < hd / 2; ++i) inv[size_t(i)] = std::pow(10000.0, -2.0 * i / hd);
  Tensor f = backend->alloc(DType::F64, {1, hd / 2});
  backend->write(f, inv.data(), inv.size() * sizeof(double));
  auto rotated = [&](const std::vector<float>& x, int32_t pos) {
    Tensor t = backend->alloc(DType::F32, {1, hd});
    backend->write(t, x.data(), x.size() * 4);
    Tensor p = backend->alloc(DType::I32, {1});
    backend->write(p, &pos, 4);
    backend->rope(t, hd, p, f, Tensor{}, 1.f);
    std::vector<float> out(hd);
    backend->read(out.data(), t, out.size() * 4);
    return out;
  };
  std::vector<float> q(hd), k(hd);
  for (int i = 0; i < hd; ++i) q[size_t(i)] = std::sin(0.3f * float(i)), k[size_t(i)] = std::cos(0.7f * float(i));
  auto dot = [](const std::vector<float>& a, const std::vector<float>& b) {
    double s = 0;
    for (size_t i = 0; i < a.size(); ++i) s += double(a[i]) * b[i];
    return s;
  };
  for (int32_t P : {0, 1000003, 50000017}) {
    const double near = dot(rotated(q, 500), rotated(k, 17));
    const double far = dot(rotated(q, P + 500), rotated(k, P + 17));
    EXPECT_NEAR(far, near, 2e-5 * std::fabs(near) + 1e-5) << "offset " << P;
  }
}

}  // namespace
}  // namespace rill::test
