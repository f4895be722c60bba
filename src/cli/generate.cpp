// rill generate: one prompt in, streamed tokens out. A client of the Engine, as the server is: the prompt goes in
// as one request, and its tokens are printed as the engine streams them.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "cli/model_loading.h"
#include "cli/options.h"
#include "core/error.h"
#include "engine/engine.h"
#include "engine/scorer.h"
#include "formats/safetensors.h"

namespace rill::cli {

namespace {

struct GenerateArgs {
  std::string model, tokenizer, prompt, prompt_ids, output = "text", dump_logits;
  int n = 128, prefill_chunk = 512, repeat = 1;
  bool ignore_eos = false, no_bos = false;
  DeviceArgs device;
  SamplingArgs sampling;
  KvPolicyArgs kv;
  SpecArgs spec;
};

double seconds(std::chrono::steady_clock::duration d) { return std::chrono::duration<double>(d).count(); }

// The logits at every prompt position, written to `path` (safetensors, F32 "logits" [prompt, vocab]).
void dump_prompt_logits(Model& model, const std::vector<int32_t>& prompt, int chunk, const std::string& path) {
  const int bs = kDefaultBlockSize;
  KvCache kv(model.backend(), model.config(), kv_blocks_for_sequence(KvPolicy{}, int64_t(prompt.size()), bs), bs);
  ModelRunner runner(model);
  std::vector<float> logits;
  {
    Scorer scorer(runner, kv, KvPolicy{}, chunk);
    scorer.feed(prompt, Logits::All, &logits);
  }
  Tensor t;
  t.dtype = DType::F32;
  t.shape = {int64_t(prompt.size()), model.config().vocab_size};
  t.data = logits.data();
  write_safetensors(path, {{"logits", t}});
}

int run_generate(const GenerateArgs& a) {
  LoadedModel m = load_model(a.model, a.device, a.tokenizer);
  std::fprintf(stderr, "rill: loaded %s: %s\n", a.model.c_str(),
               m.times.describe(m.model->weight_bytes()).c_str());
  const ModelConfig& config = m.config();
  std::vector<int32_t> prompt;
  if (!a.prompt_ids.empty()) {
    prompt = parse_id_list(a.prompt_ids, "--prompt-ids");
  } else {
    RILL_CHECK(m.tokenizer, a.model + ": no tokenizer for a text prompt; pass --tokenizer or use --prompt-ids");
    prompt = m.tokenizer->encode(a.prompt, !a.no_bos);
  }
  for (int32_t id : prompt)
    RILL_CHECK(id < config.vocab_size, "--prompt-ids: token " + std::to_string(id) + " is outside the vocabulary (" +
                                           std::to_string(config.vocab_size) + " tokens)");
  if (!a.dump_logits.empty()) dump_prompt_logits(*m.model, prompt, a.prefill_chunk, a.dump_logits);

  Request r;
  r.prompt = prompt;
  r.max_tokens = a.n;
  r.sampling = a.sampling.finish();
  r.ignore_eos = a.ignore_eos;
  EngineConfig ec;
  r.kv_policy = a.kv.finish(config, ec.block_size);
  const int64_t total = int64_t(prompt.size()) + a.n;
  ec.num_blocks = kv_blocks_for_sequence(r.kv_policy, total, ec.block_size);
  ec.max_batch_tokens = a.prefill_chunk;
  ec.max_num_seqs = 1;
  ec.max_model_len = int(std::max<int64_t>(config.max_position_embeddings, total));  // as long as asked
  ec.warm_up = a.device.warm_up;
  std::unique_ptr<Model> draft;
  ec.spec = load_speculation(a.spec, a.model, *m.model, m.tokenizer.get(), &draft);
  if (ec.spec.method != SpecMethod::None) std::fprintf(stderr, "rill: %s\n", describe_speculation(ec.spec, a.spec).c_str());
  for (int run = 0; run < a.repeat; ++run) {
    std::vector<int32_t> ids;
    std::unique_ptr<IncrementalDecoder> detok;
    if (m.tokenizer)
      detok = std::make_unique<IncrementalDecoder>(*m.tokenizer, /*skip_special=*/true, prompt);
    const bool json_out = a.output == "json";
    // Each run has an engine of its own (an empty KV cache: no prefix of an earlier run is reused), made and
    // warmed up before the clock starts; the model, its backend and what they set up on the way (GEMM
    // algorithms, loaded kernels, device memory) stay.
    std::unique_ptr<Engine> engine;
    if (a.n > 0) {
      engine = std::make_unique<Engine>(*m.model, ec);
      if (run == 0 && ec.warm_up) {
        std::fprintf(stderr, "rill: %s\n", describe_warm_up(engine->warm_up_report(), *m.backend).c_str());
        m.backend->save_tuning();
      }
    }
    const auto t0 = std::chrono::steady_clock::now();
    auto t_first = t0, t_last = t0;
    if (engine) {
      const auto stream = engine->submit(r);
      for (;;) {
        const Event e = *stream->next();
        if (e.token < 0) {
          RILL_CHECK(e.finish != FinishReason::Error, "generation failed: " + e.error);
          break;
        }
        t_last = std::chrono::steady_clock::now();
        if (ids.empty()) t_first = t_last;
        ids.push_back(e.token);
        if (json_out) continue;
        if (detok) {
          const std::string delta = detok->add(e.token);
          std::fwrite(delta.data(), 1, delta.size(), stdout);
        } else {
          std::printf("%s%d", ids.size() == 1 ? "" : " ", e.token);
        }
        std::fflush(stdout);
      }
    }

    if (json_out) {
      nlohmann::json j;
      j["prompt_ids"] = prompt;
      j["ids"] = ids;
      j["text"] = m.tokenizer ? m.tokenizer->decode(ids, true) : "";
      std::printf("%s\n", j.dump().c_str());
    } else {
      if (detok) {
        const std::string rest = detok->finish();
        std::fwrite(rest.data(), 1, rest.size(), stdout);
      }
      std::printf("\n");
    }
    // Prefill: until the first token; decode: the steps after it.
    const double prefill = seconds(t_first - t0), decode = seconds(t_last - t_first);
    const size_t steps = ids.empty() ? 0 : ids.size() - 1;
    const std::string which = a.repeat > 1 ? " (run " + std::to_string(run + 1) + ")" : "";
    std::fprintf(
        stderr,
        "rill: %zu prompt tokens in %.3f s (%.1f tok/s), %zu generated in %.3f s (%.1f tok/s) on %s%s\n",
        prompt.size(), prefill, prefill > 0 ? double(prompt.size()) / prefill : 0.0, ids.size(), decode,
        decode > 0 ? double(steps) / decode : 0.0, m.backend->name().c_str(), which.c_str());
    if (engine) {
      const std::string spec = describe_spec_metrics(engine->metrics());
      if (!spec.empty()) std::fprintf(stderr, "rill: %s\n", spec.c_str());
    }
  }
  return 0;
}

}  // namespace

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
  add_device_options(app, a->device);
  add_warm_up_option(app, a->device);
  add_spec_options(app, a->spec);
  app.add_option("--prefill-chunk", a->prefill_chunk, "Prompt tokens per forward step")
      ->check(CLI::PositiveNumber);
  app.add_option("--repeat", a->repeat,
                 "Run the prompt this many times in one process, each with a fresh KV cache (benchmarking: "
                 "the first run is the cold one), printing the timing of each")
      ->check(CLI::Range(1, 1000));
  return [a, prompt, ids] {
    a->model = model_or_default(a->model);
    RILL_CHECK(prompt->count() + ids->count() > 0, "give a prompt: --prompt TEXT or --prompt-ids 1,2,3");
    return run_generate(*a);
  };
}

}  // namespace rill::cli
