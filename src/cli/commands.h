// The `rill` subcommands. Each registers its options on the CLI11 app and returns the function to run.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include <CLI/CLI.hpp>

#include "engine/sampler.h"
#include "kv/kv_policy.h"
#include "model/config.h"

namespace rill::cli {

using Run = std::function<int()>;

Run add_generate(CLI::App& app);
Run add_inspect(CLI::App& app);
Run add_tokenize(CLI::App& app);
Run add_detokenize(CLI::App& app);
Run add_chat_template(CLI::App& app);
Run add_chat(CLI::App& app);
Run add_serve(CLI::App& app);
Run add_perplexity(CLI::App& app);

// Sampling options shared by generate and chat; finish() validates them into params.
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

// "1,2,3" -> ids; errors name `option`.
std::vector<int32_t> parse_id_list(const std::string& s, const char* option);

}  // namespace rill::cli
