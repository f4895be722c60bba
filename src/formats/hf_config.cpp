#include "formats/hf_config.h"

#include <fstream>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "formats/json_file.h"

namespace rill {
using nlohmann::json;

namespace {

struct Reader {
  const json& j;
  std::string where;

  bool has(const char* key) const { return j.contains(key) && !j[key].is_null(); }

  int required_int(const char* key) const {
    RILL_CHECK(j.contains(key), where + ": missing required field '" + key + "'");
    RILL_CHECK(j[key].is_number_integer(), where + ": field '" + key + "' must be an integer");
    return j[key].get<int>();
  }
  // An optional field of type T (`is` checks the JSON type; `kind` names it in the error).
  template <class T>
  T opt(const char* key, T fallback, bool (json::*is)() const noexcept, const char* kind) const {
    if (!has(key)) return fallback;
    RILL_CHECK((j[key].*is)(), where + ": field '" + key + "' must be " + kind);
    return j[key].get<T>();
  }
  int opt_int(const char* key, int fallback) const { return opt(key, fallback, &json::is_number_integer, "an integer"); }
  double opt_num(const char* key, double fallback) const { return opt(key, fallback, &json::is_number, "a number"); }
  bool opt_bool(const char* key, bool fallback) const { return opt(key, fallback, &json::is_boolean, "true or false"); }
};

std::vector<int> int_or_list(const json& v, const std::string& where, const char* key) {
  std::vector<int> out;
  if (v.is_null()) return out;
  if (v.is_number_integer()) return {v.get<int>()};
  RILL_CHECK(v.is_array(), where + ": field '" + key + "' must be an integer or a list of integers");
  for (const auto& e : v) {
    RILL_CHECK(e.is_number_integer(), where + ": field '" + key + "' must contain integers");
    out.push_back(e.get<int>());
  }
  return out;
}

struct ArchName {
  const char* architecture;
  const char* model_type;
  Arch arch;
};
constexpr ArchName kArchs[] = {
    {"LlamaForCausalLM", "llama", Arch::Llama},        {"MistralForCausalLM", "mistral", Arch::Mistral},
    {"Qwen2ForCausalLM", "qwen2", Arch::Qwen2},        {"Qwen3ForCausalLM", "qwen3", Arch::Qwen3},
    {"MixtralForCausalLM", "mixtral", Arch::Mixtral},  {"Qwen3MoeForCausalLM", "qwen3_moe", Arch::Qwen3Moe},
};

std::string supported_list() {
  std::string s;
  for (const auto& a : kArchs) s += std::string(s.empty() ? "" : ", ") + a.architecture;
  return s;
}

void parse_rope(const Reader& r, ModelConfig* c) {
  const std::string& where = r.where;
  // transformers 5 folds theta and scaling into rope_parameters; older configs have rope_theta + rope_scaling.
  const json* params = nullptr;
  if (r.has("rope_parameters")) {
    params = &r.j["rope_parameters"];
    RILL_CHECK(params->is_object(), where + ": field 'rope_parameters' must be an object");
    RILL_CHECK(!params->contains("full_attention"),
               where + ": per-layer-type rope_parameters are not supported");
  } else if (r.has("rope_scaling")) {
    params = &r.j["rope_scaling"];
    RILL_CHECK(params->is_object(), where + ": field 'rope_scaling' must be an object or null");
  }
  const double default_theta = (c->arch == Arch::Qwen2 || c->arch == Arch::Qwen3 || c->arch == Arch::Qwen3Moe)
                                   ? 1000000.0
                                   : (c->arch == Arch::Mixtral ? 1000000.0 : 10000.0);
  c->rope.theta = r.opt_num("rope_theta", default_theta);
  if (!params) return;
  const std::string field = r.has("rope_parameters") ? "rope_parameters" : "rope_scaling";
  Reader p{*params, where + ": " + field};
  c->rope.theta = p.opt_num("rope_theta", c->rope.theta);
  std::string type = "default";
  if (p.has("rope_type")) type = (*params)["rope_type"].get<std::string>();
  else if (p.has("type")) type = (*params)["type"].get<std::string>();
  if (type == "default") c->rope.type = RopeType::Default;
  else if (type == "linear") c->rope.type = RopeType::Linear;
  else if (type == "dynamic") c->rope.type = RopeType::Dynamic;
  else if (type == "yarn") c->rope.type = RopeType::Yarn;
  else if (type == "llama3") c->rope.type = RopeType::Llama3;
  else
    throw Error(p.where + ": unsupported rope_type '" + type +
                "' (supported: default, linear, dynamic, yarn, llama3)");
  if (c->rope.type == RopeType::Default) return;

  c->rope.original_max_position_embeddings =
      p.opt_int("original_max_position_embeddings", c->max_position_embeddings);
  if (c->rope.type == RopeType::Yarn && !p.has("factor")) {
    RILL_CHECK(c->rope.original_max_position_embeddings > 0, p.where + ": yarn needs 'factor'");
    c->rope.factor = double(c->max_position_embeddings) / c->rope.original_max_position_embeddings;
  } else {
    RILL_CHECK(p.has("factor"), p.where + ": rope_type '" + type + "' needs field 'factor'");
    c->rope.factor = p.opt_num("factor", 1.0);
  }
  c->rope.low_freq_factor = p.opt_num("low_freq_factor", 1.0);
  c->rope.high_freq_factor = p.opt_num("high_freq_factor", 4.0);
  c->rope.beta_fast = p.opt_num("beta_fast", 32.0);
  c->rope.beta_slow = p.opt_num("beta_slow", 1.0);
  c->rope.attention_factor = p.opt_num("attention_factor", 0.0);
  c->rope.mscale = p.opt_num("mscale", 0.0);
  c->rope.mscale_all_dim = p.opt_num("mscale_all_dim", 0.0);
  c->rope.truncate = p.opt_bool("truncate", true);
  if (c->rope.type == RopeType::Llama3) {
    RILL_CHECK(p.has("original_max_position_embeddings"),
               p.where + ": rope_type 'llama3' needs field 'original_max_position_embeddings'");
    RILL_CHECK(c->rope.high_freq_factor != c->rope.low_freq_factor,
               p.where + ": high_freq_factor must differ from low_freq_factor");
  }
}

}  // namespace

ModelConfig parse_hf_config(const json& j, const std::string& where) {
  RILL_CHECK(j.is_object(), where + ": config is not a JSON object");
  Reader r{j, where};
  ModelConfig c;
  if (r.has("architectures")) {
    RILL_CHECK(j["architectures"].is_array() && !j["architectures"].empty() && j["architectures"][0].is_string(),
               where + ": field 'architectures' must be a non-empty list of names");
    c.architecture = j["architectures"][0].get<std::string>();
  }
  if (r.has("model_type")) {
    RILL_CHECK(j["model_type"].is_string(), where + ": field 'model_type' must be a string");
    c.model_type = j["model_type"].get<std::string>();
  }
  RILL_CHECK(!c.architecture.empty() || !c.model_type.empty(),
             where + ": missing field 'architectures' (and 'model_type'); supported: " + supported_list());
  bool found = false;
  for (const auto& a : kArchs) {
    if ((!c.architecture.empty() && c.architecture == a.architecture) ||
        (c.architecture.empty() && c.model_type == a.model_type)) {
      c.arch = a.arch;
      found = true;
      break;
    }
  }
  RILL_CHECK(found, where + ": unsupported architecture '" + (c.architecture.empty() ? c.model_type : c.architecture) +
                        "'; supported: " + supported_list());

  c.vocab_size = r.required_int("vocab_size");
  c.hidden_size = r.required_int("hidden_size");
  c.num_layers = r.required_int("num_hidden_layers");
  c.num_heads = r.required_int("num_attention_heads");
  c.num_kv_heads = r.opt_int("num_key_value_heads", c.num_heads);
  RILL_CHECK(c.num_heads > 0, where + ": field 'num_attention_heads' must be positive");
  c.head_dim = r.opt_int("head_dim", c.hidden_size / c.num_heads);
  c.max_position_embeddings = r.opt_int("max_position_embeddings", 4096);
  c.rms_norm_eps = float(r.opt_num("rms_norm_eps", 1e-6));
  c.tie_word_embeddings = r.opt_bool("tie_word_embeddings", false);

  const bool moe = c.arch == Arch::Mixtral || c.arch == Arch::Qwen3Moe;
  if (moe) {
    c.num_experts = r.has("num_local_experts") ? r.opt_int("num_local_experts", 0) : r.required_int("num_experts");
    c.num_experts_per_tok = r.required_int("num_experts_per_tok");
    if (c.arch == Arch::Mixtral) {
      c.moe_intermediate_size = r.required_int("intermediate_size");
      c.intermediate_size = c.moe_intermediate_size;
      c.norm_topk_prob = true;  // Mixtral always renormalizes the top-k weights
    } else {
      c.moe_intermediate_size = r.required_int("moe_intermediate_size");
      c.intermediate_size = r.opt_int("intermediate_size", 0);
      c.norm_topk_prob = r.opt_bool("norm_topk_prob", false);
      c.decoder_sparse_step = r.opt_int("decoder_sparse_step", 1);
      if (r.has("mlp_only_layers")) c.mlp_only_layers = int_or_list(j["mlp_only_layers"], where, "mlp_only_layers");
    }
  } else {
    c.intermediate_size = r.required_int("intermediate_size");
  }

  switch (c.arch) {
    case Arch::Qwen2:
      c.attention_bias = true;
      break;
    case Arch::Qwen3:
    case Arch::Qwen3Moe:
      c.qk_norm = true;
      c.attention_bias = r.opt_bool("attention_bias", false);
      break;
    case Arch::Llama:
      c.attention_bias = c.attention_out_bias = r.opt_bool("attention_bias", false);
      c.mlp_bias = r.opt_bool("mlp_bias", false);
      break;
    default:
      break;
  }
  if (r.has("hidden_act")) {
    const std::string act = j["hidden_act"].is_string() ? j["hidden_act"].get<std::string>() : "";
    RILL_CHECK(act == "silu" || act == "swish", where + ": unsupported hidden_act '" + act + "' (supported: silu)");
  }
  // Sliding-window attention: Mistral uses `sliding_window`; Qwen only when use_sliding_window is true.
  if (c.arch == Arch::Mistral || c.arch == Arch::Mixtral) {
    c.sliding_window = r.opt_int("sliding_window", 0);
  } else if ((c.arch == Arch::Qwen2 || c.arch == Arch::Qwen3 || c.arch == Arch::Qwen3Moe) &&
             r.opt_bool("use_sliding_window", false)) {
    RILL_CHECK(r.opt_int("max_window_layers", c.num_layers) >= c.num_layers,
               where + ": sliding window on only some layers (max_window_layers) is not supported");
    c.sliding_window = r.opt_int("sliding_window", 0);
  }
  parse_rope(r, &c);

  if (r.has("bos_token_id")) {
    const auto bos = int_or_list(j["bos_token_id"], where, "bos_token_id");
    if (!bos.empty()) c.bos_token_id = bos.front();
  }
  if (r.has("eos_token_id")) c.eos_token_ids = int_or_list(j["eos_token_id"], where, "eos_token_id");
  c.validate(where);
  return c;
}

ModelConfig read_hf_config(const std::string& path) {
  return parse_hf_config(read_json_file(path), path);
}

}  // namespace rill
