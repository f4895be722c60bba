// Shared by the subcommands: opening a model and its tokenizer from command-line paths.
#pragma once

#include <memory>
#include <string>

#include "tokenizer/tokenizer.h"
#include "model/config.h"

namespace CLI {
class App;
}

namespace rill::cli {

// The model a command uses without --model: rill-tiny, which ships in the repository's models/ folder.
// Looked for beside the binary (BIN/../models, BIN/../share/rill/models) and then in the source tree it was
// built from; throws naming the places it looked.
std::string default_model();
// `given`, or default_model() when it is empty.
std::string model_or_default(const std::string& given);
// Adds -m,--model to a command, optional, defaulting to default_model() when the command runs.
void add_model_option(CLI::App& app, std::string& target, const std::string& what);
// Adds --device (auto, cpu, cuda, cuda:N; default RILL_DEVICE, else auto: the GPU when there is one) and
// --dtype (auto, bfloat16, float32; default RILL_DTYPE, else auto), for make_backend.
void add_device_option(CLI::App& app, std::string& device, std::string& dtype);

// The chat side of a model: its template (tokenizer_config.json beside the model, or `override_path`) and
// special-token strings. Throws when neither has a template.
struct ChatSetup {
  std::string template_source, bos_token, eos_token;
};
ChatSetup open_chat(const std::string& model_path, const std::string& override_path);
// The directory holding a model's tokenizer files (the model directory, or a .bin file's directory).
std::string model_dir(const std::string& model_path);

// The tokenizer for a model: `explicit_path` (tokenizer.json, a llama2.c tokenizer.bin, or a directory
// holding one) when given, else tokenizer.json or tokenizer.bin beside the model. Returns null when there
// is none; throws when a given file is unusable.
// config (may be null) checks the tokenizer against the model's vocabulary.
std::unique_ptr<Tokenizer> open_tokenizer(const std::string& model_path, const std::string& explicit_path,
                                          const ModelConfig* config);

}  // namespace rill::cli
