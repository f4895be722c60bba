// Shared by the subcommands: opening a model, its tokenizer and its chat template from command-line paths.
#pragma once

#include <memory>
#include <string>

#include "backend/backend.h"
#include "cli/options.h"
#include "engine/model_runner.h"
#include "engine/engine.h"
#include "engine/speculative.h"
#include "formats/model_config.h"
#include "model/model.h"
#include "tokenizer/tokenizer.h"

namespace rill::cli {

// Seconds each phase of loading took.
struct LoadTimes {
  double checkpoint = 0;  // opening (mapping) the checkpoint files and reading the config
  double device = 0;      // making the backend (on a GPU: the CUDA context, the library handles)
  double weights = 0;     // reading, converting and uploading the weights
  double tokenizer = 0;
  bool mapped = false;  // the backend uses the mapped file in place (the CPU): nothing was read yet
  // "checkpoint 0.01 s, device 0.21 s, weights 4.1 s (16.1 GB, 3.9 GB/s), tokenizer 0.05 s"
  std::string describe(size_t weight_bytes) const;
};

// A model ready to run: its backend, the Model bound to it, and its tokenizer (null when there is none).
struct LoadedModel {
  std::unique_ptr<Backend> backend;
  std::unique_ptr<Model> model;
  std::unique_ptr<Tokenizer> tokenizer;
  LoadTimes times;
  const ModelConfig& config() const { return model->config(); }
};
// Reads the checkpoint at `path`, makes the backend `device` asks for, uploads the weights and opens the tokenizer
// (`tokenizer_path`, or the one beside the model).
LoadedModel load_model(const std::string& path, const DeviceArgs& device, const std::string& tokenizer_path);

// The engine's SpecConfig for --spec/--draft-model/--spec-tokens: with a draft, the draft model is read onto
// `target`'s backend into *draft (its vocabulary limited as the target's is) and checked against the target (its
// tokenizer against `target_tokenizer`, when both have one; its vocabulary size).
SpecConfig load_speculation(const SpecArgs& args, const std::string& model_path, Model& target,
                            const Tokenizer* target_tokenizer, std::unique_ptr<Model>* draft);
// "spec draft (K 4, models/rill-tiny-draft)" for a startup line; empty when off.
std::string describe_speculation(const SpecConfig& spec, const SpecArgs& args);

// "speculation: 312 of 400 drafts accepted (78%), 3.10 tokens per verification"; empty without verifications.
std::string describe_spec_metrics(const EngineMetrics& m);

// "warm-up 0.31 s (22 steps, 14 decode graphs); GEMM algorithms: ..." for a startup line.
std::string describe_warm_up(const WarmUpReport& w, Backend& backend);

// The chat side of a model: its template (tokenizer_config.json beside the model, or `override_path`) and
// special-token strings. Throws when neither has a template.
struct ChatSetup {
  std::string template_source, bos_token, eos_token;
};
ChatSetup open_chat(const std::string& model_path, const std::string& override_path);
// The token that ends a turn under this template (its EOS string, when the tokenizer encodes it as one token).
std::vector<int32_t> end_of_turn_ids(const ChatSetup& chat, const Tokenizer& tokenizer);
// The directory holding a model's tokenizer files (the model directory, or a .bin file's directory).
std::string model_dir(const std::string& model_path);

// The tokenizer for a model: `explicit_path` (tokenizer.json, a llama2.c tokenizer.bin, or a directory
// holding one) when given, else tokenizer.json or tokenizer.bin beside the model. Returns null when there
// is none; throws when a given file is unusable.
// config (may be null) checks the tokenizer against the model's vocabulary.
std::unique_ptr<Tokenizer> open_tokenizer(const std::string& model_path, const std::string& explicit_path,
                                          const ModelConfig* config);

}  // namespace rill::cli
