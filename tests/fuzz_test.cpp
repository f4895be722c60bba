// Randomized property tests, bounded in time so they run in CI: the tokenizers and the template
// interpreter on random bytes, random Unicode, random ids and mutated templates. Allowed outcomes are a
// result or a rill::Error; a crash, hang or sanitizer report fails the run (scripts/test.sh runs this
// under ASan and UBSan). RILL_FUZZ_SECONDS scales the budget (default 4 s per test).
#include <chrono>
#include <fstream>
#include <random>

#include "core/error.h"
#include "template/chat_template.h"
#include "tokenizer/hf_tokenizer.h"
#include "core/utf8.h"
#include "test_util.h"

namespace rill::test {
namespace {

double budget_seconds() {
  const char* env = std::getenv("RILL_FUZZ_SECONDS");
  return env ? std::atof(env) : 4.0;
}

struct Clock {
  std::chrono::steady_clock::time_point end;
  explicit Clock(double s) : end(std::chrono::steady_clock::now() + std::chrono::duration_cast<std::chrono::steady_clock::duration>(std::chrono::duration<double>(s))) {}
  bool more() const { return std::chrono::steady_clock::now() < end; }
};

std::string random_unicode(std::mt19937& rng, size_t n) {
  static const uint32_t ranges[][2] = {{0x20, 0x7e}, {0x09, 0x0d}, {0xa0, 0x24f}, {0x370, 0x3ff}, {0x400, 0x4ff},
                                       {0x590, 0x6ff}, {0x4e00, 0x4fff}, {0x3040, 0x30ff}, {0x1f300, 0x1f64f}, {0x2000, 0x206f},
                                       {0xe000, 0xe0ff}, {0x10000, 0x1007f}};
  std::string s;
  for (size_t i = 0; i < n; ++i) {
    const auto& r = ranges[rng() % std::size(ranges)];
    utf8::append(s, r[0] + rng() % (r[1] - r[0] + 1));
  }
  return s;
}

class TokenizerFuzz : public testing::TestWithParam<std::string> {};

TEST_P(TokenizerFuzz, NoCrashAndRoundTrip) {
  const std::string path = shared("data/tokenizers/" + GetParam() + "/tokenizer.json");
  if (!std::filesystem::exists(path)) GTEST_SKIP();
  auto tok = HfTokenizer::load(path);
  // Byte-level tokenizers without a normalizer reproduce any text exactly.
  const bool exact = GetParam() != "qwen2-style";
  std::mt19937 rng(1234);
  Clock clock(budget_seconds());
  int iterations = 0;
  while (clock.more()) {
    ++iterations;
    // Random bytes: valid UTF-8 encodes, anything else is a clear error.
    std::string bytes(rng() % 64, '\0');
    for (char& c : bytes) c = char(rng());
    try {
      tok->encode(bytes, true);
      EXPECT_EQ(utf8::first_invalid(bytes), std::string::npos);
    } catch (const Error&) {
      EXPECT_NE(utf8::first_invalid(bytes), std::string::npos);
    }
    // Random Unicode round-trips.
    const std::string text = random_unicode(rng, rng() % 80);
    const auto ids = tok->encode(text, false);
    if (exact) {
      ASSERT_EQ(tok->decode(ids, false), text) << nlohmann::json(text).dump();
    }
    // Random ids decode to valid UTF-8, and streaming agrees with the full decode.
    std::vector<int32_t> rid(rng() % 40);
    for (auto& id : rid) id = int32_t(rng() % uint32_t(tok->vocab_size()));
    const std::string full = tok->decode(rid, rng() % 2);
    EXPECT_EQ(utf8::first_invalid(full), std::string::npos);
    IncrementalDecoder d(*tok, false);
    std::string streamed;
    for (int32_t id : rid) streamed += d.add(id);
    streamed += d.finish();
    ASSERT_EQ(streamed, tok->decode(rid, false));
    // After a random prompt (which may end inside a character), deltas stay whole characters.
    std::vector<int32_t> ctx(rng() % 8);
    for (auto& id : ctx) id = int32_t(rng() % uint32_t(tok->vocab_size()));
    IncrementalDecoder dc(*tok, true, ctx);
    std::string after;
    for (int32_t id : rid) {
      const std::string delta = dc.add(id);
      ASSERT_EQ(utf8::first_invalid(delta), std::string::npos);
      after += delta;
    }
    after += dc.finish();
    ASSERT_EQ(utf8::first_invalid(after), std::string::npos);
  }
  EXPECT_GT(iterations, 10);
}

INSTANTIATE_TEST_SUITE_P(Tokenizers, TokenizerFuzz,
                         testing::Values("llama3-style", "qwen2-style", "gpt2-style", "llama2-sentencepiece"),
                         [](const auto& info) {
                           std::string n = info.param;
                           std::replace(n.begin(), n.end(), '-', '_');
                           return n;
                         });

TEST(TemplateFuzz, MutatedTemplatesNeverCrash) {
  std::vector<std::string> seeds;
  for (const char* name : {"llama3-style", "qwen2-style", "deepseek-r1-qwen-style", "mistral-style", "llama2-sentencepiece"}) {
    const std::string p = shared("data/tokenizers/" + std::string(name) + "/tokenizer_config.json");
    if (std::filesystem::exists(p)) seeds.push_back(read_chat_config(p).chat_template);
  }
  if (seeds.empty()) GTEST_SKIP();
  static const char* soup[] = {"{%", "%}", "{{", "}}", "{#", "#}", "{%-", "-%}", " if ", " for ", " in ", " endif ",
                               " endfor ", " set ", " x ", "=", "|", "(", ")", "[", "]", "'", "\"", ".", ",", ":",
                               " not ", " and ", "loop.", "messages", " is ", " defined ", "~", "+", "*", "//", "-1",
                               "namespace(", " macro ", " endmacro ", "raise_exception(", "tojson", "[::-1]", "\n"};
  const nlohmann::ordered_json ctx = {{"messages", {{{"role", "user"}, {"content", "hi"}}, {{"role", "assistant"}, {"content", nullptr}}}},
                                      {"add_generation_prompt", true}, {"bos_token", "<s>"}, {"eos_token", "</s>"}, {"tools", nullptr}};
  std::mt19937 rng(99);
  Clock clock(budget_seconds());
  int rendered = 0, rejected = 0;
  while (clock.more()) {
    std::string t = seeds[rng() % seeds.size()];
    for (int m = 0, n = 1 + int(rng() % 6); m < n; ++m) {
      const size_t at = t.empty() ? 0 : rng() % t.size();
      switch (rng() % 3) {
        case 0: t.insert(at, soup[rng() % std::size(soup)]); break;
        case 1: t.erase(at, 1 + rng() % 8); break;
        default: t.insert(at, t.substr(rng() % (t.size() + 1), rng() % 16)); break;
      }
    }
    try {
      ChatTemplate(t).render(ctx);
      ++rendered;
    } catch (const Error&) {
      ++rejected;
    }
  }
  EXPECT_GT(rendered + rejected, 10);
  // Pathological inputs end in an error, not a crash or a hang.
  EXPECT_THROW(ChatTemplate("{{ " + std::string(5000, '(') + " }}"), Error);
  EXPECT_THROW(ChatTemplate(std::string(5000, '{') + "%"), Error);
  std::string nested;
  for (int i = 0; i < 500; ++i) nested += "{% if true %}";
  EXPECT_THROW(ChatTemplate(nested).render(ctx), Error);
}

}  // namespace
}  // namespace rill::test
