// make_random_model: writes a Hugging Face Llama checkpoint (config.json + model.safetensors) with random
// weights of any shape, for benchmarks. Weights ~ N(0, 0.02) (norms 1), so activations stay finite.
//   make_random_model --out DIR [--dim 768 --layers 12 --heads 12 --kv-heads 12 --ffn 2048 --vocab 32000
//                      --dtype bf16 --tied --seed 0]
#include <CLI/CLI.hpp>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>

#include "core/dtype.h"
#include "core/thread_pool.h"
#include "formats/safetensors.h"

int main(int argc, char** argv) {
  CLI::App app{"Write a random-weight Llama checkpoint in Hugging Face format"};
  std::string out, dtype = "bf16";
  int dim = 768, layers = 12, heads = 12, kv_heads = 0, ffn = 2048, vocab = 32000, ctx = 2048;
  bool tied = false;
  uint64_t seed = 0;
  app.add_option("--out", out, "Output directory")->required();
  app.add_option("--dim", dim, "hidden_size");
  app.add_option("--layers", layers, "num_hidden_layers");
  app.add_option("--heads", heads, "num_attention_heads");
  app.add_option("--kv-heads", kv_heads, "num_key_value_heads (default: heads)");
  app.add_option("--ffn", ffn, "intermediate_size");
  app.add_option("--vocab", vocab, "vocab_size");
  app.add_option("--context", ctx, "max_position_embeddings");
  app.add_option("--dtype", dtype, "bf16, f16 or f32")->check(CLI::IsMember({"bf16", "f16", "f32"}));
  app.add_flag("--tied", tied, "Tie the output head to the embeddings");
  app.add_option("--seed", seed, "Random seed");
  CLI11_PARSE(app, argc, argv);
  if (kv_heads == 0) kv_heads = heads;
  const int hd = dim / heads;
  const rill::DType dt = dtype == "bf16" ? rill::DType::BF16 : dtype == "f16" ? rill::DType::F16 : rill::DType::F32;

  std::vector<std::pair<std::string, std::vector<int64_t>>> specs = {{"model.embed_tokens.weight", {vocab, dim}},
                                                                     {"model.norm.weight", {dim}}};
  if (!tied) specs.push_back({"lm_head.weight", {vocab, dim}});
  for (int l = 0; l < layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    specs.push_back({p + "input_layernorm.weight", {dim}});
    specs.push_back({p + "post_attention_layernorm.weight", {dim}});
    specs.push_back({p + "self_attn.q_proj.weight", {heads * hd, dim}});
    specs.push_back({p + "self_attn.k_proj.weight", {kv_heads * hd, dim}});
    specs.push_back({p + "self_attn.v_proj.weight", {kv_heads * hd, dim}});
    specs.push_back({p + "self_attn.o_proj.weight", {dim, heads * hd}});
    specs.push_back({p + "mlp.gate_proj.weight", {ffn, dim}});
    specs.push_back({p + "mlp.up_proj.weight", {ffn, dim}});
    specs.push_back({p + "mlp.down_proj.weight", {dim, ffn}});
  }
  std::vector<std::vector<uint8_t>> buffers;
  std::vector<std::pair<std::string, rill::Tensor>> tensors;
  for (size_t s = 0; s < specs.size(); ++s) {
    const auto& [name, shape] = specs[s];
    rill::Tensor t;
    t.dtype = dt;
    t.shape.rank = int(shape.size());
    for (size_t i = 0; i < shape.size(); ++i) t.shape.dims[i] = shape[i];
    buffers.emplace_back(t.nbytes());
    t.data = buffers.back().data();
    const bool norm = shape.size() == 1;
    const int64_t n = t.numel();
    // Each tensor draws from its own stream, in parallel chunks with fixed seeds: reproducible.
    rill::ThreadPool::global().parallel_for(n, 1 << 16, [&, s](int64_t b, int64_t e) {
      std::mt19937_64 rng(seed * 1000003 + s * 7919 + uint64_t(b));
      std::normal_distribution<float> normal(0.f, 0.02f);
      for (int64_t i = b; i < e; ++i) {
        const float v = norm ? 1.f : normal(rng);
        if (dt == rill::DType::BF16) static_cast<uint16_t*>(t.data)[i] = rill::f32_to_bf16(v);
        else if (dt == rill::DType::F16) static_cast<uint16_t*>(t.data)[i] = rill::f32_to_f16(v);
        else static_cast<float*>(t.data)[i] = v;
      }
    });
    tensors.push_back({name, t});
  }
  std::filesystem::create_directories(out);
  rill::write_safetensors(out + "/model.safetensors", tensors, {{"format", "pt"}});
  nlohmann::json config = {{"architectures", {"LlamaForCausalLM"}}, {"model_type", "llama"},
                           {"hidden_size", dim}, {"intermediate_size", ffn}, {"num_hidden_layers", layers},
                           {"num_attention_heads", heads}, {"num_key_value_heads", kv_heads},
                           {"vocab_size", vocab}, {"max_position_embeddings", ctx}, {"rms_norm_eps", 1e-5},
                           {"rope_theta", 10000.0}, {"tie_word_embeddings", tied}, {"hidden_act", "silu"},
                           {"bos_token_id", 1}, {"eos_token_id", 2},
                           {"torch_dtype", dtype == "bf16" ? "bfloat16" : dtype == "f16" ? "float16" : "float32"}};
  std::ofstream(out + "/config.json") << config.dump(2) << "\n";
  std::printf("wrote %s (%zu tensors)\n", out.c_str(), tensors.size());
  return 0;
}
