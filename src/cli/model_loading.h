// Shared by the subcommands: opening a model and its tokenizer from command-line paths.
#pragma once

#include <memory>
#include <string>

#include "tokenizer/tokenizer.h"
#include "model/config.h"

namespace rill::cli {

// The tokenizer for a model: `explicit_path` (tokenizer.json, a llama2.c tokenizer.bin, or a directory
// holding one) when given, else tokenizer.json or tokenizer.bin beside the model. Returns null when there
// is none; throws when a given file is unusable.
std::unique_ptr<Tokenizer> open_tokenizer(const std::string& model_path, const std::string& explicit_path,
                                          const ModelConfig& config);

}  // namespace rill::cli
