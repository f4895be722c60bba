// Sampler: turns one row of logits into a token id. Penalties first (repetition as in HF transformers:
// divide positive logits, multiply negative ones, over prompt and output tokens; presence and frequency
// as in OpenAI's API, over output tokens only), then greedy when temperature is 0, else temperature,
// top-k, top-p and min-p filtering and a draw from a per-request seeded generator. The same seed and the
// same logits give the same tokens on every run and every machine.
#pragma once

#include <cstdint>
#include <random>
#include <string>
#include <unordered_map>
#include <vector>

#include "backend/sampling.h"

namespace rill {

class Sampler {
 public:
  explicit Sampler(const SamplingParams& params);

  // Records tokens seen before generation (the prompt), for the repetition penalty.
  void add_prompt(const std::vector<int32_t>& tokens);
  // Picks the next token from logits [vocab] (modified in place) and records it as output.
  int32_t sample(float* logits, int vocab);

  // The same pick, made by a backend (Backend::sample_rows): next_row() draws this step's uniform and appends
  // the row's penalty entries to `penalties`; record() then takes the token the backend picked (-1, every
  // logit NaN, throws). sample() is next_row(), sample_row() and record().
  SampleRow next_row(std::vector<PenaltyEntry>* penalties);
  void record(int32_t token);

 private:
  SamplingParams p_;
  std::mt19937_64 rng_;
  std::unordered_map<int32_t, int> output_counts_;
  std::vector<int32_t> seen_;  // prompt and output tokens, unique
  std::vector<char> seen_mask_;
  std::vector<PenaltyEntry> penalties_;

  void mark_seen(int32_t t);
  double uniform();
};

}  // namespace rill
