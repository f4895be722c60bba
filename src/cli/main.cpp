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
  std::map<CLI::App*, rill::cli::Run> runs;
  auto* generate = app.add_subcommand("generate", "Generate text from a prompt, streaming it to stdout");
  runs[generate] = rill::cli::add_generate(*generate);
  auto* serve = app.add_subcommand("serve", "Serve a model over an OpenAI-compatible HTTP API");
  runs[serve] = rill::cli::add_serve(*serve);
  auto* chat = app.add_subcommand("chat", "Chat with a model in the terminal, streaming its answers");
  runs[chat] = rill::cli::add_chat(*chat);
  auto* perplexity = app.add_subcommand("perplexity", "Measure perplexity of a text under KV policies (dense, window, sink, recompute)");
  runs[perplexity] = rill::cli::add_perplexity(*perplexity);
  auto* inspect = app.add_subcommand("inspect", "Print a model's architecture, dimensions, size and memory needs");
  runs[inspect] = rill::cli::add_inspect(*inspect);
  auto* tokenize = app.add_subcommand("tokenize", "Print the token ids of a text");
  runs[tokenize] = rill::cli::add_tokenize(*tokenize);
  auto* detokenize = app.add_subcommand("detokenize", "Print the text of token ids");
  runs[detokenize] = rill::cli::add_detokenize(*detokenize);
  auto* chat_template = app.add_subcommand("chat-template", "Render a conversation with the model's chat template");
  runs[chat_template] = rill::cli::add_chat_template(*chat_template);
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
