// What the tests hold the engine to, computed outside it: the logits of every prompt position (a Scorer), and
// the tests' minimal reference loop, one request alone, token by token (the Scorer's logits, the host Sampler,
// the token fed back). And a request through an Engine of its own, as `rill generate` runs it.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <vector>

#include "engine/engine.h"
#include "engine/scorer.h"

namespace rill::test {

// The logits [prompt, vocab] at every position of `prompt`, prefilled in chunks of `chunk` tokens.
inline std::vector<float> prompt_logits(Model& model, KvCache& kv, const std::vector<int32_t>& prompt, int chunk = 512) {
  ModelRunner runner(model);
  Scorer scorer(runner, kv, KvPolicy{}, chunk);
  std::vector<float> logits;
  scorer.feed(prompt, Logits::All, &logits);
  return logits;
}

// r alone: its prompt, then each token sampled on the host from the last position's logits and fed back, until
// max_tokens or an end-of-sequence token (unless r.ignore_eos), under r's KV policy.
inline std::vector<int32_t> reference_generate(Model& model, KvCache& kv, const Request& r) {
  ModelRunner runner(model);
  Scorer scorer(runner, kv, r.kv_policy, 512);
  Sampler sampler(r.sampling);
  sampler.add_prompt(r.prompt);
  std::vector<float> logits;
  scorer.feed(r.prompt, Logits::Last, &logits);
  const std::vector<int>& eos = model.config().eos_token_ids;
  auto ends = [&](int32_t t) {
    return !r.ignore_eos && (std::find(eos.begin(), eos.end(), t) != eos.end() ||
                             std::find(r.stop_ids.begin(), r.stop_ids.end(), t) != r.stop_ids.end());
  };
  std::vector<int32_t> out;
  while (int(out.size()) < r.max_tokens) {
    out.push_back(sampler.sample(logits.data(), model.config().vocab_size));
    if (ends(out.back()) || int(out.size()) == r.max_tokens) break;
    scorer.feed({out.back()}, Logits::Last, &logits);
  }
  return out;
}

// What a request's stream gave: its tokens (and their log-probabilities), then its final event.
struct Result {
  std::vector<int32_t> tokens;
  std::vector<float> logprobs;
  Event end;
};

// Reads s to its final event (a failure if it stalls for a minute).
inline Result drain(RequestStream& s) {
  Result r;
  for (;;) {
    auto e = s.next(60.0);
    if (!e) {
      ADD_FAILURE() << "stream stalled";
      return r;
    }
    if (e->token < 0) {
      r.end = *e;
      return r;
    }
    r.tokens.push_back(e->token);
    r.logprobs.push_back(e->logprob);
  }
}

// r through an Engine of its own with `num_blocks` KV blocks (context as long as r asks), which must give every
// block back.
inline std::vector<int32_t> engine_generate(Model& model, const Request& r, int num_blocks = 64) {
  EngineConfig ec;
  ec.num_blocks = num_blocks;
  ec.max_model_len = std::max<int>(model.config().max_position_embeddings, int(r.prompt.size()) + r.max_tokens);
  Engine engine(model, ec);
  const auto stream = engine.submit(r);
  std::vector<int32_t> out;
  for (;;) {
    const auto e = stream->next(120.0);
    if (!e) {
      ADD_FAILURE() << "the engine's stream stalled";
      return out;
    }
    if (e->token >= 0) {
      out.push_back(e->token);
      continue;
    }
    EXPECT_NE(e->finish, FinishReason::Error) << e->error;
    break;
  }
  engine.shutdown();
  EXPECT_EQ(engine.metrics().blocks_free, num_blocks) << "the engine must give back every KV block";
  return out;
}

// A greedy request for max_tokens tokens after `prompt`, ignoring end-of-sequence tokens.
inline Request greedy_request(const std::vector<int32_t>& prompt, int max_tokens) {
  Request r;
  r.prompt = prompt;
  r.max_tokens = max_tokens;
  r.sampling.temperature = 0;
  r.ignore_eos = true;
  return r;
}

}  // namespace rill::test
