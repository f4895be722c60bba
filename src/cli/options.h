// The options several subcommands share, on CLI11: the model (-m), the device (--device, --dtype, --threads),
// sampling, and the KV policy; and the functions that turn them into what the engine takes.
#pragma once

#include <CLI/CLI.hpp>
#include <cstdint>
#include <string>
#include <vector>

#include "engine/sampler.h"
#include "formats/model_config.h"
#include "kv/kv_policy.h"

namespace rill::cli {

// The model a command uses without --model: rill-tiny, which ships in the repository's models/ folder. Looked
// for beside the binary (BIN/../models, BIN/../share/rill/models) and then in the source tree it was built from;
// throws naming the places it looked.
std::string default_model();
// `given`, or default_model() when it is empty.
std::string model_or_default(const std::string& given);
// Adds -m,--model to a command, optional, defaulting to default_model() when the command runs.
void add_model_option(CLI::App& app, std::string& target, const std::string& what);

// --device (auto, cpu, cuda, cuda:N; default RILL_DEVICE, else auto: the GPU when there is one), --dtype (auto,
// bfloat16, float32; default RILL_DTYPE, else auto) and --threads (CPU threads), for make_backend.
struct DeviceArgs {
  std::string device = "auto", dtype = "auto";
  int threads = 0;
  std::string tuning_cache;  // --tuning-cache: where the backend keeps its tuning between runs
  bool warm_up = true;       // --no-warm-up turns it off (commands that run an Engine)
};
void add_device_options(CLI::App& app, DeviceArgs& d);
// --no-warm-up, for the commands that run an Engine (EngineConfig::warm_up).
void add_warm_up_option(CLI::App& app, DeviceArgs& d);

// Sampling options (generate and chat); finish() validates them into params.
struct SamplingArgs {
  SamplingParams params;
  int64_t seed = -1;
  SamplingParams finish() const;
};
void add_sampling_options(CLI::App& app, SamplingArgs& s);

// --kv-policy, --sinks, --window (generate, chat, serve). finish() fills in the default window (1024, or the
// model's context minus the sinks when smaller) and validates.
struct KvPolicyArgs {
  std::string policy = "dense";
  int sinks = 4, window = 0;
  KvPolicy finish(const ModelConfig& config, int block_size) const;
};
void add_kv_policy_options(CLI::App& app, KvPolicyArgs& k);

// Speculative decoding (generate, chat, serve): --spec none|draft|ngram, --draft-model DIR, --spec-tokens K,
// --spec-max-batch N. load_speculation() (model_loading.h) turns them into the engine's SpecConfig.
struct SpecArgs {
  std::string method = "none", draft_model;
  int tokens = 0;  // 0: the method's default
  int max_batch = 16;
};
void add_spec_options(CLI::App& app, SpecArgs& s);

// "1,2,3" -> ids; errors name `option`.
std::vector<int32_t> parse_id_list(const std::string& s, const char* option);

}  // namespace rill::cli
