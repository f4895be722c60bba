// Sampling one token from a row of logits: the rule every backend's sample_rows keeps, and its reference
// implementation on the host.
//
// Penalties first: for each entry of the row's penalty list (unique tokens), the repetition penalty as in HF
// transformers (divide a positive logit, multiply a negative one) when it is not 1, then, for tokens the
// output holds, presence + frequency * count subtracted as in OpenAI's API. Then greedy (the first maximum)
// when temperature is 0. Otherwise the logits are divided by the temperature and ranked (descending, ties
// by lower id); top-k keeps the first k; top-p keeps the shortest prefix whose probability reaches top_p;
// min-p keeps tokens of at least min_p times the top probability; and the token is the one at which the
// kept tokens' cumulative probability, in rank order, first exceeds uniform * their total. The uniform draw
// comes from the caller (the request's seeded generator), so a seed gives the same tokens on every backend.
#pragma once

#include <cstdint>
#include <type_traits>

namespace rill {

// What a request asks of the sampler.
struct SamplingParams {
  float temperature = 1.0f;  // 0: greedy
  int32_t top_k = 0;         // 0: off
  float top_p = 1.0f;        // 1: off
  float min_p = 0.0f;        // 0: off
  float repetition_penalty = 1.0f;
  float presence_penalty = 0.0f;
  float frequency_penalty = 0.0f;
  uint64_t seed = 0;
  bool has_seed = false;

  // Throws rill::Error naming the parameter when a value is out of range.
  void validate() const;
  // Greedy with no penalty: the token is the argmax of the raw logits (which the device can compute).
  bool plain_greedy() const {
    return temperature == 0.f && repetition_penalty == 1.f && presence_penalty == 0.f && frequency_penalty == 0.f;
  }
};

// One row's parameters, as sample_rows reads them (plain data, copied to the device as bytes).
struct SampleRow {
  SamplingParams params;                       // the seed is not used: the draw is `uniform`
  int32_t penalty_begin = 0, penalty_end = 0;  // the row's entries in the penalty list
  double uniform = 0.0;                        // in [0, 1); unused when greedy
};
static_assert(std::is_trivially_copyable_v<SampleRow>, "sample_rows copies rows to the device as bytes");

// A token the sequence has seen (prompt or output) and how many times the output holds it.
struct PenaltyEntry {
  int32_t token = 0;
  int32_t output_count = 0;
};

// Applies the penalties to logits [vocab] in place and returns the token, or -1 when no logit is a number above
// -inf (every one NaN, or masked). A masked (-inf) logit is never drawn.
int32_t sample_row(float* logits, int vocab, const SampleRow& row, const PenaltyEntry* penalties);

// The most log-probabilities any request may ask for (OpenAI's top_logprobs limit).
constexpr int kMaxTopLogprobs = 20;

// Log-probabilities under the model's distribution (the log-softmax of the raw logits, before penalties and
// temperature), the rule of every backend's top_logprobs: lse = max + log(sum exp(double(x - max))) over the
// non-NaN logits, and a token's log-probability is its logit minus lse (f32). out[0] is that of `token` (NaN
// for token < 0), then k (id, log-probability) pairs, ids stored as floats, most likely first, ties by lower
// id, NaN logits never listed (pairs past the last listable token are (-1, -inf)). out holds 1 + 2k floats.
void top_logprobs_row(const float* logits, int vocab, int32_t token, int k, float* out);

}  // namespace rill
