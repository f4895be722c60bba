// rill generate: one prompt in, streamed tokens out.
#include <algorithm>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <sstream>

#include "backend/backend.h"
#include "cli/commands.h"
#include "cli/model_loading.h"
#include "core/error.h"
#include "engine/generate.h"
#include "formats/safetensors.h"
#include "model/model.h"

namespace rill::cli {

namespace {

struct GenerateArgs {
  std::string model, tokenizer, prompt, prompt_ids, output = "text", dump_logits, device = "auto",
                                                    dtype = "auto";
  int n = 128, threads = 0, prefill_chunk = 512;
  bool ignore_eos = false, no_bos = false;
  SamplingArgs sampling;
  KvPolicyArgs kv;
};

int run_generate(const GenerateArgs& a) {
  GenerateOptions opt;
  opt.max_new_tokens = a.n;
  opt.sampling = a.sampling.finish();
  opt.stop_at_eos = !a.ignore_eos;
  opt.prefill_chunk = a.prefill_chunk;
  opt.keep_prompt_logits = !a.dump_logits.empty();

  Checkpoint ck = read_checkpoint(a.model);
  auto backend = make_backend(a.device, a.threads, a.dtype);
  Model model(ck, *backend);
  auto tok = open_tokenizer(a.model, a.tokenizer, &model.config());

  std::vector<int32_t> prompt;
  if (!a.prompt_ids.empty()) {
    prompt = parse_id_list(a.prompt_ids, "--prompt-ids");
  } else {
    RILL_CHECK(tok, a.model + ": no tokenizer for a text prompt; pass --tokenizer or use --prompt-ids");
    prompt = tok->encode(a.prompt, !a.no_bos);
  }
  for (int32_t id : prompt)
    RILL_CHECK(id < model.config().vocab_size, "--prompt-ids: token " + std::to_string(id) +
                                                   " is outside the vocabulary (" +
                                                   std::to_string(model.config().vocab_size) + " tokens)");

  opt.kv_policy = a.kv.finish(model.config(), 16);
  const int need_blocks = opt.kv_policy.rolling() ? SinkWindowState::max_blocks(opt.kv_policy, 16)
                                                  : (int(prompt.size()) + a.n + 15) / 16;
  KvCache kv(*backend, model.config(), need_blocks, 16);

  const bool json_out = a.output == "json";
  std::unique_ptr<IncrementalDecoder> detok;
  if (tok) detok = std::make_unique<IncrementalDecoder>(*tok, /*skip_special=*/true, prompt);
  bool first = true;
  auto on_token = [&](int32_t id) {
    if (json_out) return true;
    if (detok) {
      const std::string delta = detok->add(id);
      std::fwrite(delta.data(), 1, delta.size(), stdout);
    } else {
      std::printf("%s%d", first ? "" : " ", id);
    }
    first = false;
    std::fflush(stdout);
    return true;
  };
  GenerateResult r = generate(model, kv, prompt, opt, on_token);

  if (json_out) {
    nlohmann::json j;
    j["prompt_ids"] = prompt;
    j["ids"] = r.ids;
    j["text"] = tok ? tok->decode(r.ids, true) : "";
    std::printf("%s\n", j.dump().c_str());
  } else {
    if (detok) {
      const std::string rest = detok->finish();
      std::fwrite(rest.data(), 1, rest.size(), stdout);
    }
    std::printf("\n");
  }
  if (!a.dump_logits.empty()) {
    Tensor t;
    t.dtype = DType::F32;
    t.shape = {int64_t(prompt.size()), model.config().vocab_size};
    t.data = r.prompt_logits.data();
    write_safetensors(a.dump_logits, {{"logits", t}});
  }
  const double prompt_tps = r.prefill_seconds > 0 ? prompt.size() / r.prefill_seconds : 0;
  const double gen_tps = r.decode_seconds > 0 ? r.decode_steps / r.decode_seconds : 0;
  std::fprintf(stderr, "rill: %zu prompt tokens in %.3f s (%.1f tok/s), %zu generated in %.3f s (%.1f tok/s) on %s\n",
               prompt.size(), r.prefill_seconds, prompt_tps, r.ids.size(), r.decode_seconds, gen_tps,
               backend->name().c_str());
  return 0;
}

}  // namespace

KvPolicy KvPolicyArgs::finish(const ModelConfig& config, int block_size) const {
  const int ctx = config.max_position_embeddings;
  KvPolicy p = KvPolicy::parse(policy, sinks, window, "--kv-policy");
  if (window == 0) p.window = std::min(1024, ctx - p.sinks);
  p.validate(block_size, ctx, "--window");
  return p;
}

void add_kv_policy_options(CLI::App& app, KvPolicyArgs& k) {
  app.add_option("--kv-policy", k.policy,
                 "KV cache policy: dense (keep everything; the context is bounded), sink (attention sinks + a rolling "
                 "window: runs forever in constant memory), window (rolling window, no sinks)")
      ->check(CLI::IsMember({"dense", "sink", "window"}));
  app.add_option("--sinks", k.sinks, "Attention-sink tokens kept forever (sink policy)")->check(CLI::NonNegativeNumber);
  app.add_option("--window", k.window, "Recent tokens kept (sink/window policies; 0: 1024 or the model's context minus the sinks)")
      ->check(CLI::NonNegativeNumber);
}

SamplingParams SamplingArgs::finish() const {
  SamplingParams p = params;
  if (seed >= 0) {
    p.seed = uint64_t(seed);
    p.has_seed = true;
  }
  p.validate();
  return p;
}

void add_sampling_options(CLI::App& app, SamplingArgs& s) {
  app.add_option("--temperature", s.params.temperature, "Sampling temperature; 0 is greedy")->check(CLI::Range(0.0, 100.0));
  app.add_option("--top-k", s.params.top_k, "Keep the k most likely tokens (0: off)")->check(CLI::NonNegativeNumber);
  app.add_option("--top-p", s.params.top_p, "Nucleus sampling: keep the smallest set with this mass (1: off)")
      ->check(CLI::Range(0.0, 1.0));
  app.add_option("--min-p", s.params.min_p, "Drop tokens below min-p times the top probability (0: off)")
      ->check(CLI::Range(0.0, 1.0));
  app.add_option("--repetition-penalty", s.params.repetition_penalty,
                 "Penalize tokens already in the prompt or output (1: off)");
  app.add_option("--presence-penalty", s.params.presence_penalty, "OpenAI presence penalty, -2..2");
  app.add_option("--frequency-penalty", s.params.frequency_penalty, "OpenAI frequency penalty, -2..2");
  app.add_option("--seed", s.seed, "Random seed: the same seed gives the same tokens")->check(CLI::NonNegativeNumber);
}

Run add_generate(CLI::App& app) {
  auto a = std::make_shared<GenerateArgs>();
  add_model_option(app, a->model, "Model: a Hugging Face directory (config.json + *.safetensors) or a llama2.c .bin file");
  auto* prompt = app.add_option("-p,--prompt", a->prompt, "Prompt text (needs a tokenizer)");
  auto* ids = app.add_option("--prompt-ids", a->prompt_ids, "Prompt as comma-separated token ids, e.g. 1,2,3");
  prompt->excludes(ids);
  app.add_option("--tokenizer", a->tokenizer,
                 "tokenizer.json, llama2.c tokenizer.bin, or a directory with one (default: beside the model)");
  app.add_option("-n,--max-tokens", a->n, "Number of tokens to generate")->check(CLI::Range(0, 1 << 20));
  add_sampling_options(app, a->sampling);
  add_kv_policy_options(app, a->kv);
  app.add_flag("--ignore-eos", a->ignore_eos, "Keep generating after an end-of-sequence token");
  app.add_flag("--no-bos", a->no_bos, "Do not add the tokenizer's special tokens (BOS) to a text prompt");
  app.add_option("--output", a->output, "text: stream tokens; json: print {prompt_ids, ids, text} at the end")
      ->check(CLI::IsMember({"text", "json"}));
  app.add_option("--dump-logits", a->dump_logits,
                 "Write the logits at every prompt position to FILE (safetensors, F32 'logits' [prompt_len, vocab])");
  add_device_option(app, a->device, a->dtype);
  app.add_option("--threads", a->threads, "CPU threads (0: all cores)")->check(CLI::NonNegativeNumber);
  app.add_option("--prefill-chunk", a->prefill_chunk, "Prompt tokens per forward step")->check(CLI::PositiveNumber);
  return [a, prompt, ids] {
    a->model = model_or_default(a->model);
    RILL_CHECK(prompt->count() + ids->count() > 0, "give a prompt: --prompt TEXT or --prompt-ids 1,2,3");
    return run_generate(*a);
  };
}

}  // namespace rill::cli
