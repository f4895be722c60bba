// The `rill` subcommands. Each registers its options on the CLI11 app and returns the function to run.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include <CLI/CLI.hpp>

#include "engine/sampler.h"

namespace rill::cli {

using Run = std::function<int()>;

Run add_generate(CLI::App& app);
Run add_inspect(CLI::App& app);
Run add_tokenize(CLI::App& app);
Run add_detokenize(CLI::App& app);
Run add_chat_template(CLI::App& app);
Run add_chat(CLI::App& app);
Run add_serve(CLI::App& app);

// Sampling options shared by generate and chat; finish() validates them into params.
struct SamplingArgs {
  SamplingParams params;
  int64_t seed = -1;
  SamplingParams finish() const;
};
void add_sampling_options(CLI::App& app, SamplingArgs& s);

// "1,2,3" -> ids; errors name `option`.
std::vector<int32_t> parse_id_list(const std::string& s, const char* option);

}  // namespace rill::cli
