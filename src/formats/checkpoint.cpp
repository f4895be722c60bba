#include "formats/checkpoint.h"

#include <algorithm>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "formats/hf_config.h"
#include "formats/json_file.h"
#include "formats/llama2c.h"

namespace rill {
namespace fs = std::filesystem;

namespace {

// generation_config.json may list more end-of-sequence ids than config.json (Llama 3 does).
void merge_generation_config(const fs::path& dir, ModelConfig* c) {
  const fs::path p = dir / "generation_config.json";
  if (!fs::exists(p)) return;
  const nlohmann::json j = read_json_file(p.string());
  if (!j.is_object()) return;
  auto add = [&](const nlohmann::json& v) {
    if (v.is_number_integer() &&
        std::find(c->eos_token_ids.begin(), c->eos_token_ids.end(), v.get<int>()) == c->eos_token_ids.end())
      c->eos_token_ids.push_back(v.get<int>());
  };
  if (j.contains("eos_token_id")) {
    if (j["eos_token_id"].is_array())
      for (const auto& v : j["eos_token_id"]) add(v);
    else
      add(j["eos_token_id"]);
  }
  if (c->bos_token_id < 0 && j.contains("bos_token_id") && j["bos_token_id"].is_number_integer())
    c->bos_token_id = j["bos_token_id"].get<int>();
}

}  // namespace

Checkpoint read_checkpoint(const std::string& path) {
  Checkpoint ck;
  ck.path = path;
  RILL_CHECK(fs::exists(path), path + ": no such file or directory");
  if (fs::is_regular_file(path)) {
    RILL_CHECK(fs::path(path).extension() == ".bin",
               path + ": expected a model directory (config.json + *.safetensors) or a llama2.c .bin file");
    auto l2c = read_llama2c(path);
    ck.config = std::move(l2c.config);
    ck.weights = std::move(l2c.weights);
    return ck;
  }
  const fs::path config = fs::path(path) / "config.json";
  RILL_CHECK(fs::exists(config), path + ": no config.json in the model directory");
  ck.config = read_hf_config(config.string());
  merge_generation_config(path, &ck.config);
  ck.weights = read_safetensors_dir(path);
  return ck;
}

}  // namespace rill
