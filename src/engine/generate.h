// generate(): one request, start to finish, on one model: chunked prefill of the prompt, then decode with
// the sampler until max_new_tokens or an end-of-sequence token. The building block `rill generate` uses;
// the serving engine (continuous batching) schedules the same Batch/forward calls across many requests.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "engine/sampler.h"
#include "kv/kv_cache.h"
#include "kv/kv_policy.h"
#include "model/model.h"

namespace rill {

struct GenerateOptions {
  int max_new_tokens = 128;
  SamplingParams sampling;
  bool stop_at_eos = true;
  std::vector<int32_t> stop_ids;  // more end-of-sequence ids (e.g. a chat template's end-of-turn token)
  int prefill_chunk = 512;       // prompt tokens per forward step
  bool keep_prompt_logits = false;  // return logits at every prompt position
  KvPolicy kv_policy;  // sink/window: the run may exceed the model's context, in constant memory
};

struct GenerateResult {
  std::vector<int32_t> ids;            // generated tokens (EOS included when it ended the run)
  std::vector<float> prompt_logits;    // [prompt_len, vocab] when keep_prompt_logits
  double prefill_seconds = 0, decode_seconds = 0;
  int decode_steps = 0;  // forward passes after the prefill
};

// Calls on_token for each generated token as soon as it is sampled; returning false stops generation.
GenerateResult generate(Model& model, KvCache& kv, const std::vector<int32_t>& prompt, const GenerateOptions& opt,
                        const std::function<bool(int32_t)>& on_token = {});

}  // namespace rill
