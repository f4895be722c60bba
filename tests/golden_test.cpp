// Every fixture model against Hugging Face transformers' float64 reference outputs: prompt logits,
// the last logits of a 300-token prompt (past the original RoPE context of the scaled models), and
// greedy generation. f32 checkpoints within 1e-4 relative, bf16 copies within 3e-2.
#include <filesystem>

#include "backend/backend.h"
#include "model/model.h"
#include "reference.h"
#include "test_util.h"

namespace rill::test {
namespace {

struct Case {
  std::string model;
  bool bf16;
};

std::string case_name(const testing::TestParamInfo<Case>& info) {
  return info.param.model + (info.param.bf16 ? "_bf16" : "_f32");
}

std::vector<Case> all_cases() {
  std::vector<Case> cases;
  for (const char* m : {"llama", "llama31_rope_scaling", "qwen2", "qwen3", "mistral", "mixtral_moe", "qwen3_moe"}) {
    cases.push_back({m, false});
    if (std::filesystem::exists(shared("fixtures/models/") + m + "/bf16")) cases.push_back({m, true});
  }
  return cases;
}

class GoldenTest : public testing::TestWithParam<Case> {
 protected:
  void SetUp() override {
    const std::string dir = shared("fixtures/models/" + GetParam().model);
    if (!std::filesystem::exists(dir)) GTEST_SKIP() << "fixture missing: " << dir;
    read_safetensors(dir + "/expected.safetensors", &expected_);
    checkpoint_ = read_checkpoint(GetParam().bf16 ? dir + "/bf16" : dir);
    RILL_TEST_BACKEND(backend_, 0);
    model_ = std::make_unique<Model>(checkpoint_, *backend_);
    kv_ = std::make_unique<KvCache>(*backend_, model_->config(), 64, 16);
  }
  // On the GPU (in its default bf16 mode) every checkpoint runs in bf16: weights, activations between ops
  // and the KV cache (f32 accumulation, f32 residual stream). On these random-weight fixtures the bf16
  // rounding of the weights alone moves the logits by up to 2.5e-2 (the CPU's bf16 cases); the bf16 roundings
  // at the inputs of the GEMMs, which any bf16 tensor-core engine makes, add the rest: the CPU backend
  // emulating exactly the GPU's rounding points gives llama 3.43e-2, llama31_rope_scaling 4.68e-2 (the
  // GPU: 3.44e-2, 4.46e-2). So the GPU in bf16 is held to 5e-2. In float32 mode (--dtype float32,
  // RILL_TEST_DTYPE=float32) the GPU keeps f32 weights in f32 and is held to the CPU's bounds: 1e-4 for the
  // f32 checkpoints, 3e-2 for the bf16 copies (whose weights alone move the logits by up to 2.5e-2).
  bool bf16() const { return GetParam().bf16 || test_gpu_bf16(); }
  double tolerance() const { return test_gpu_bf16() ? 5e-2 : bf16() ? 3e-2 : 1e-4; }
  // MoE routing on these fixtures has near-ties that bf16 weights alone flip (the CPU, f32 compute on the
  // bf16-rounded weights: qwen3_moe 0.57, mixtral_moe 0.22 at the flipped positions).
  bool routing_flips() const { return test_gpu_bf16() && GetParam().model.find("moe") != std::string::npos; }

  std::vector<float> prompt_logits(const std::vector<int32_t>& prompt, int chunk) {
    return test::prompt_logits(*model_, *kv_, prompt, chunk);
  }

  WeightMap expected_;
  Checkpoint checkpoint_;
  std::unique_ptr<Backend> backend_;
  std::unique_ptr<Model> model_;
  std::unique_ptr<KvCache> kv_;
};

TEST_P(GoldenTest, PromptLogitsMatchReference) {
  if (routing_flips()) GTEST_SKIP() << "bf16 weights flip this fixture's MoE routing (see routing_flips)";
  const auto prompt = ids_of(expected_.get("prompt_ids"));
  const auto ref = floats_of(expected_.get("logits"));
  // In one step, and chunked so the paged attention reads earlier chunks from several blocks.
  for (int chunk : {512, 5}) {
    const auto got = prompt_logits(prompt, chunk);
    ASSERT_EQ(got.size(), ref.size());
    EXPECT_LE(rel_max_diff(got.data(), ref.data(), ref.size()), tolerance()) << "prefill chunk " << chunk;
  }
}

TEST_P(GoldenTest, LongPromptLastLogitsMatchReference) {
  if (routing_flips()) GTEST_SKIP() << "bf16 weights flip this fixture's MoE routing (see routing_flips)";
  const auto prompt = ids_of(expected_.get("long_prompt_ids"));
  const auto ref = floats_of(expected_.get("long_last4_logits"));
  const auto got = prompt_logits(prompt, 128);
  const size_t vocab = size_t(model_->config().vocab_size);
  ASSERT_EQ(got.size(), prompt.size() * vocab);
  // The reference comes from the f32 weights. For llama's bf16 copy, the bf16 rounding of the weights
  // alone moves these logits by 3.34e-2 (Bf16Weights.ComputeIsExact below shows rill adds < 1e-5 to
  // that), so 3e-2 cannot be met by any engine there; 4e-2 bounds it.
  const double tol = !test_gpu_bf16() && bf16() && GetParam().model == "llama" ? 4e-2 : tolerance();
  EXPECT_LE(rel_max_diff(got.data() + got.size() - 4 * vocab, ref.data(), ref.size()), tol);
}

TEST_P(GoldenTest, GreedyMatchesReference) {
  const auto prompt = ids_of(expected_.get("prompt_ids"));
  const auto ref = ids_of(expected_.get("greedy_ids"));
  const auto margins = floats_of(expected_.get("greedy_margins"));
  const auto got = engine_generate(*model_, greedy_request(prompt, int(ref.size())));
  ASSERT_EQ(got.size(), ref.size());
  // On the GPU a token can flip where the reference's margin is within the logit error bound; compare
  // while the margin exceeds twice that bound.
  const auto logits = floats_of(expected_.get("logits"));
  double max_ref = 0;
  for (float v : logits) max_ref = std::max(max_ref, std::fabs(double(v)));
  const double gpu_margin = std::max(1e-2, 2 * tolerance() * max_ref);
  for (size_t i = 0; i < ref.size(); ++i) {
    // In bf16 a near-tie may flip; everything after it then legitimately differs. With bf16 weights on the
    // CPU (f32 compute) the bound is 1e-3; with bf16 activations too (GPU), the 1e-2.
    if (GetParam().bf16 && margins[i] < 1e-3f) break;
    if (test_gpu_bf16() && margins[i] < gpu_margin) break;
    ASSERT_EQ(got[i], ref[i]) << "greedy token " << i << " (margin " << margins[i] << ")";
  }
}

INSTANTIATE_TEST_SUITE_P(Fixtures, GoldenTest, testing::ValuesIn(all_cases()), case_name);

// RoPE scaling types without a shared fixture (linear, dynamic NTK, YaRN): tiny Llamas whose float64
// references transformers 5.17 computed (tools/make_rope_fixtures.py), over a 100-token prompt past the
// 64-token original context.
class RopeScalingTest : public testing::TestWithParam<std::string> {};

TEST_P(RopeScalingTest, LogitsMatchTransformers) {
  const std::string dir = test_data_dir() + "/rope/" + GetParam();
  WeightMap expected;
  read_safetensors(dir + "/expected.safetensors", &expected);
  std::unique_ptr<Backend> backend;
  RILL_TEST_BACKEND(backend, 0);
  Model model(read_checkpoint(dir), *backend);
  KvCache kv(*backend, model.config(), 16, 16);
  const auto prompt = ids_of(expected.get("prompt_ids"));
  const auto ref = floats_of(expected.get("logits"));
  // Dynamic NTK rescales by the longest position of the forward pass, as HF does: compare one pass.
  for (int chunk : GetParam() == "dynamic" ? std::vector<int>{512} : std::vector<int>{512, 7}) {
    const auto got = prompt_logits(model, kv, prompt, chunk);
    ASSERT_EQ(got.size(), ref.size());
    EXPECT_LE(rel_max_diff(got.data(), ref.data(), ref.size()), logit_tolerance(1e-4)) << "chunk " << chunk;
  }
}

INSTANTIATE_TEST_SUITE_P(Types, RopeScalingTest, testing::Values("linear", "dynamic", "yarn"));

// Separates rill's arithmetic from the weights' rounding: the bf16 checkpoint, read as bf16, must give
// what the f32 path gives on the f32 weights rounded to bf16 by rill itself (which also checks that the
// bf16 files are the round-to-nearest-even copies of the f32 ones).
class Bf16Weights : public testing::TestWithParam<std::string> {};

TEST_P(Bf16Weights, ComputeIsExact) {
  const std::string dir = shared("fixtures/models/" + GetParam());
  if (!std::filesystem::exists(dir + "/bf16")) GTEST_SKIP() << "no bf16 copy";
  WeightMap expected;
  read_safetensors(dir + "/expected.safetensors", &expected);
  const auto prompt = ids_of(expected.get("long_prompt_ids"));
  Checkpoint f32 = read_checkpoint(dir);
  const Checkpoint bf16 = read_checkpoint(dir + "/bf16");
  std::vector<std::shared_ptr<std::vector<float>>> keep;
  for (auto& [name, t] : f32.weights.tensors) {
    auto rounded = std::make_shared<std::vector<float>>(static_cast<size_t>(t.numel()));
    for (int64_t i = 0; i < t.numel(); ++i) (*rounded)[size_t(i)] = bf16_to_f32(f32_to_bf16(t.ptr<float>()[i]));
    const Tensor& b = bf16.weights.get(name);
    for (int64_t i = 0; i < t.numel(); ++i)
      ASSERT_EQ(f32_to_bf16(t.ptr<float>()[i]), b.ptr<uint16_t>()[i]) << name << "[" << i << "]";
    t.data = rounded->data();
    t.storage = rounded;
  }
  auto logits = [&](const Checkpoint& ck) {
    auto backend = make_cpu_backend(0);
    Model model(ck, *backend);
    KvCache kv(*backend, model.config(), 32, 16);
    return prompt_logits(model, kv, prompt);
  };
  const auto a = logits(f32), b = logits(bf16);
  ASSERT_EQ(a.size(), b.size());
  EXPECT_LE(rel_max_diff(b.data(), a.data(), a.size()), 1e-5);
}

INSTANTIATE_TEST_SUITE_P(Fixtures, Bf16Weights, testing::Values("llama", "qwen3"));

// The real TinyStories checkpoint, in both layouts: llama2.c's interleaved RoPE must give exactly what
// the rotate-half Hugging Face conversion gives.
class StoriesTest : public testing::TestWithParam<std::string> {};

TEST_P(StoriesTest, ReproducesReference) {
  const std::string path = shared(GetParam());
  if (!std::filesystem::exists(path)) GTEST_SKIP() << "missing: " << path;
  WeightMap expected;
  read_safetensors(shared("data/models/stories260K-hf/expected.safetensors"), &expected);
  std::unique_ptr<Backend> backend;
  RILL_TEST_BACKEND(backend, 0);
  Model model(read_checkpoint(path), *backend);
  KvCache kv(*backend, model.config(), 32, 16);

  const auto prompt = ids_of(expected.get("prompt_ids"));
  const auto ref_logits = floats_of(expected.get("logits"));
  const auto logits = prompt_logits(model, kv, prompt);
  ASSERT_EQ(logits.size(), ref_logits.size());
  // This f32 model is the most sensitive to bf16: its weights rounded to bf16 alone move the logits by 8.8e-2
  // (CPU, f32 compute), the GPU's bf16 activations to 11.5e-2.
  EXPECT_LE(rel_max_diff(logits.data(), ref_logits.data(), ref_logits.size()), test_gpu_bf16() ? 0.13 : 1e-4);
  if (test_gpu_bf16())
    return;  // greedy on the GPU in bf16: cuda_test compares it with the CPU on the same weights

  const auto greedy = ids_of(expected.get("greedy_from_bos"));  // starts with BOS
  const auto got = engine_generate(model, greedy_request({greedy[0]}, int(greedy.size()) - 1));
  ASSERT_EQ(got, std::vector<int32_t>(greedy.begin() + 1, greedy.end()));
}

INSTANTIATE_TEST_SUITE_P(Layouts, StoriesTest,
                         testing::Values("data/models/stories260K/stories260K.bin", "data/models/stories260K-hf"),
                         [](const auto& info) { return info.index == 0 ? std::string("llama2c") : std::string("hf"); });

// rill's own models (models/, trained by tools/rill_tiny/train.py) against transformers on the exported bf16
// weights computed in f32: the last 4 logits of a 64-token held-out prompt and 32 greedy tokens.
class EmbeddedModelTest : public testing::TestWithParam<std::string> {};

TEST_P(EmbeddedModelTest, MatchesTransformers) {
  WeightMap expected;
  read_safetensors(test_data_dir() + "/rill-tiny/" + GetParam() + "-expected.safetensors", &expected);
  std::unique_ptr<Backend> backend;
  RILL_TEST_BACKEND(backend, 0);
  Model model(read_checkpoint(models_dir() + "/" + GetParam()), *backend);
  KvCache kv(*backend, model.config(), 16, 16);
  const auto prompt = ids_of(expected.get("prompt_ids"));
  const auto ref = floats_of(expected.get("last4_logits"));
  const auto logits = prompt_logits(model, kv, prompt);
  ASSERT_EQ(logits.size(), prompt.size() * size_t(model.config().vocab_size));
  EXPECT_LE(rel_max_diff(logits.data() + logits.size() - ref.size(), ref.data(), ref.size()), logit_tolerance(1e-4));
  if (test_gpu_bf16())
    return;  // no margins are recorded for these greedy ids; cuda_test compares with the CPU

  EXPECT_EQ(engine_generate(model, greedy_request(prompt, 32)), ids_of(expected.get("greedy_ids")));
}

INSTANTIATE_TEST_SUITE_P(Models, EmbeddedModelTest, testing::Values("rill-tiny", "rill-tiny-draft"),
                         [](const auto& info) { return info.index == 0 ? std::string("tiny") : std::string("draft"); });

}  // namespace
}  // namespace rill::test
