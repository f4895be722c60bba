// rill inspect: what a checkpoint is, without running it.
#include <cstdio>
#include <map>
#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "cli/model_loading.h"
#include "kv/kv_cache.h"
#include "formats/checkpoint.h"

namespace rill::cli {

namespace {

std::string human_bytes(double b) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int u = 0;
  while (b >= 1024 && u < 4) {
    b /= 1024;
    ++u;
  }
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.2f %s", b, units[u]);
  return buf;
}

}  // namespace

Run add_inspect(CLI::App& app) {
  auto model = std::make_shared<std::string>();
  auto json_out = std::make_shared<bool>(false);
  auto context = std::make_shared<int>(0);
  add_model_option(app, *model, "Model: a Hugging Face directory or a llama2.c .bin file");
  app.add_option("--context", *context, "Context length for the KV-cache estimate (default: the model's maximum)")
      ->check(CLI::PositiveNumber);
  app.add_flag("--json", *json_out, "Print JSON");
  return [model, json_out, context] {
    *model = model_or_default(*model);
    const Checkpoint ck = read_checkpoint(*model);
    const ModelConfig& c = ck.config;
    std::map<std::string, int64_t> dtype_bytes;
    int64_t params = 0, bytes = 0;
    for (const auto& [name, t] : ck.weights.tensors) {
      params += t.numel();
      bytes += int64_t(t.nbytes());
      dtype_bytes[std::string(dtype_name(t.dtype))] += int64_t(t.nbytes());
    }
    const int ctx = *context > 0 ? *context : c.max_position_embeddings;
    const double kv_bytes = double(KvCache::bytes_per_token(c)) * ctx;
    nlohmann::json j = {
        {"path", *model},
        {"architecture", c.architecture},
        {"arch", arch_name(c.arch)},
        {"vocab_size", c.vocab_size},
        {"hidden_size", c.hidden_size},
        {"intermediate_size", c.intermediate_size},
        {"num_layers", c.num_layers},
        {"num_heads", c.num_heads},
        {"num_kv_heads", c.num_kv_heads},
        {"head_dim", c.head_dim},
        {"max_position_embeddings", c.max_position_embeddings},
        {"rope", {{"type", rope_type_name(c.rope.type)}, {"theta", c.rope.theta}, {"factor", c.rope.factor}}},
        {"tie_word_embeddings", c.tie_word_embeddings},
        {"parameters", params},
        {"parameters_from_config", c.parameter_count()},
        {"weight_bytes", bytes},
        {"weight_bytes_by_dtype", dtype_bytes},
        {"kv_cache_bytes_per_token", KvCache::bytes_per_token(c)},
        {"kv_cache_context", ctx},
        {"kv_cache_bytes", kv_bytes},
    };
    if (c.num_experts > 0)
      j["moe"] = {{"experts", c.num_experts},
                  {"experts_per_token", c.num_experts_per_tok},
                  {"expert_intermediate_size", c.moe_intermediate_size},
                  {"norm_topk_prob", c.norm_topk_prob}};
    if (*json_out) {
      std::printf("%s\n", j.dump(2).c_str());
      return 0;
    }
    std::printf("model         %s\n", model->c_str());
    std::printf("architecture  %s (%s)\n", c.architecture.c_str(), arch_name(c.arch));
    std::printf("dimensions    hidden %d, layers %d, heads %d (kv %d, head_dim %d), ffn %d, vocab %d\n", c.hidden_size,
                c.num_layers, c.num_heads, c.num_kv_heads, c.head_dim, c.intermediate_size, c.vocab_size);
    if (c.num_experts > 0)
      std::printf("moe           %d experts, top-%d, expert ffn %d%s\n", c.num_experts, c.num_experts_per_tok,
                  c.moe_intermediate_size, c.norm_topk_prob ? ", renormalized" : "");
    std::printf("rope          %s, theta %g, factor %g; context %d\n", rope_type_name(c.rope.type), c.rope.theta,
                c.rope.factor, c.max_position_embeddings);
    std::printf("parameters    %lld (%.2fM)\n", (long long)params, params / 1e6);
    std::printf("weights       %s:", human_bytes(double(bytes)).c_str());
    for (const auto& [dt, b] : dtype_bytes) std::printf(" %s %s", dt.c_str(), human_bytes(double(b)).c_str());
    std::printf("\n");
    std::printf("kv cache      %s per token (f32), %s for %d tokens\n",
                human_bytes(double(KvCache::bytes_per_token(c))).c_str(), human_bytes(kv_bytes).c_str(), ctx);
    std::printf("memory        %s for weights + one full-context sequence\n", human_bytes(double(bytes) + kv_bytes).c_str());
    return 0;
  };
}

}  // namespace rill::cli
