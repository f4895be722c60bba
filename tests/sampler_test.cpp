// Sampler: each filter and penalty does what it says, and a seed fixes the draw.
#include <map>
#include <random>

#include "backend/backend.h"
#include "core/error.h"
#include "engine/sampler.h"
#include "test_util.h"

namespace rill::test {
namespace {

int32_t sample_once(SamplingParams p, std::vector<float> logits, const std::vector<int32_t>& prompt = {}) {
  Sampler s(p);
  s.add_prompt(prompt);
  return s.sample(logits.data(), int(logits.size()));
}

SamplingParams seeded(uint64_t seed) {
  SamplingParams p;
  p.seed = seed;
  p.has_seed = true;
  return p;
}

TEST(Sampler, GreedyTakesArgmaxFirstOnTies) {
  SamplingParams p;
  p.temperature = 0;
  EXPECT_EQ(sample_once(p, {0.1f, 2.f, -1.f, 2.f}), 1);
}

TEST(Sampler, SameSeedSameTokens) {
  std::vector<float> logits(50);
  for (size_t i = 0; i < logits.size(); ++i) logits[i] = float(i % 7) * 0.3f;
  auto run = [&](uint64_t seed) {
    Sampler s(seeded(seed));
    std::vector<int32_t> out;
    for (int i = 0; i < 40; ++i) {
      auto l = logits;
      out.push_back(s.sample(l.data(), int(l.size())));
    }
    return out;
  };
  EXPECT_EQ(run(42), run(42));
  EXPECT_NE(run(42), run(43));
}

TEST(Sampler, FollowsTheDistribution) {
  // p = softmax(log(0.5), log(0.3), log(0.2))
  const std::vector<float> logits = {std::log(0.5f), std::log(0.3f), std::log(0.2f)};
  Sampler s(seeded(7));
  std::map<int, int> counts;
  const int n = 20000;
  for (int i = 0; i < n; ++i) {
    auto l = logits;
    counts[s.sample(l.data(), 3)]++;
  }
  EXPECT_NEAR(counts[0] / double(n), 0.5, 0.015);
  EXPECT_NEAR(counts[1] / double(n), 0.3, 0.015);
  EXPECT_NEAR(counts[2] / double(n), 0.2, 0.015);
}

TEST(Sampler, TopKTopPMinPFilter) {
  const std::vector<float> logits = {std::log(0.5f), std::log(0.3f), std::log(0.15f), std::log(0.05f)};
  for (uint64_t seed = 0; seed < 200; ++seed) {
    SamplingParams p = seeded(seed);
    p.top_k = 1;
    EXPECT_EQ(sample_once(p, logits), 0);
    p = seeded(seed);
    p.top_p = 0.75f;  // {0.5, 0.3} reaches 0.8 >= 0.75
    EXPECT_LE(sample_once(p, logits), 1);
    p = seeded(seed);
    p.min_p = 0.35f;  // keeps p >= 0.175: tokens 0 and 1
    EXPECT_LE(sample_once(p, logits), 1);
    p = seeded(seed);
    p.top_k = 3;
    EXPECT_LE(sample_once(p, logits), 2);
  }
}

TEST(Sampler, LowTemperatureIsNearlyGreedy) {
  SamplingParams p = seeded(3);
  p.temperature = 0.01f;
  EXPECT_EQ(sample_once(p, {1.f, 1.5f, 0.f}), 1);
}

TEST(Sampler, RepetitionPenaltyAsInTransformers) {
  SamplingParams p;
  p.temperature = 0;
  p.repetition_penalty = 2.f;
  // Token 0 (logit 3, in the prompt) drops to 1.5, below token 1's 2.
  EXPECT_EQ(sample_once(p, {3.f, 2.f, -1.f}, {0}), 1);
  // Negative logits are multiplied: token 2 (-1 -> -2) falls below token 1 (-1.5) after penalty.
  EXPECT_EQ(sample_once(p, {-5.f, -1.5f, -1.f}, {2}), 1);
}

TEST(Sampler, PresenceAndFrequencyPenaltiesApplyToOutput) {
  SamplingParams p;
  p.temperature = 0;
  p.presence_penalty = 1.5f;
  Sampler s(p);
  std::vector<float> l = {2.f, 1.f};
  EXPECT_EQ(s.sample(l.data(), 2), 0);
  l = {2.f, 1.f};
  EXPECT_EQ(s.sample(l.data(), 2), 1);  // 2 - 1.5 < 1
  SamplingParams f;
  f.temperature = 0;
  f.frequency_penalty = 0.4f;
  Sampler s2(f);
  std::vector<int32_t> got;
  for (int i = 0; i < 4; ++i) {
    std::vector<float> m = {2.f, 1.f};
    got.push_back(s2.sample(m.data(), 2));
  }
  EXPECT_EQ(got, (std::vector<int32_t>{0, 0, 0, 1}));  // 2, 1.6, 1.2, then 0.8 < 1
}

// The pieces a backend samples through (next_row, Backend::sample_rows, record) give the tokens sample() gives,
// step after step, with penalties that depend on the output so far and the same seed.
TEST(Sampler, BackendSampleRowsEqualsSample) {
  SamplingParams p = seeded(42);
  p.temperature = 0.9f;
  p.top_k = 20;
  p.top_p = 0.95f;
  p.min_p = 0.01f;
  p.repetition_penalty = 1.2f;
  p.presence_penalty = 0.3f;
  p.frequency_penalty = 0.1f;
  Sampler a(p), b(p);
  a.add_prompt({1, 2, 3, 50});
  b.add_prompt({1, 2, 3, 50});
  auto cpu = make_cpu_backend(1);
  const int vocab = 64;
  std::mt19937 rng{7};
  for (int step = 0; step < 200; ++step) {
    std::vector<float> logits(vocab);
    for (float& x : logits) x = std::normal_distribution<float>(0.f, 1.f)(rng);
    std::vector<float> copy = logits;
    const int32_t want = a.sample(copy.data(), vocab);
    std::vector<PenaltyEntry> pen;
    const SampleRow row = b.next_row(&pen);
    Tensor l = cpu->alloc(DType::F32, {1, vocab}), ids = cpu->alloc(DType::I32, {1});
    Tensor rows = cpu->alloc(DType::U8, {int64_t(sizeof(SampleRow))}), pt;
    cpu->write(l, logits.data(), logits.size() * 4);
    cpu->write(rows, &row, sizeof row);
    if (!pen.empty()) {
      pt = cpu->alloc(DType::I32, {2 * int64_t(pen.size())});
      cpu->write(pt, pen.data(), pt.nbytes());
    }
    cpu->sample_rows(ids, l, rows, pt);
    int32_t got = -2;
    cpu->read(&got, ids, 4);
    b.record(got);
    ASSERT_EQ(got, want) << "step " << step;
  }
}

TEST(Sampler, EveryLogitNaNIsAnError) {
  SamplingParams p = seeded(1);
  std::vector<float> l(5, NAN);
  EXPECT_EQ(sample_row(l.data(), 5, SampleRow{}, nullptr), -1);
  Sampler s(p);
  EXPECT_THROW(s.sample(l.data(), 5), Error);
}

// A masked logit (-inf: a token a grammar does not allow) is never drawn. The draw's running sum could end a
// rounding error short of uniform * total and fall through to the last candidate, a masked one.
TEST(Sampler, MaskedLogitsAreNeverDrawn) {
  std::vector<float> logits = {1.16f, 1.84f, 4.48f, 6.14f, 5.95f, 6.58f, 6.76f};
  logits.resize(20, -INFINITY);
  SampleRow row;
  row.uniform = 0.99999999999999989;  // the largest double below 1
  for (int top_k : {0, 10}) {
    row.params.top_k = top_k;
    std::vector<float> l = logits;
    const int32_t t = sample_row(l.data(), int(l.size()), row, nullptr);
    EXPECT_TRUE(t >= 0 && t < 7) << "top_k " << top_k << ": token " << t;
  }
  std::vector<float> masked(8, -INFINITY);
  EXPECT_EQ(sample_row(masked.data(), 8, row, nullptr), -1) << "nothing allowed: no token";
}

// top_logprobs_row against a plain computation: log-softmax in double, a full sort by (value, id).
TEST(Sampler, TopLogprobsRowIsTheLogSoftmaxRanked) {
  std::mt19937 rng{11};
  for (int vocab : {1, 5, 300}) {
    for (int variant = 0; variant < 3; ++variant) {
      std::vector<float> l(static_cast<size_t>(vocab));
      for (int i = 0; i < vocab; ++i) {
        l[size_t(i)] = std::normal_distribution<float>(0.f, 3.f)(rng);
        if (variant == 1) l[size_t(i)] = std::round(l[size_t(i)]);  // ties: the lower id first
        if (variant == 2 && i % 7 == 3) l[size_t(i)] = i % 2 ? NAN : -INFINITY;
      }
      std::vector<std::pair<int, double>> ref;
      double mx = -INFINITY, sum = 0;
      for (float x : l) if (!std::isnan(x)) mx = std::max(mx, double(x));
      for (float x : l) if (!std::isnan(x)) sum += std::exp(double(x) - mx);
      for (int i = 0; i < vocab; ++i)
        if (!std::isnan(l[size_t(i)])) ref.push_back({i, double(l[size_t(i)]) - mx - std::log(sum)});
      std::stable_sort(ref.begin(), ref.end(), [&](auto& a, auto& b) {
        return l[size_t(a.first)] > l[size_t(b.first)];  // stable: ties stay in id order
      });
      for (int k : {0, 1, 3, kMaxTopLogprobs}) {
        const int32_t token = vocab > 2 ? 2 : 0;
        std::vector<float> out(size_t(1 + 2 * k));
        top_logprobs_row(l.data(), vocab, token, k, out.data());
        const float want0 = std::isnan(l[size_t(token)]) ? NAN : float(double(l[size_t(token)]) - mx - std::log(sum));
        if (std::isnan(want0)) {
          EXPECT_TRUE(std::isnan(out[0]));
        } else {
          EXPECT_NEAR(out[0], want0, 1e-5);
        }
        for (int j = 0; j < k; ++j) {
          SCOPED_TRACE("vocab " + std::to_string(vocab) + ", variant " + std::to_string(variant) + ", k " +
                       std::to_string(k) + ", entry " + std::to_string(j));
          if (size_t(j) < ref.size()) {
            EXPECT_EQ(int(out[size_t(1 + 2 * j)]), ref[size_t(j)].first);
            EXPECT_NEAR(out[size_t(2 + 2 * j)], ref[size_t(j)].second, 1e-5);
          } else {
            EXPECT_EQ(out[size_t(1 + 2 * j)], -1.f);
            EXPECT_EQ(out[size_t(2 + 2 * j)], -INFINITY);
          }
        }
      }
    }
  }
  float out[3];
  top_logprobs_row(std::vector<float>{0.f, 0.f}.data(), 2, -1, 1, out);
  EXPECT_TRUE(std::isnan(out[0])) << "no token: NaN";
  EXPECT_EQ(out[1], 0.f);
  EXPECT_NEAR(out[2], -std::log(2.f), 1e-7);
}

TEST(Sampler, BackendTopLogprobsEqualsTheRow) {
  auto cpu = make_cpu_backend(1);
  const int vocab = 50, m = 3, k = 4;
  std::vector<float> logits(size_t(m * vocab));
  std::mt19937 rng{3};
  for (float& x : logits) x = std::normal_distribution<float>(0.f, 1.f)(rng);
  const std::vector<int32_t> ids = {7, -1, 49};
  Tensor l = cpu->alloc(DType::F32, {m, vocab}), t = cpu->alloc(DType::I32, {m}), out = cpu->alloc(DType::F32, {m, 1 + 2 * k});
  cpu->write(l, logits.data(), logits.size() * 4);
  cpu->write(t, ids.data(), ids.size() * 4);
  cpu->top_logprobs(out, l, t, k);
  std::vector<float> got(size_t(m * (1 + 2 * k))), want(got.size());
  cpu->read(got.data(), out, got.size() * 4);
  for (int i = 0; i < m; ++i) top_logprobs_row(logits.data() + i * vocab, vocab, ids[size_t(i)], k, want.data() + i * (1 + 2 * k));
  for (size_t i = 0; i < got.size(); ++i) {
    if (std::isnan(want[i])) {
      EXPECT_TRUE(std::isnan(got[i]));
    } else {
      EXPECT_EQ(got[i], want[i]) << i;
    }
  }
  EXPECT_THROW(cpu->top_logprobs(cpu->alloc(DType::F32, {m, 1 + 2 * 21}), l, t, 21), Error) << "k > 20";
  EXPECT_THROW(cpu->top_logprobs(out, l, t, 3), Error) << "out of the wrong size";
}

TEST(Sampler, RejectsOutOfRangeParameters) {
  for (auto mutate : std::vector<std::function<void(SamplingParams&)>>{
           [](SamplingParams& p) { p.temperature = -1; }, [](SamplingParams& p) { p.top_p = 0; },
           [](SamplingParams& p) { p.top_p = 1.5f; }, [](SamplingParams& p) { p.min_p = 2; },
           [](SamplingParams& p) { p.top_k = -1; }, [](SamplingParams& p) { p.repetition_penalty = 0; },
           [](SamplingParams& p) { p.presence_penalty = 3; }}) {
    SamplingParams p;
    mutate(p);
    EXPECT_THROW(Sampler{p}, Error);
  }
}

}  // namespace
}  // namespace rill::test
