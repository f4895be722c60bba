#include "engine/generate.h"

#include <algorithm>
#include <chrono>

#include "core/error.h"
#include "engine/kv_stream.h"

namespace rill {

namespace {
double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}
bool is_stop(const ModelConfig& c, const GenerateOptions& opt, int32_t tok) {
  return opt.stop_at_eos && (std::find(c.eos_token_ids.begin(), c.eos_token_ids.end(), tok) != c.eos_token_ids.end() ||
                             std::find(opt.stop_ids.begin(), opt.stop_ids.end(), tok) != opt.stop_ids.end());
}

// The same run through a KvStream under a rolling KV policy.
GenerateResult generate_rolling(Model& model, KvCache& kv, const std::vector<int32_t>& prompt,
                                const GenerateOptions& opt, const std::function<bool(int32_t)>& on_token) {
  GenerateResult r;
  KvStream stream(model, kv, opt.kv_policy, opt.prefill_chunk);
  Sampler sampler(opt.sampling);
  sampler.add_prompt(prompt);
  std::vector<float> logits;
  const size_t vocab = size_t(model.config().vocab_size);
  auto t0 = std::chrono::steady_clock::now();
  stream.feed(prompt, opt.keep_prompt_logits ? Logits::All : Logits::Last, &logits);
  if (opt.keep_prompt_logits) r.prompt_logits = logits;
  r.prefill_seconds = seconds_since(t0);
  if (opt.max_new_tokens == 0) return r;
  std::vector<float> next(logits.end() - long(vocab), logits.end());
  t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < opt.max_new_tokens; ++i) {
    const int32_t tok = sampler.sample(next.data(), int(vocab));
    r.ids.push_back(tok);
    if (on_token && !on_token(tok)) break;
    if (is_stop(model.config(), opt, tok) || i + 1 == opt.max_new_tokens) break;
    stream.feed({tok}, Logits::Last, &next);
    ++r.decode_steps;
  }
  r.decode_seconds = seconds_since(t0);
  return r;
}

}  // namespace

GenerateResult generate(Model& model, KvCache& kv, const std::vector<int32_t>& prompt, const GenerateOptions& opt,
                        const std::function<bool(int32_t)>& on_token) {
  const ModelConfig& c = model.config();
  RILL_CHECK(!prompt.empty(), "the prompt is empty (give at least one token)");
  RILL_CHECK(opt.max_new_tokens >= 0, "max_new_tokens must be >= 0");
  RILL_CHECK(opt.prefill_chunk > 0, "prefill_chunk must be positive");
  if (opt.kv_policy.rolling()) return generate_rolling(model, kv, prompt, opt, on_token);
  const int total = int(prompt.size()) + opt.max_new_tokens;
  BlockManager& blocks = kv.blocks();
  std::vector<int32_t> table;
  RILL_CHECK(blocks.grow(total, &table),
             "prompt (" + std::to_string(prompt.size()) + " tokens) + max_new_tokens (" +
                 std::to_string(opt.max_new_tokens) + ") needs " + std::to_string(blocks.blocks_needed(total, 0)) +
                 " KV blocks but only " + std::to_string(blocks.num_free()) + " are free");
  struct Release {
    std::vector<int32_t>& t;
    BlockManager& b;
    ~Release() { b.release(&t); }
  } release{table, blocks};

  GenerateResult r;
  Sampler sampler(opt.sampling);
  sampler.add_prompt(prompt);
  std::vector<float> logits;
  const size_t vocab = size_t(c.vocab_size);
  if (opt.keep_prompt_logits) r.prompt_logits.reserve(prompt.size() * vocab);

  auto t0 = std::chrono::steady_clock::now();
  for (size_t begin = 0; begin < prompt.size(); begin += size_t(opt.prefill_chunk)) {
    const size_t end = std::min(prompt.size(), begin + size_t(opt.prefill_chunk));
    Batch b;
    b.add_sequence({prompt.begin() + long(begin), prompt.begin() + long(end)}, int(begin), int(begin), table,
                   kv.block_size(),
                   opt.keep_prompt_logits ? Logits::All : end == prompt.size() ? Logits::Last : Logits::None);
    model.forward(b, kv, &logits);
    if (opt.keep_prompt_logits) r.prompt_logits.insert(r.prompt_logits.end(), logits.begin(), logits.end());
  }
  r.prefill_seconds = seconds_since(t0);
  if (opt.max_new_tokens == 0) return r;

  // The last prompt position's logits are the last row of the last chunk.
  std::vector<float> next(logits.end() - long(vocab), logits.end());
  t0 = std::chrono::steady_clock::now();
  int pos = int(prompt.size());
  // Decode steps pick the token on the device (the argmax, or the whole sampler): only its id comes back.
  const bool plain_greedy = opt.sampling.plain_greedy();
  DeviceSampling sampling;
  std::vector<int32_t> picked;
  for (int i = 0; i < opt.max_new_tokens; ++i) {
    int32_t tok;
    if (picked.empty()) {
      tok = sampler.sample(next.data(), int(vocab));
    } else {
      tok = picked[0];
      sampler.record(tok);
    }
    r.ids.push_back(tok);
    const bool eos = is_stop(c, opt, tok);
    if (on_token && !on_token(tok)) break;
    if (eos || i + 1 == opt.max_new_tokens) break;
    Batch b;
    b.add_sequence({tok}, pos, pos, table, kv.block_size(), Logits::Last);
    if (!plain_greedy) {
      sampling.rows.clear();
      sampling.penalties.clear();
      sampling.rows.push_back(sampler.next_row(&sampling.penalties));
    }
    model.forward(b, kv, &next, &picked, plain_greedy ? nullptr : &sampling);
    ++pos;
    ++r.decode_steps;
  }
  r.decode_seconds = seconds_since(t0);
  return r;
}

}  // namespace rill
