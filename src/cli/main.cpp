// rill: run and serve large language models. See `rill --help` and README.md.
#include <cstdio>
#include <map>

#include "cli/commands.h"
#include "core/error.h"

int main(int argc, char** argv) {
  CLI::App app{"rill: run and serve large language models (Llama, Mistral, Qwen2/3, Mixtral, Qwen3-MoE)"};
  app.set_version_flag("--version", "rill 0.1.0");
  app.option_defaults()->always_capture_default();  // --help shows every default
  app.require_subcommand(1);
  struct Command {
    const char* name;
    const char* what;
    rill::cli::Run (*add)(CLI::App&);
  };
  static constexpr Command kCommands[] = {
      {"generate", "Generate text from a prompt, streaming it to stdout", rill::cli::add_generate},
      {"serve", "Serve a model over an OpenAI-compatible HTTP API", rill::cli::add_serve},
      {"chat", "Chat with a model in the terminal, streaming its answers", rill::cli::add_chat},
      {"perplexity", "Measure perplexity of a text under KV policies (dense, window, sink, recompute)",
       rill::cli::add_perplexity},
      {"inspect", "Print a model's architecture, dimensions, size and memory needs", rill::cli::add_inspect},
      {"tokenize", "Print the token ids of a text", rill::cli::add_tokenize},
      {"detokenize", "Print the text of token ids", rill::cli::add_detokenize},
      {"chat-template", "Render a conversation with the model's chat template", rill::cli::add_chat_template},
  };
  std::map<CLI::App*, rill::cli::Run> runs;
  for (const Command& c : kCommands) {
    CLI::App* sub = app.add_subcommand(c.name, c.what);
    runs[sub] = c.add(*sub);
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  try {
    for (auto& [sub, run] : runs)
      if (sub->parsed()) return run();
  } catch (const rill::Error& e) {
    std::fprintf(stderr, "rill: error: %s\n", e.what());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "rill: internal error: %s\n", e.what());
    return 2;
  }
  return 0;
}
