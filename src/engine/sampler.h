// Sampler: turns one row of logits into a token id. Penalties first (repetition as in HF transformers:
// divide positive logits, multiply negative ones, over prompt and output tokens; presence and frequency
// as in OpenAI's API, over output tokens only), then greedy when temperature is 0, else temperature,
// top-k, top-p and min-p filtering and a draw from a per-request seeded generator. The same seed and the
// same logits give the same tokens on every run and every machine.
#pragma once

#include <cstdint>
#include <deque>
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

  // The same pick, made by a backend (Backend::sample_rows): next_row() appends the row's penalty entries to
  // `penalties` and gives it the uniform of the next output token; record() then takes the token the backend
  // picked (-1, every logit NaN, throws). sample() is next_row(), sample_row() and record().
  //
  // Output token i always draws the i-th uniform of the seeded generator, however many rows are asked for ahead
  // of it: next_row(penalties, ahead) is the row of the token that follows the tokens `ahead` (not recorded yet:
  // speculative drafts), with their counts in its penalties and the uniform of its own index. So a seed gives the
  // same tokens whether or not drafts were verified, when the logits are the same.
  SampleRow next_row(std::vector<PenaltyEntry>* penalties, const std::vector<int32_t>& ahead = {});
  void record(int32_t token);

 private:
  SamplingParams p_;
  std::mt19937_64 rng_;
  std::unordered_map<int32_t, int> output_counts_;
  std::vector<int32_t> seen_;  // prompt and output tokens, unique
  std::vector<char> seen_mask_;
  std::vector<PenaltyEntry> penalties_;
  std::deque<double> draws_;  // uniforms drawn for the tokens after the last recorded one, in order

  void mark_seen(int32_t t);
  double uniform();
  double draw(size_t ahead);  // the uniform of the output token `ahead` places after the next one
};

}  // namespace rill
