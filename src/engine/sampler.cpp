#include "engine/sampler.h"

#include <cmath>

#include "core/error.h"

namespace rill {

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

double Sampler::draw(size_t ahead) {
  while (draws_.size() <= ahead) draws_.push_back(uniform());
  return draws_[ahead];
}

SampleRow Sampler::next_row(std::vector<PenaltyEntry>* penalties, const std::vector<int32_t>& ahead) {
  SampleRow r;
  r.params = p_;
  r.penalty_begin = r.penalty_end = int32_t(penalties->size());
  const bool repetition = p_.repetition_penalty != 1.f;
  if (repetition || p_.presence_penalty != 0.f || p_.frequency_penalty != 0.f) {
    // The tokens `ahead` count as output (in the order they would be recorded; usually none).
    std::unordered_map<int32_t, int> extra;
    for (int32_t t : ahead) ++extra[t];
    auto count = [&](int32_t t) {
      const auto it = output_counts_.find(t);
      const auto e = extra.find(t);
      return (it == output_counts_.end() ? 0 : it->second) + (e == extra.end() ? 0 : e->second);
    };
    if (repetition) {  // every token seen, with its output count
      for (int32_t t : seen_) penalties->push_back({t, count(t)});
      for (const auto& [t, n] : extra)
        if (size_t(t) >= seen_mask_.size() || !seen_mask_[size_t(t)]) penalties->push_back({t, n});
    } else {  // output tokens only
      for (const auto& [t, n] : output_counts_) penalties->push_back({t, count(t)});
      for (const auto& [t, n] : extra)
        if (!output_counts_.count(t)) penalties->push_back({t, n});
    }
  }
  r.penalty_end = int32_t(penalties->size());
  if (p_.temperature != 0.f) r.uniform = draw(ahead.size());  // one draw per output token, none when greedy
  return r;
}

void Sampler::record(int32_t token) {
  RILL_CHECK(token >= 0, "sampling: every logit is NaN");
  ++output_counts_[token];
  mark_seen(token);
  if (p_.temperature != 0.f) {  // this token's draw is used up
    if (draws_.empty()) uniform();
    else draws_.pop_front();
  }
}

int32_t Sampler::sample(float* logits, int vocab) {
  penalties_.clear();
  const SampleRow row = next_row(&penalties_);
  const int32_t chosen = sample_row(logits, vocab, row, penalties_.data());
  record(chosen);
  return chosen;
}

}  // namespace rill
