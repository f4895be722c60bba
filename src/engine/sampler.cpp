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

SampleRow Sampler::next_row(std::vector<PenaltyEntry>* penalties) {
  SampleRow r;
  r.params = p_;
  r.penalty_begin = r.penalty_end = int32_t(penalties->size());
  if (p_.repetition_penalty != 1.f) {  // every token seen, with its output count
    for (int32_t t : seen_) {
      const auto it = output_counts_.find(t);
      penalties->push_back({t, it == output_counts_.end() ? 0 : it->second});
    }
  } else if (p_.presence_penalty != 0.f || p_.frequency_penalty != 0.f) {  // output tokens only
    for (const auto& [t, count] : output_counts_) penalties->push_back({t, count});
  }
  r.penalty_end = int32_t(penalties->size());
  if (p_.temperature != 0.f) r.uniform = uniform();  // one draw per sampled token, none when greedy
  return r;
}

void Sampler::record(int32_t token) {
  RILL_CHECK(token >= 0, "sampling: every logit is NaN");
  ++output_counts_[token];
  mark_seen(token);
}

int32_t Sampler::sample(float* logits, int vocab) {
  penalties_.clear();
  const SampleRow row = next_row(&penalties_);
  const int32_t chosen = sample_row(logits, vocab, row, penalties_.data());
  record(chosen);
  return chosen;
}

}  // namespace rill
