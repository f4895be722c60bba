// The CUDA backend's token picking against the host's: argmax, the whole sampler, and top log-probabilities.
#include "cuda_test_util.h"

namespace rill::test {
namespace {

// argmax_rows: the first of equal maxima, for row lengths that take the 16-byte path and those that do not.
TEST_F(CudaOps, ArgmaxRowsTakesTheFirstMaximum) {
  for (int64_t vocab : {128256, 1001, 7}) {
    const int64_t rows = 3;
    std::vector<float> v(size_t(rows * vocab));
    std::mt19937 rng{uint32_t(vocab)};
    for (auto& x : v) x = std::uniform_real_distribution<float>(-5.f, 5.f)(rng);
    // Row 0: the maximum twice (the lower index wins); row 1: at the very end; row 2: at the start.
    v[size_t(vocab / 3)] = v[size_t(vocab - 2)] = 9.f;
    v[size_t(2 * vocab - 1)] = 9.f;
    v[size_t(2 * vocab)] = 9.f;
    const Tensor logits = put(*gpu_, v, {rows, vocab}, DType::F32), ids = gpu_->alloc(DType::I32, {rows});
    gpu_->argmax_rows(ids, logits);
    std::vector<int32_t> got(static_cast<size_t>(rows));
    gpu_->read(got.data(), ids, got.size() * 4);
    EXPECT_EQ(got, (std::vector<int32_t>{int32_t(vocab / 3), int32_t(vocab - 1), 0})) << "vocab " << vocab;
  }
}

// mask_logits: the same -inf pattern as the host's, for a vocabulary that ends inside a mask word.
TEST_F(CudaOps, MaskLogitsMatchTheHost) {
  const int64_t rows = 3, vocab = 128256 + 7, words = (vocab + 31) / 32;
  std::mt19937 rng(3);
  std::vector<float> v(size_t(rows * vocab));
  for (auto& x : v) x = std::uniform_real_distribution<float>(-5.f, 5.f)(rng);
  std::vector<uint32_t> mask(size_t(rows * words));
  for (auto& w : mask) w = uint32_t(rng());
  auto run = [&](Backend& b) {
    const Tensor l = put(b, v, {rows, vocab}, DType::F32), m = b.alloc(DType::I32, {rows * words});
    b.write(m, mask.data(), mask.size() * 4);
    b.mask_logits(l, m);
    std::vector<float> out(v.size());
    b.read(out.data(), l, out.size() * 4);
    return out;
  };
  EXPECT_EQ(run(*gpu_), run(*cpu_));
}

// Runs sample_rows on `b` over a copy of `logits` ([rows.size(), vocab]).
std::vector<int32_t> sample_on(Backend& b, const std::vector<float>& logits, int64_t vocab,
                               const std::vector<SampleRow>& rows, const std::vector<PenaltyEntry>& pen) {
  const int64_t m = int64_t(rows.size());
  const Tensor l = put(b, logits, {m, vocab}, DType::F32), ids = b.alloc(DType::I32, {m});
  const Tensor r = b.alloc(DType::U8, {m * int64_t(sizeof(SampleRow))});
  b.write(r, rows.data(), r.nbytes());
  Tensor p;
  if (!pen.empty()) {
    p = b.alloc(DType::I32, {2 * int64_t(pen.size())});
    b.write(p, pen.data(), p.nbytes());
  }
  b.sample_rows(ids, l, r, p);
  std::vector<int32_t> got(rows.size());
  b.read(got.data(), ids, got.size() * 4);
  return got;
}

// The device sampler picks exactly the token the host's sample_row picks: every filter alone and together,
// penalties, ties (rows of few distinct values, a row of one value), NaN and -inf logits, a row of NaNs, and
// draws at the ends of [0, 1).
TEST_F(CudaOps, SampleRowsMatchTheHostSampler) {
  std::vector<SampleRow> cases;
  auto add = [&](float t, int k, float p, float mp, float rep = 1.f, float pres = 0.f, float freq = 0.f) {
    SampleRow r;
    r.params.temperature = t, r.params.top_k = k, r.params.top_p = p, r.params.min_p = mp;
    r.params.repetition_penalty = rep, r.params.presence_penalty = pres, r.params.frequency_penalty = freq;
    cases.push_back(r);
  };
  add(0.f, 0, 1.f, 0.f);                       // greedy
  add(0.f, 0, 1.f, 0.f, 1.3f, 0.5f, 0.2f);     // greedy after penalties
  add(1.f, 0, 1.f, 0.f);                       // the whole distribution
  add(0.7f, 0, 1.f, 0.f);
  add(1.f, 1, 1.f, 0.f);                       // top-k 1
  add(0.8f, 40, 1.f, 0.f);
  add(1.f, 0, 0.9f, 0.f);
  add(1.2f, 0, 0.5f, 0.f);
  add(1.f, 0, 1.f, 0.05f);
  add(0.9f, 50, 0.95f, 0.02f, 1.1f, 0.3f, 0.4f);  // everything
  add(1.5f, 0, 1.f, 0.f, 0.8f, -0.5f, -0.2f);     // penalties that raise logits
  add(1.f, 100000, 0.999f, 0.f);                  // k beyond the candidates
  const double special_u[] = {0.0, 0.999999999, 0.5};
  for (int64_t vocab : {int64_t(7), int64_t(1000), int64_t(32003), int64_t(128256)}) {
    std::mt19937 rng{uint32_t(vocab)};
    std::vector<SampleRow> rows;
    std::vector<PenaltyEntry> pen;
    std::vector<float> logits;
    int row = 0;
    for (const SampleRow& c : cases)
      for (int rep = 0; rep < 6; ++rep, ++row) {
        SampleRow r = c;
        r.uniform = rep < 3 ? special_u[rep] : std::uniform_real_distribution<double>(0.0, 1.0)(rng);
        // Logits: plain, in steps of 0.25 (many ties), or with NaN and -inf entries.
        std::normal_distribution<float> nd(0.f, 2.f);
        for (int64_t i = 0; i < vocab; ++i) {
          float x = nd(rng);
          if (row % 3 == 1) x = std::round(x * 4.f) / 4.f;  // -0 among them: it ties with 0
          if (row % 3 == 2 && i % 97 == 5) x = i % 2 ? NAN : -INFINITY;
          logits.push_back(x);
        }
        r.penalty_begin = int32_t(pen.size());
        if (r.params.repetition_penalty != 1.f || r.params.presence_penalty != 0.f || r.params.frequency_penalty != 0.f)
          for (int64_t t = row % 5; t < vocab; t += 3 + row % 7) pen.push_back({int32_t(t), int32_t(t % 4)});
        r.penalty_end = int32_t(pen.size());
        rows.push_back(r);
      }
    // A row of NaNs (no token: -1) and a row of one value (ties everywhere: rank is id order).
    SampleRow nan_row = cases[3];
    nan_row.uniform = 0.3;
    rows.push_back(nan_row);
    logits.insert(logits.end(), size_t(vocab), NAN);
    SampleRow flat = cases[5];
    flat.params.top_k = 0;
    flat.params.top_p = 0.5f;
    flat.uniform = 0.7731;  // not on a boundary: u * total = 0.77 * 500 is one, where rounding decides
    rows.push_back(flat);
    logits.insert(logits.end(), size_t(vocab), 1.f);
    // Rows under a grammar's mask: a few tokens allowed (fewer than top_k), the rest -inf; the draw at the top of
    // [0, 1) (the host fell through to a masked token there); and nothing allowed (no token: -1).
    for (int allowed : {7, 0}) {
      SampleRow masked = cases[2];  // T 1
      masked.params.top_k = 50;
      masked.uniform = 0.99999999999999989;
      rows.push_back(masked);
      const size_t at = logits.size();
      logits.insert(logits.end(), size_t(vocab), -INFINITY);
      for (int a = 0; a < allowed && a < vocab; ++a) logits[at + size_t(a * 131 % vocab)] = 1.16f + 0.8f * float(a % 5);
    }

    std::vector<float> host = logits;
    std::vector<int32_t> want(rows.size());
    for (size_t i = 0; i < rows.size(); ++i)
      want[i] = sample_row(host.data() + i * size_t(vocab), int(vocab), rows[i], pen.data());
    const auto got = sample_on(*gpu_, logits, vocab, rows, pen);
    for (size_t i = 0; i < rows.size(); ++i)
      EXPECT_EQ(got[i], want[i]) << "vocab " << vocab << ", row " << i << " (case " << i / 6 << ", uniform "
                                 << rows[i].uniform << ")";
    EXPECT_EQ(want[rows.size() - 4], -1);
    EXPECT_EQ(want[rows.size() - 1], -1);
    EXPECT_EQ(sample_on(*gpu_, logits, vocab, rows, pen), got) << "the same inputs gave other tokens";
  }
}

// The device's log-probabilities are the host's: the same ids in the same order (ties by id, NaN never
// listed, -1 past the listable tokens) and the same values within f32 rounding of the log-sum-exp.
TEST_F(CudaOps, TopLogprobsMatchTheHost) {
  for (int64_t vocab : {int64_t(3), int64_t(1000), int64_t(128256)}) {
    const int m = 7, k = kMaxTopLogprobs;
    std::mt19937 rng{uint32_t(vocab) + 1};
    std::vector<float> logits;
    std::vector<int32_t> ids;
    for (int row = 0; row < m; ++row) {
      std::normal_distribution<float> nd(0.f, 3.f);
      for (int64_t i = 0; i < vocab; ++i) {
        float x = nd(rng);
        if (row % 3 == 1) x = std::round(x);  // ties
        if (row % 3 == 2 && i % 31 == 4) x = i % 2 ? NAN : -INFINITY;
        if (row == m - 1) x = 2.f;  // all tied
        logits.push_back(x);
      }
      ids.push_back(row == 3 ? -1 : int32_t((row * 7919) % vocab));
    }
    const Tensor l = put(*gpu_, logits, {m, vocab}, DType::F32), t = gpu_->alloc(DType::I32, {m});
    gpu_->write(t, ids.data(), ids.size() * 4);
    const Tensor out = gpu_->alloc(DType::F32, {m, 1 + 2 * k});
    gpu_->top_logprobs(out, l, t, k);
    std::vector<float> got(size_t(m * (1 + 2 * k))), want(got.size());
    gpu_->read(got.data(), out, got.size() * 4);
    for (int i = 0; i < m; ++i)
      top_logprobs_row(logits.data() + size_t(i) * size_t(vocab), int(vocab), ids[size_t(i)], k,
                       want.data() + i * (1 + 2 * k));
    for (int i = 0; i < m; ++i)
      for (int j = 0; j < 1 + 2 * k; ++j) {
        const float g = got[size_t(i * (1 + 2 * k) + j)], w = want[size_t(i * (1 + 2 * k) + j)];
        const std::string where = "vocab " + std::to_string(vocab) + ", row " + std::to_string(i) + ", entry " +
                                  std::to_string(j);
        if (std::isnan(w)) {
          EXPECT_TRUE(std::isnan(g)) << where;
        } else if (j % 2 == 1 || std::isinf(w)) {
          EXPECT_EQ(g, w) << where << (j % 2 == 1 ? " (an id)" : "");
        } else {
          EXPECT_NEAR(g, w, 2e-6 * std::max(1.f, std::fabs(w))) << where;
        }
      }
  }
}

}  // namespace
}  // namespace rill::test
