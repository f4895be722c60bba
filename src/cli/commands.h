// The `rill` subcommands. Each registers its options on the CLI11 app and returns the function to run.
#pragma once

#include <functional>

#include <CLI/CLI.hpp>

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

}  // namespace rill::cli
