// Readers: round trips, and every kind of corrupt input fails with rill::Error naming the file, tensor or
// field (never a crash).
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "formats/hf_config.h"
#include "formats/llama2c.h"
#include "model/model.h"
#include "test_util.h"

namespace rill::test {
namespace {

using nlohmann::json;

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary) << bytes;
}

std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

// A safetensors file whose header is `header` (raw text) followed by `data_bytes` zero bytes.
std::string safetensors_bytes(const std::string& header, size_t data_bytes) {
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) out[size_t(i)] = char((uint64_t(header.size()) >> (8 * i)) & 0xff);
  return out + header + std::string(data_bytes, '\0');
}

// Expects fn to throw rill::Error whose message contains every one of `needles`.
template <typename Fn>
void expect_error(Fn fn, std::initializer_list<std::string> needles) {
  try {
    fn();
    ADD_FAILURE() << "no error thrown";
  } catch (const Error& e) {
    for (const auto& n : needles) EXPECT_NE(std::string(e.what()).find(n), std::string::npos) << e.what();
  }
}

TEST(Safetensors, RoundTripAllDtypes) {
  TempDir dir;
  std::vector<float> f = {1.5f, -2.f, 3.25f, 0.f, 7.f, -9.5f};
  std::vector<uint16_t> h = {f32_to_bf16(1.5f), f32_to_bf16(-2.f)};
  std::vector<int64_t> i = {7, -3};
  Tensor tf{f.data(), DType::F32, {2, 3}}, th{h.data(), DType::BF16, {2}}, ti{i.data(), DType::I64, {2}};
  write_safetensors(dir / "a.safetensors", {{"f", tf}, {"h", th}, {"i", ti}}, {{"format", "pt"}});
  WeightMap m;
  read_safetensors(dir / "a.safetensors", &m);
  ASSERT_EQ(m.get("f").shape, (Shape{2, 3}));
  EXPECT_EQ(floats_of(m.get("f")), f);
  EXPECT_EQ(m.get("h").dtype, DType::BF16);
  EXPECT_EQ(bf16_to_f32(m.get("h").ptr<uint16_t>()[1]), -2.f);
  EXPECT_EQ(m.get("i").ptr<int64_t>()[0], 7);
  EXPECT_EQ(m.metadata.at("format"), "pt");
  // The data section starts 8-byte aligned, as the reference writer guarantees.
  EXPECT_EQ(reinterpret_cast<uintptr_t>(m.get("i").data) % 8, 0u);
}

TEST(Safetensors, ShardedDirectoryWithIndex) {
  TempDir dir;
  std::vector<float> a = {1, 2}, b = {3, 4, 5};
  write_safetensors(dir / "model-00001-of-00002.safetensors", {{"a", Tensor{a.data(), DType::F32, {2}}}});
  write_safetensors(dir / "model-00002-of-00002.safetensors", {{"b", Tensor{b.data(), DType::F32, {3}}}});
  write_bytes(dir / "model.safetensors.index.json",
              R"({"metadata": {}, "weight_map": {"a": "model-00001-of-00002.safetensors",
                                                 "b": "model-00002-of-00002.safetensors"}})");
  const WeightMap m = read_safetensors_dir(dir.path.string());
  EXPECT_EQ(floats_of(m.get("b")), b);
  EXPECT_NE(m.where("b").find("model-00002-of-00002"), std::string::npos);

  write_bytes(dir / "model.safetensors.index.json",
              R"({"weight_map": {"a": "model-00001-of-00002.safetensors", "c": "model-00002-of-00002.safetensors"}})");
  expect_error([&] { read_safetensors_dir(dir.path.string()); }, {"'c'", "model-00002-of-00002"});
}

TEST(Safetensors, TruncatedFile) {
  TempDir dir;
  std::vector<float> f(64, 1.f);
  write_safetensors(dir / "t.safetensors", {{"w", Tensor{f.data(), DType::F32, {64}}}});
  const std::string full = read_bytes(dir / "t.safetensors");
  write_bytes(dir / "cut.safetensors", full.substr(0, full.size() - 10));
  expect_error([&] { WeightMap m; read_safetensors(dir / "cut.safetensors", &m); },
               {"cut.safetensors", "'w'", "truncated"});
  write_bytes(dir / "tiny.safetensors", full.substr(0, 5));
  expect_error([&] { WeightMap m; read_safetensors(dir / "tiny.safetensors", &m); }, {"tiny.safetensors", "truncated"});
  write_bytes(dir / "header.safetensors", full.substr(0, 20));
  expect_error([&] { WeightMap m; read_safetensors(dir / "header.safetensors", &m); },
               {"header.safetensors", "header length"});
}

TEST(Safetensors, HeaderNotJson) {
  TempDir dir;
  write_bytes(dir / "bad.safetensors", safetensors_bytes("{not json", 0));
  expect_error([&] { WeightMap m; read_safetensors(dir / "bad.safetensors", &m); }, {"bad.safetensors", "not valid JSON"});
  write_bytes(dir / "arr.safetensors", safetensors_bytes("[1, 2]", 0));
  expect_error([&] { WeightMap m; read_safetensors(dir / "arr.safetensors", &m); }, {"arr.safetensors", "not a JSON object"});
  // Nesting deep enough to overflow the stack in a copy is refused while parsing.
  const std::string deep = "{\"x\": " + std::string(200000, '[') + std::string(200000, ']') + "}";
  write_bytes(dir / "deep.safetensors", safetensors_bytes(deep, 0));
  expect_error([&] { WeightMap m; read_safetensors(dir / "deep.safetensors", &m); },
               {"deep.safetensors", "nested deeper than 128 levels"});
}

TEST(Safetensors, UnknownDtypeAndBadEntries) {
  TempDir dir;
  write_bytes(dir / "d.safetensors", safetensors_bytes(R"({"w": {"dtype": "Q4_K", "shape": [2], "data_offsets": [0, 4]}})", 4));
  expect_error([&] { WeightMap m; read_safetensors(dir / "d.safetensors", &m); }, {"d.safetensors", "'w'", "Q4_K"});
  write_bytes(dir / "s.safetensors", safetensors_bytes(R"({"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}})", 8));
  expect_error([&] { WeightMap m; read_safetensors(dir / "s.safetensors", &m); }, {"'w'", "needs 12"});
  write_bytes(dir / "o.safetensors", safetensors_bytes(R"({"w": {"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}})", 8));
  expect_error([&] { WeightMap m; read_safetensors(dir / "o.safetensors", &m); }, {"'w'", "data_offsets"});
  write_bytes(dir / "n.safetensors", safetensors_bytes(R"({"w": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}})", 8));
  expect_error([&] { WeightMap m; read_safetensors(dir / "n.safetensors", &m); }, {"'w'", "negative"});
  write_bytes(dir / "m.safetensors", safetensors_bytes(R"({"w": {"shape": [2], "data_offsets": [0, 8]}})", 8));
  expect_error([&] { WeightMap m; read_safetensors(dir / "m.safetensors", &m); }, {"'w'", "'dtype'"});
}

// A small valid model directory (copied from the llama fixture) to break in different ways.
class CorruptModelTest : public testing::Test {
 protected:
  void SetUp() override {
    src_ = shared("fixtures/models/llama");
    if (!std::filesystem::exists(src_)) GTEST_SKIP() << "fixture missing";
    std::filesystem::copy_file(src_ + "/config.json", dir_ / "config.json");
    config_ = json::parse(read_bytes(src_ + "/config.json"));
    weights_ = read_safetensors_dir(src_);
  }
  void write_config(const json& j) { write_bytes(dir_ / "config.json", j.dump()); }
  void write_weights(const std::map<std::string, Tensor>& tensors) {
    std::vector<std::pair<std::string, Tensor>> v(tensors.begin(), tensors.end());
    write_safetensors(dir_ / "model.safetensors", v);
  }
  std::string src_;
  TempDir dir_;
  json config_;
  WeightMap weights_;
};

TEST_F(CorruptModelTest, ValidCopyLoads) {
  write_weights(weights_.tensors);
  auto backend = make_cpu_backend(1);
  EXPECT_NO_THROW(Model(read_checkpoint(dir_.path.string()), *backend));
}

TEST_F(CorruptModelTest, MissingTensor) {
  auto t = weights_.tensors;
  t.erase("model.layers.1.mlp.up_proj.weight");
  write_weights(t);
  auto backend = make_cpu_backend(1);
  expect_error([&] { Model(read_checkpoint(dir_.path.string()), *backend); },
               {"model.layers.1.mlp.up_proj.weight", "missing"});
}

TEST_F(CorruptModelTest, WrongShape) {
  auto t = weights_.tensors;
  t["model.layers.0.self_attn.k_proj.weight"] = t["model.layers.0.self_attn.q_proj.weight"];
  write_weights(t);
  auto backend = make_cpu_backend(1);
  expect_error([&] { Model(read_checkpoint(dir_.path.string()), *backend); },
               {"model.safetensors", "model.layers.0.self_attn.k_proj.weight", "[128, 128]", "expected [64, 128]"});
}

TEST_F(CorruptModelTest, IntegerWeights) {
  auto t = weights_.tensors;
  std::vector<int32_t> ints(128, 1);
  t["model.norm.weight"] = Tensor{ints.data(), DType::I32, {128}};
  write_weights(t);
  auto backend = make_cpu_backend(1);
  expect_error([&] { Model(read_checkpoint(dir_.path.string()), *backend); }, {"model.norm.weight", "I32"});
}

TEST_F(CorruptModelTest, ConfigMissingField) {
  for (const char* field : {"hidden_size", "num_hidden_layers", "vocab_size", "num_attention_heads", "intermediate_size"}) {
    json j = config_;
    j.erase(field);
    write_config(j);
    expect_error([&] { read_checkpoint(dir_.path.string()); }, {"config.json", std::string("'") + field + "'"});
  }
}

TEST_F(CorruptModelTest, ConfigBadValues) {
  json j = config_;
  j["hidden_size"] = "128";
  write_config(j);
  expect_error([&] { read_checkpoint(dir_.path.string()); }, {"config.json", "'hidden_size'", "integer"});
  j = config_;
  j["num_key_value_heads"] = 3;
  write_config(j);
  expect_error([&] { read_checkpoint(dir_.path.string()); }, {"config.json", "num_key_value_heads"});
  j = config_;
  j["architectures"] = {"GPT2LMHeadModel"};
  write_config(j);
  expect_error([&] { read_checkpoint(dir_.path.string()); }, {"GPT2LMHeadModel", "LlamaForCausalLM", "Qwen3MoeForCausalLM"});
  j = config_;
  j["rope_scaling"] = {{"rope_type", "longrope"}, {"factor", 2.0}};
  write_config(j);
  expect_error([&] { read_checkpoint(dir_.path.string()); }, {"rope_scaling", "longrope"});
  write_bytes(dir_ / "config.json", "{\"hidden_size\": 12");
  expect_error([&] { read_checkpoint(dir_.path.string()); }, {"config.json", "not valid JSON"});
  write_bytes(dir_ / "config.json", "{\"hidden_size\": " + std::string(200000, '[') + std::string(200000, ']') + "}");
  expect_error([&] { read_checkpoint(dir_.path.string()); }, {"config.json", "nested deeper than"});
}

TEST(HfConfig, RopeForms) {
  // Classic keys and the transformers-5 form give the same configuration.
  json classic = {{"architectures", {"LlamaForCausalLM"}}, {"vocab_size", 10}, {"hidden_size", 8},
                  {"intermediate_size", 16}, {"num_hidden_layers", 1}, {"num_attention_heads", 2},
                  {"max_position_embeddings", 128}, {"rope_theta", 500000.0},
                  {"rope_scaling", {{"rope_type", "llama3"}, {"factor", 8.0}, {"low_freq_factor", 1.0},
                                    {"high_freq_factor", 4.0}, {"original_max_position_embeddings", 64}}}};
  json v5 = classic;
  v5.erase("rope_theta");
  v5.erase("rope_scaling");
  v5["rope_parameters"] = classic["rope_scaling"];
  v5["rope_parameters"]["rope_theta"] = 500000.0;
  for (const json& j : {classic, v5}) {
    const ModelConfig c = parse_hf_config(j, "config.json");
    EXPECT_EQ(c.rope.type, RopeType::Llama3);
    EXPECT_EQ(c.rope.theta, 500000.0);
    EXPECT_EQ(c.rope.factor, 8.0);
    EXPECT_EQ(c.rope.original_max_position_embeddings, 64);
    EXPECT_EQ(c.num_kv_heads, 2);  // defaults to num_attention_heads
    EXPECT_EQ(c.head_dim, 4);
  }
  json legacy = classic;
  legacy["rope_scaling"] = {{"type", "linear"}, {"factor", 2.0}};
  EXPECT_EQ(parse_hf_config(legacy, "c").rope.type, RopeType::Linear);
  legacy["rope_scaling"] = {{"type", "linear"}};
  expect_error([&] { parse_hf_config(legacy, "c"); }, {"'factor'"});
}

TEST(Llama2c, PermutationIsRotateHalf) {
  // One head of dim 4, one column: rows (a0, a1, b0, b1) interleaved -> (a0, b0, a1, b1) rotate-half.
  const float src[4] = {10, 11, 20, 21};
  float dst[4];
  permute_interleaved_to_half(src, dst, 1, 4, 1);
  EXPECT_EQ(std::vector<float>(dst, dst + 4), (std::vector<float>{10, 20, 11, 21}));
}

TEST(Llama2c, TruncatedAndGarbage) {
  const std::string good = shared("data/models/stories260K/stories260K.bin");
  if (!std::filesystem::exists(good)) GTEST_SKIP() << "missing " << good;
  TempDir dir;
  const std::string bytes = read_bytes(good);
  write_bytes(dir / "cut.bin", bytes.substr(0, bytes.size() / 2));
  expect_error([&] { read_llama2c(dir / "cut.bin"); }, {"cut.bin", "truncated"});
  write_bytes(dir / "long.bin", bytes + "xxxx");
  expect_error([&] { read_llama2c(dir / "long.bin"); }, {"long.bin", "trailing"});
  write_bytes(dir / "junk.bin", std::string(64, '\x7f'));
  expect_error([&] { read_llama2c(dir / "junk.bin"); }, {"junk.bin"});
  write_bytes(dir / "short.bin", "abc");
  expect_error([&] { read_llama2c(dir / "short.bin"); }, {"short.bin", "truncated"});
}

TEST(Checkpoint, MissingPathAndNoConfig) {
  expect_error([] { read_checkpoint("/nonexistent/model"); }, {"/nonexistent/model", "no such file"});
  TempDir dir;
  expect_error([&] { read_checkpoint(dir.path.string()); }, {"config.json"});
}

}  // namespace
}  // namespace rill::test
