#include "cli/model_loading.h"

#include <unistd.h>

#include <CLI/CLI.hpp>
#include <filesystem>
#include <fstream>

#include "core/error.h"
#include "template/chat_template.h"
#include "tokenizer/hf_tokenizer.h"
#include "tokenizer/llama2c_tokenizer.h"

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
  places.push_back(RILL_SOURCE_MODELS_DIR);
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

void add_device_option(CLI::App& app, std::string& device, std::string& dtype) {
  app.add_option("--device", device,
                 "Where the model runs: auto (a CUDA GPU when there is one, else the CPU), cpu, cuda, cuda:N "
                 "(also RILL_DEVICE)")
      ->default_val("auto")
      ->envname("RILL_DEVICE");
  app.add_option(
         "--dtype", dtype,
         "What the model computes in: auto (the GPU: bfloat16; the CPU: float32), bfloat16 (GPU only), or "
         "float32 (on the GPU: weights, activations and KV cache in f32, twice the memory, decode about "
         "0.44x the speed of bf16, to match f32 references; also RILL_DTYPE)")
      ->default_val("auto")
      ->check(CLI::IsMember({"auto", "bfloat16", "bf16", "float32", "f32", "float"}))
      ->envname("RILL_DTYPE");
}

std::string model_dir(const std::string& model_path) {
  return fs::is_directory(model_path) ? model_path : fs::path(model_path).parent_path().string();
}

ChatSetup open_chat(const std::string& model_path, const std::string& override_path) {
  ChatSetup s;
  const fs::path cfg = fs::path(model_dir(model_path)) / "tokenizer_config.json";
  if (fs::exists(cfg)) {
    const ChatConfig c = read_chat_config(cfg.string());
    s.template_source = c.chat_template;
    s.bos_token = c.bos_token;
    s.eos_token = c.eos_token;
  }
  if (!override_path.empty()) {
    std::ifstream in(override_path);
    RILL_CHECK(in, override_path + ": cannot open chat template");
    s.template_source.assign(std::istreambuf_iterator<char>(in), {});
  }
  RILL_CHECK(!s.template_source.empty(),
             model_path + ": no chat template (tokenizer_config.json has none); pass --chat-template FILE");
  return s;
}

std::unique_ptr<Tokenizer> open_tokenizer(const std::string& model_path, const std::string& explicit_path,
                                          const ModelConfig* config) {
  std::string path = explicit_path;
  if (path.empty() || fs::is_directory(path)) {
    const fs::path dir = !path.empty() ? fs::path(path)
                         : fs::is_directory(model_path) ? fs::path(model_path)
                                                        : fs::path(model_path).parent_path();
    path.clear();
    for (const char* name : {"tokenizer.json", "tokenizer.bin"})
      if (fs::exists(dir / name)) {
        path = (dir / name).string();
        break;
      }
    if (path.empty() && !explicit_path.empty()) throw Error(explicit_path + ": no tokenizer.json or tokenizer.bin there");
  }
  if (path.empty()) return nullptr;
  RILL_CHECK(fs::exists(path), path + ": no such tokenizer file");
  if (fs::path(path).extension() == ".bin") return Llama2cTokenizer::load(path, config ? config->vocab_size : 0);
  auto tok = HfTokenizer::load(path);
  RILL_CHECK(!config || tok->vocab_size() <= config->vocab_size,
             path + ": the tokenizer has " + std::to_string(tok->vocab_size()) + " tokens but the model only " +
                 std::to_string(config->vocab_size));
  return tok;
}

}  // namespace rill::cli
