#include "cli/options.h"

#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <sstream>

#include "core/error.h"

namespace rill::cli {
namespace fs = std::filesystem;

std::string default_model() {
  std::vector<fs::path> places;
  std::error_code ec;
  const fs::path exe = fs::read_symlink("/proc/self/exe", ec);
  if (!ec) {
    places.push_back(exe.parent_path().parent_path() / "models");
    places.push_back(exe.parent_path().parent_path() / "share" / "rill" / "models");
  }
#ifdef RILL_SOURCE_MODELS_DIR
  places.emplace_back(RILL_SOURCE_MODELS_DIR);
#endif
  std::string looked;
  for (const auto& dir : places) {
    const fs::path m = dir / "rill-tiny";
    if (fs::exists(m / "config.json")) return m.lexically_normal().string();
    looked += (looked.empty() ? "" : ", ") + m.lexically_normal().string();
  }
  throw Error("no --model given, and rill's embedded model rill-tiny is not where it should be (looked in " +
              looked + "); pass --model PATH");
}

std::string model_or_default(const std::string& given) { return given.empty() ? default_model() : given; }

void add_model_option(CLI::App& app, std::string& target, const std::string& what) {
  app.add_option("-m,--model", target, what + " (default: rill-tiny, the small model shipped in models/)");
}

void add_device_options(CLI::App& app, DeviceArgs& d) {
  app.add_option("--device", d.device,
                 "Where the model runs: auto (a CUDA GPU when there is one, else the CPU), cpu, cuda, cuda:N "
                 "(also RILL_DEVICE)")
      ->default_val("auto")
      ->envname("RILL_DEVICE");
  app.add_option(
         "--dtype", d.dtype,
         "What the model computes in: auto (the GPU: bfloat16; the CPU: float32), bfloat16 (GPU only), or "
         "float32 (on the GPU: weights, activations and KV cache in f32, twice the memory, decode about "
         "0.44x the speed of bf16, to match f32 references; also RILL_DTYPE)")
      ->default_val("auto")
      ->check(CLI::IsMember({"auto", "bfloat16", "bf16", "float32", "f32", "float"}))
      ->envname("RILL_DTYPE");
  app.add_option("--threads", d.threads, "CPU threads for the model (0: all cores)")
      ->check(CLI::NonNegativeNumber);
  app.add_option(
         "--tuning-cache", d.tuning_cache,
         "Directory for GEMM tuning (GPU): with it, each matrix shape's algorithm is the fastest of cuBLASLt's "
         "candidates, timed once and kept there per GPU, driver and cuBLASLt version, so later starts skip the "
         "search and compute the same; without it, cuBLASLt's first choice (also RILL_TUNING_CACHE)")
      ->envname("RILL_TUNING_CACHE");
}

void add_warm_up_option(CLI::App& app, DeviceArgs& d) {
  app.add_flag(
      "!--no-warm-up", d.warm_up,
      "Do not run each kind of engine step once at start (on a GPU: prompt chunks of each size, decode "
      "graphs, sampling kernels), so the first requests pay for setting them up instead");
}

void add_spec_options(CLI::App& app, SpecArgs& s) {
  app.add_option("--spec", s.method,
                 "Speculative decoding: none; draft (a small model with the same tokenizer proposes, see "
                 "--draft-model); ngram (prompt lookup: the continuation of the latest earlier match of the last "
                 "2-4 tokens, no second model; for output that repeats its input: edits, summaries, code). Output "
                 "is the same as without (greedy, and seeded sampling)")
      ->check(CLI::IsMember({"none", "draft", "ngram"}));
  app.add_option("--draft-model", s.draft_model,
                 "The draft model for --spec draft (implies it): a Hugging Face directory sharing the model's "
                 "vocabulary (default: the model's directory with -draft appended, e.g. models/rill-tiny-draft)");
  app.add_option("--spec-tokens", s.tokens,
                 "Draft tokens verified per step and sequence, at most (default: 4, or 16 / (query heads per KV "
                 "head) - 1 when smaller: the most a GPU verification step takes at the cost of about one decode "
                 "step)")
      ->check(CLI::Range(1, 16));
  app.add_option("--spec-max-batch", s.max_batch,
                 "Speculate only in steps where at most this many sequences decode (larger batches are "
                 "compute-bound: verifying drafts there costs more than it saves)")
      ->check(CLI::PositiveNumber);
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

KvPolicy KvPolicyArgs::finish(const ModelConfig& config, int block_size) const {
  const int ctx = config.max_position_embeddings;
  KvPolicy p = KvPolicy::parse(policy, sinks, window, "--kv-policy");
  if (window == 0) p.window = std::min(1024, ctx - p.sinks);
  p.validate(block_size, ctx, "--window");
  return p;
}

void add_kv_policy_options(CLI::App& app, KvPolicyArgs& k) {
  app.add_option("--kv-policy", k.policy,
                 "KV cache policy: dense (keep everything; the context is bounded), sink (attention sinks + a window "
                 "of the latest tokens: runs forever in constant memory), window (the latest tokens only, no sinks)")
      ->check(CLI::IsMember({"dense", "sink", "window"}));
  app.add_option("--sinks", k.sinks, "Attention-sink tokens kept forever (sink policy)")->check(CLI::NonNegativeNumber);
  app.add_option("--window", k.window, "Latest tokens kept (sink/window policies; 0: 1024 or the model's context minus the sinks)")
      ->check(CLI::NonNegativeNumber);
}

std::vector<int32_t> parse_id_list(const std::string& s, const char* option) {
  std::vector<int32_t> ids;
  std::stringstream in(s);
  std::string item;
  while (std::getline(in, item, ',')) {
    size_t used = 0;
    long v = 0;
    try {
      v = std::stol(item, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    RILL_CHECK(used > 0 && item.find_first_not_of(" \t", used) == std::string::npos && v >= 0 && v <= INT32_MAX,
               std::string(option) + ": '" + item + "' is not a token id (expected comma-separated integers, e.g. 1,2,3)");
    ids.push_back(int32_t(v));
  }
  RILL_CHECK(!ids.empty(), std::string(option) + ": no token ids given");
  return ids;
}

}  // namespace rill::cli
