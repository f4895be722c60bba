#include "cli/model_loading.h"

#include <filesystem>

#include "core/error.h"
#include "tokenizer/llama2c_tokenizer.h"

namespace rill::cli {
namespace fs = std::filesystem;

std::unique_ptr<Tokenizer> open_tokenizer(const std::string& model_path, const std::string& explicit_path,
                                          const ModelConfig& config) {
  std::string path = explicit_path;
  if (path.empty()) {
    const fs::path dir = fs::is_directory(model_path) ? fs::path(model_path) : fs::path(model_path).parent_path();
    if (fs::exists(dir / "tokenizer.bin")) path = (dir / "tokenizer.bin").string();
  }
  if (path.empty()) return nullptr;
  RILL_CHECK(fs::path(path).extension() == ".bin",
             path + ": only llama2.c tokenizer.bin files are read so far (tokenizer.json support is issue #3); "
                    "use --prompt-ids");
  return Llama2cTokenizer::load(path, config.vocab_size);
}

}  // namespace rill::cli
