// config.json (Hugging Face) -> ModelConfig. Accepts both the classic keys (`rope_theta`, `rope_scaling`)
// and the transformers-5 form (`rope_parameters`).
#pragma once

#include <string>

#include <nlohmann/json_fwd.hpp>

#include "formats/model_config.h"

namespace rill {

// `where` names the source in error messages (usually the file path).
ModelConfig parse_hf_config(const nlohmann::json& j, const std::string& where);
ModelConfig read_hf_config(const std::string& path);

}  // namespace rill
