#include "engine/sampler.h"

#include <algorithm>
#include <cmath>

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

Sampler::Sampler(const SamplingParams& params) : p_(params) {
  p_.validate();
  rng_.seed(p_.has_seed ? p_.seed : std::random_device{}());
}

void Sampler::mark_seen(int32_t t) {
  if (t < 0) return;
  if (size_t(t) >= seen_mask_.size()) seen_mask_.resize(size_t(t) + 1, 0);
  if (!seen_mask_[size_t(t)]) {
    seen_mask_[size_t(t)] = 1;
    seen_.push_back(t);
  }
}

void Sampler::add_prompt(const std::vector<int32_t>& tokens) {
  for (int32_t t : tokens) mark_seen(t);
}

double Sampler::uniform() { return double(rng_() >> 11) * 0x1.0p-53; }  // [0, 1), 53 random bits

int32_t Sampler::sample(float* logits, int vocab) {
  if (p_.repetition_penalty != 1.f)
    for (int32_t t : seen_)
      if (t < vocab) logits[t] = logits[t] > 0 ? logits[t] / p_.repetition_penalty : logits[t] * p_.repetition_penalty;
  if (p_.presence_penalty != 0.f || p_.frequency_penalty != 0.f)
    for (const auto& [t, count] : output_counts_)
      if (t < vocab) logits[t] -= p_.presence_penalty + p_.frequency_penalty * float(count);

  int32_t chosen = 0;
  if (p_.temperature == 0.f) {
    chosen = int32_t(std::max_element(logits, logits + vocab) - logits);  // first maximum on ties
  } else {
    // Candidates sorted by logit (descending; ties by id), then filtered.
    cand_.clear();
    for (int i = 0; i < vocab; ++i)
      if (!std::isnan(logits[i])) cand_.push_back({logits[i] / p_.temperature, i});
    RILL_CHECK(!cand_.empty(), "sampling: every logit is NaN");
    auto by_logit = [](const auto& a, const auto& b) { return a.first > b.first || (a.first == b.first && a.second < b.second); };
    size_t keep = cand_.size();
    if (p_.top_k > 0 && size_t(p_.top_k) < keep) {
      keep = size_t(p_.top_k);
      std::partial_sort(cand_.begin(), cand_.begin() + long(keep), cand_.end(), by_logit);
      cand_.resize(keep);
    } else {
      std::sort(cand_.begin(), cand_.end(), by_logit);
    }
    const float mx = cand_[0].first;
    std::vector<double> prob(cand_.size());
    double sum = 0;
    for (size_t i = 0; i < cand_.size(); ++i) sum += (prob[i] = std::exp(double(cand_[i].first - mx)));
    for (double& v : prob) v /= sum;
    // top-p: the smallest prefix whose mass reaches top_p (at least one token).
    if (p_.top_p < 1.f) {
      double cum = 0;
      size_t n = 0;
      while (n < prob.size()) {
        cum += prob[n++];
        if (cum >= double(p_.top_p)) break;
      }
      prob.resize(n);
    }
    // min-p: drop tokens below min_p times the top probability.
    if (p_.min_p > 0.f) {
      const double floor = prob[0] * p_.min_p;
      size_t n = 1;
      while (n < prob.size() && prob[n] >= floor) ++n;
      prob.resize(n);
    }
    double total = 0;
    for (double v : prob) total += v;
    double r = uniform() * total;
    size_t i = 0;
    for (; i + 1 < prob.size(); ++i) {
      r -= prob[i];
      if (r < 0) break;
    }
    chosen = cand_[i].second;
  }
  ++output_counts_[chosen];
  mark_seen(chosen);
  return chosen;
}

}  // namespace rill
