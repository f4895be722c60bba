// tokenizer.json against Hugging Face tokenizers' own output, for every tokenizer in
// ../shared/data/tokenizers and every text of the fixture corpus.
#include "tokenizer/hf_tokenizer.h"

#include <fstream>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/utf8.h"
#include "template/chat_template.h"
#include "test_util.h"

namespace rill::test {
namespace {

using nlohmann::json;

const std::vector<std::string> kNames = {"llama3-style", "qwen2-style",          "deepseek-r1-qwen-style",
                                         "gpt2-style",   "llama2-sentencepiece", "mistral-style"};

class HfTokenizerFixture : public testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    const std::string ref = shared("fixtures/tokenizers/" + GetParam() + ".json");
    if (!std::filesystem::exists(ref)) GTEST_SKIP() << "missing " << ref;
    tok_ = HfTokenizer::load(shared("data/tokenizers/" + GetParam() + "/tokenizer.json"));
    std::ifstream in(ref);
    ref_ = json::parse(in);
    ASSERT_GE(ref_["cases"].size(), 40u) << "fixture has too few cases to mean anything";
  }
  std::unique_ptr<HfTokenizer> tok_;
  json ref_;
};

TEST_P(HfTokenizerFixture, EncodeMatchesReference) {
  for (const auto& c : ref_["cases"]) {
    const std::string text = c["text"];
    EXPECT_EQ(tok_->encode(text, false), c["ids_no_special"].get<std::vector<int32_t>>())
        << json(text).dump();
    EXPECT_EQ(tok_->encode(text, true), c["ids_with_special"].get<std::vector<int32_t>>())
        << json(text).dump();
  }
}

// encode_at_most is encode() while the ids fit, and TooManyTokens one id past the bound (every tokenizer
// kind: byte-level, metaspace, added tokens at the end).
TEST_P(HfTokenizerFixture, EncodeAtMostStopsPastTheBound) {
  for (const auto& c : ref_["cases"]) {
    const std::string text = c["text"];
    const auto ids = c["ids_with_special"].get<std::vector<int32_t>>();
    EXPECT_EQ(tok_->encode_at_most(text, true, ids.size()), ids) << json(text).dump();
    if (ids.empty()) continue;
    EXPECT_THROW(tok_->encode_at_most(text, true, ids.size() - 1), TooManyTokens) << json(text).dump();
  }
}

TEST_P(HfTokenizerFixture, DecodeMatchesReference) {
  for (const auto& c : ref_["cases"]) {
    const auto ids = c["ids_with_special"].get<std::vector<int32_t>>();
    EXPECT_EQ(tok_->decode(ids, false), c["decoded"].get<std::string>()) << json(c["text"]).dump();
    EXPECT_EQ(tok_->decode(ids, true), c["decoded_skip_special"].get<std::string>())
        << json(c["text"]).dump();
  }
}

TEST_P(HfTokenizerFixture, IncrementalDeltasConcatenateToFullDecode) {
  for (const auto& c : ref_["cases"]) {
    const auto ids = c["ids_with_special"].get<std::vector<int32_t>>();
    for (bool skip : {false, true}) {
      IncrementalDecoder d(*tok_, skip);
      std::string streamed;
      for (int32_t id : ids) {
        const std::string delta = d.add(id);
        EXPECT_EQ(utf8::first_invalid(delta), std::string::npos) << "partial UTF-8 in a delta";
        streamed += delta;
      }
      streamed += d.finish();
      EXPECT_EQ(streamed, tok_->decode(ids, skip)) << json(c["text"]).dump();
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Tokenizers, HfTokenizerFixture, testing::ValuesIn(kNames), [](const auto& info) {
  std::string n = info.param;
  std::replace(n.begin(), n.end(), '-', '_');
  return n;
});

// Regression (found by fuzz_test): ByteFallback turns a whole invalid byte run into U+FFFD, so "é" sent
// early became "���" once a stray continuation byte followed, and the stream cut a character in half.
TEST(HfTokenizer, StreamingWaitsForByteRuns) {
  const std::string path = shared("data/tokenizers/llama2-sentencepiece/tokenizer.json");
  if (!std::filesystem::exists(path)) GTEST_SKIP();
  auto tok = HfTokenizer::load(path);
  const std::vector<int32_t> ids = {3 + 0xC3, 3 + 0xA9, 3 + 0x80, 263};  // <0xC3> <0xA9> <0x80> ▁a
  IncrementalDecoder d(*tok, false);
  std::string streamed;
  for (int32_t id : ids) {
    const std::string delta = d.add(id);
    EXPECT_EQ(utf8::first_invalid(delta), std::string::npos);
    streamed += delta;
  }
  streamed += d.finish();
  EXPECT_EQ(streamed, tok->decode(ids, false));
  EXPECT_EQ(streamed, "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD a");
}

// A model's embedding table is often larger than its tokenizer (151936 rows for 151665 tokens): ids past the
// tokenizer decode to nothing, as in HF tokenizers, and never fail (here, or streamed).
TEST(HfTokenizer, IdsPastTheVocabularyDecodeToNothing) {
  const std::string path = shared("data/tokenizers/qwen2-style/tokenizer.json");
  if (!std::filesystem::exists(path)) GTEST_SKIP();
  auto tok = HfTokenizer::load(path);
  const auto hello = tok->encode("Hello world", false);
  std::vector<int32_t> ids = {tok->vocab_size() + 5};
  ids.insert(ids.end(), hello.begin(), hello.end());
  ids.push_back(tok->vocab_size());
  ids.push_back(1 << 30);
  EXPECT_EQ(tok->decode(ids), "Hello world");
  IncrementalDecoder d(*tok, false);
  std::string streamed;
  for (int32_t id : ids) streamed += d.add(id);
  streamed += d.finish();
  EXPECT_EQ(streamed, "Hello world");
}

TEST(HfTokenizer, SpecialTokensAsPlainText) {
  const std::string path = shared("data/tokenizers/qwen2-style/tokenizer.json");
  if (!std::filesystem::exists(path)) GTEST_SKIP();
  auto tok = HfTokenizer::load(path);
  const std::string text = "<|im_start|>user";
  const auto parsed = tok->encode(text, false, true), plain = tok->encode(text, false, false);
  EXPECT_EQ(parsed[0], tok->token_to_id("<|im_start|>"));
  EXPECT_EQ(std::count(plain.begin(), plain.end(), tok->token_to_id("<|im_start|>")), 0);
  EXPECT_GT(plain.size(), parsed.size());
  EXPECT_EQ(tok->decode(plain), text);  // same text, no control token
}

TEST(HfTokenizer, TokenizerConfigDecidesBosEos) {
  const std::string src = shared("data/tokenizers/llama2-sentencepiece");
  if (!std::filesystem::exists(src)) GTEST_SKIP();
  TempDir dir;
  std::filesystem::copy_file(src + "/tokenizer.json", dir / "tokenizer.json");
  std::ofstream(dir / "tokenizer_config.json")
      << R"({"tokenizer_class": "LlamaTokenizerFast", "add_bos_token": false, "add_eos_token": true, "bos_token": "<s>", "eos_token": "</s>"})";
  auto tok = HfTokenizer::load(dir / "tokenizer.json");
  EXPECT_EQ(tok->encode("Hello world", true), (std::vector<int32_t>{15043, 3186, 2}));
}

// Regression (found by the serving benchmark): a prompt ending inside a UTF-8 character, completed by the
// first generated token. The decoder waited forever and finish() then cut a U+FFFD in half, and the
// server died serializing the invalid UTF-8.
TEST(HfTokenizer, StreamingAfterContextEndingMidCharacter) {
  const std::string path = shared("data/tokenizers/qwen2-style/tokenizer.json");
  if (!std::filesystem::exists(path)) GTEST_SKIP();
  auto tok = HfTokenizer::load(path);
  const int32_t c3 = tok->token_to_id("\xC3\x83"),
                a9 = tok->token_to_id("\xC2\xA9");  // byte-level 0xC3, 0xA9
  ASSERT_GE(c3, 0);
  ASSERT_GE(a9, 0);
  const int32_t x = tok->encode("x", false)[0];
  IncrementalDecoder d(*tok, true, {x, c3});  // the context's text ends with the first byte of "é"
  std::string streamed;
  for (int32_t id : {a9, x}) {
    const std::string delta = d.add(id);
    EXPECT_EQ(utf8::first_invalid(delta), std::string::npos);
    streamed += delta;
  }
  streamed += d.finish();
  EXPECT_EQ(utf8::first_invalid(streamed), std::string::npos);
  EXPECT_EQ(streamed, "\xC3\xA9x");  // the completed character, then the rest
}

// rill-tiny's own tokenizer (models/rill-tiny) against what transformers made of it when it was trained:
// ids with and without special tokens, decodes, and chat-template renderings.
TEST(HfTokenizer, EmbeddedModelTokenizerMatchesTransformers) {
  const std::string dir = models_dir() + "/rill-tiny";
  auto tok = HfTokenizer::load(dir + "/tokenizer.json");
  const auto ref =
      nlohmann::json::parse(std::ifstream(test_data_dir() + "/rill-tiny/tokenizer-reference.json"));
  ASSERT_GE(ref["encodings"].size(), 10u);
  for (const auto& c : ref["encodings"]) {
    const std::string text = c["text"];
    const auto ids = c["ids"].get<std::vector<int32_t>>();
    EXPECT_EQ(tok->encode(text, true), ids) << text;
    EXPECT_EQ(tok->encode(text, false), c["ids_no_special"].get<std::vector<int32_t>>()) << text;
    EXPECT_EQ(tok->decode(ids, false), c["decoded"].get<std::string>()) << text;
    EXPECT_EQ(tok->decode(ids, true), c["decoded_skip_special"].get<std::string>()) << text;
  }
  const ChatConfig cfg = read_chat_config(dir + "/tokenizer_config.json");
  const ChatTemplate tmpl(cfg.chat_template);
  ASSERT_EQ(ref["chat"].size(), 2u);
  for (const auto& c : ref["chat"]) {
    nlohmann::ordered_json ctx = {{"messages", c["messages"]},
                                  {"add_generation_prompt", c["add_generation_prompt"]},
                                  {"bos_token", cfg.bos_token},
                                  {"eos_token", cfg.eos_token}};
    EXPECT_EQ(tmpl.render(ctx), c["text"].get<std::string>());
  }
}

TEST(HfTokenizer, InvalidUtf8IsAnError) {
  const std::string path = shared("data/tokenizers/llama3-style/tokenizer.json");
  if (!std::filesystem::exists(path)) GTEST_SKIP();
  auto tok = HfTokenizer::load(path);
  try {
    tok->encode("ok \xC3\x28 bad", false);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("UTF-8 (byte 3)"), std::string::npos) << e.what();
  }
}

TEST(HfTokenizer, CorruptFilesAreErrors) {
  TempDir dir;
  std::ofstream(dir / "a.json") << "{\"model\": {\"type\": \"Unigram\", \"vocab\": []}}";
  EXPECT_THROW(HfTokenizer::load(dir / "a.json"), Error);
  std::ofstream(dir / "b.json")
      << "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": [\"a b\"]}}";
  EXPECT_THROW(HfTokenizer::load(dir / "b.json"), Error);  // merge uses a missing token
  std::ofstream(dir / "c.json") << "{not json";
  EXPECT_THROW(HfTokenizer::load(dir / "c.json"), Error);
  std::ofstream(dir / "d.json")
      << R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}, "pre_tokenizer": {"type": "Split", "pattern": {"Regex": "(unclosed"}}})";
  EXPECT_THROW(HfTokenizer::load(dir / "d.json"), Error);
  // Found by fuzz/tokenizer_json: a Sequence without its list read past a missing key (heap-use-after-free
  // under ASan); fields of the wrong type escaped as the JSON library's exceptions.
  const std::string bpe = R"("model": {"type": "BPE", "vocab": {"a": 0}, "merges": []})";
  for (const std::string& bad :
       {R"({"decoder": {"type": "Sequence", "normaldecoders": []}, )" + bpe + "}",
        R"({"normalizer": {"type": "Sequence"}, )" + bpe + "}",
        R"({"decoder": {"type": "Replace", "pattern": {"String": 5}, "content": " "}, )" + bpe + "}",
        R"({"decoder": {"type": "Replace", "patt%rn": {"String": "x"}, "content": " "}, )" + bpe + "}",
        R"({"added_tokens": [{"id": 1, "content": "x", "special": "yes"}], )" + bpe + "}"}) {
    std::ofstream(dir / "e.json") << bad;
    try {
      HfTokenizer::load(dir / "e.json");
      ADD_FAILURE() << "loaded: " << bad;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("e.json"), std::string::npos) << e.what();
    }
  }
}

}  // namespace
}  // namespace rill::test
