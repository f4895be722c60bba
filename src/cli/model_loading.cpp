#include "cli/model_loading.h"

#include <filesystem>

#include "core/error.h"
#include "tokenizer/hf_tokenizer.h"
#include "tokenizer/llama2c_tokenizer.h"

namespace rill::cli {
namespace fs = std::filesystem;

std::unique_ptr<Tokenizer> open_tokenizer(const std::string& model_path, const std::string& explicit_path,
                                          const ModelConfig& config) {
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
  if (fs::path(path).extension() == ".bin") return Llama2cTokenizer::load(path, config.vocab_size);
  auto tok = HfTokenizer::load(path);
  RILL_CHECK(tok->vocab_size() <= config.vocab_size,
             path + ": the tokenizer has " + std::to_string(tok->vocab_size()) + " tokens but the model only " +
                 std::to_string(config.vocab_size));
  return tok;
}

}  // namespace rill::cli
