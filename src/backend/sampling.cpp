#include "backend/sampling.h"

#include <algorithm>
#include <cmath>
#include <utility>
#include <vector>

#include "core/error.h"

namespace rill {

void SamplingParams::validate() const {
  RILL_CHECK(std::isfinite(temperature) && temperature >= 0.f, "temperature must be >= 0");
  RILL_CHECK(top_k >= 0, "top_k must be >= 0 (0 disables it)");
  RILL_CHECK(top_p > 0.f && top_p <= 1.f, "top_p must be in (0, 1]");
  RILL_CHECK(min_p >= 0.f && min_p <= 1.f, "min_p must be in [0, 1]");
  RILL_CHECK(repetition_penalty > 0.f && std::isfinite(repetition_penalty), "repetition_penalty must be > 0");
  RILL_CHECK(presence_penalty >= -2.f && presence_penalty <= 2.f, "presence_penalty must be in [-2, 2]");
  RILL_CHECK(frequency_penalty >= -2.f && frequency_penalty <= 2.f, "frequency_penalty must be in [-2, 2]");
}

int32_t sample_row(float* logits, int vocab, const SampleRow& p, const PenaltyEntry* pen) {
  for (int32_t e = p.penalty_begin; e < p.penalty_end; ++e) {
    const int32_t t = pen[e].token;
    if (t < 0 || t >= vocab) continue;
    float& l = logits[t];
    if (p.params.repetition_penalty != 1.f) l = l > 0 ? l / p.params.repetition_penalty : l * p.params.repetition_penalty;
    if (pen[e].output_count > 0) l -= p.params.presence_penalty + p.params.frequency_penalty * float(pen[e].output_count);
  }
  if (p.params.temperature == 0.f) {
    int32_t best = -1;
    for (int i = 0; i < vocab; ++i)
      if (!std::isnan(logits[i]) && (best < 0 || logits[i] > logits[best])) best = i;  // first maximum on ties
    return best;
  }
  // Candidates sorted by logit (descending; ties by id), then filtered.
  std::vector<std::pair<float, int32_t>> cand;
  cand.reserve(size_t(vocab));
  for (int i = 0; i < vocab; ++i)  // masked tokens (-inf) have no chance: never candidates
    if (!std::isnan(logits[i]) && logits[i] != -INFINITY) cand.emplace_back(logits[i] / p.params.temperature, i);
  if (cand.empty()) return -1;
  auto by_logit = [](const auto& a, const auto& b) { return a.first > b.first || (a.first == b.first && a.second < b.second); };
  if (p.params.top_k > 0 && size_t(p.params.top_k) < cand.size()) {
    std::partial_sort(cand.begin(), cand.begin() + p.params.top_k, cand.end(), by_logit);
    cand.resize(size_t(p.params.top_k));
  } else {
    std::sort(cand.begin(), cand.end(), by_logit);
  }
  const float mx = cand[0].first;
  std::vector<double> prob(cand.size());
  double sum = 0;
  for (size_t i = 0; i < cand.size(); ++i) sum += (prob[i] = std::exp(double(cand[i].first - mx)));
  for (double& v : prob) v /= sum;
  // top-p: the smallest prefix whose mass reaches top_p (at least one token).
  if (p.params.top_p < 1.f) {
    double cum = 0;
    size_t n = 0;
    while (n < prob.size()) {
      cum += prob[n++];
      if (cum >= double(p.params.top_p)) break;
    }
    prob.resize(n);
  }
  // min-p: drop tokens below min_p times the top probability.
  if (p.params.min_p > 0.f) {
    const double floor = prob[0] * p.params.min_p;
    size_t n = 1;
    while (n < prob.size() && prob[n] >= floor) ++n;
    prob.resize(n);
  }
  double total = 0;
  for (double v : prob) total += v;
  double r = p.uniform * total;
  size_t i = 0;
  for (; i + 1 < prob.size(); ++i) {
    r -= prob[i];
    if (r < 0) break;
  }
  return cand[i].second;
}

void top_logprobs_row(const float* logits, int vocab, int32_t token, int k, float* out) {
  float mx = -INFINITY;
  for (int i = 0; i < vocab; ++i)
    if (logits[i] > mx) mx = logits[i];
  double sum = 0;
  for (int i = 0; i < vocab; ++i)
    if (!std::isnan(logits[i])) sum += std::exp(double(logits[i] - mx));
  const float lse = mx + float(std::log(sum));
  out[0] = token >= 0 && token < vocab ? logits[token] - lse : NAN;
  std::vector<int32_t> idx;
  idx.reserve(size_t(vocab));
  for (int i = 0; i < vocab; ++i)
    if (!std::isnan(logits[i])) idx.push_back(i);
  const size_t n = std::min(idx.size(), size_t(std::max(k, 0)));
  // Ranked by log-probability as stored (x - lse in f32, where two logits can meet), then by id.
  auto lp = [&](int32_t i) { return logits[i] - lse; };
  std::partial_sort(idx.begin(), idx.begin() + long(n), idx.end(),
                    [&](int32_t a, int32_t b) { return lp(a) > lp(b) || (lp(a) == lp(b) && a < b); });
  for (int j = 0; j < k; ++j) {
    out[1 + 2 * j] = size_t(j) < n ? float(idx[size_t(j)]) : -1.f;
    out[2 + 2 * j] = size_t(j) < n ? lp(idx[size_t(j)]) : -INFINITY;
  }
}

}  // namespace rill
