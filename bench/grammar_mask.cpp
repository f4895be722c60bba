// Token-mask cost of constrained decoding on the CPU: a large JSON Schema (every schema of the test corpus as one
// object's required properties) over a 128k-token vocabulary (a real byte-level BPE vocabulary, llama3-style,
// padded to 128,256 tokens with words and word pairs of a text, with and without a leading space). Reports the
// compile + precompute time, and the time per mask along random walks through the grammar: cold (a new grammar,
// every state new) and warm (the same grammar again, as the next request with that schema sees it).
//   grammar_mask --shared ../shared --tests tests/data [--walks 4] [--tokens 300]
#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <random>
#include <set>
#include <sstream>

#include "grammar/json_schema.h"
#include "grammar/matcher.h"
#include "tokenizer/hf_tokenizer.h"

using namespace rill;
using Clock = std::chrono::steady_clock;

int main(int argc, char** argv) {
  CLI::App app{"constrained-decoding mask benchmark"};
  std::string shared = "../shared", tests = "tests/data";
  int walks = 4, tokens = 300, vocab_size = 128256;
  app.add_option("--shared", shared);
  app.add_option("--tests", tests);
  app.add_option("--walks", walks);
  app.add_option("--tokens", tokens);
  app.add_option("--vocab", vocab_size);
  CLI11_PARSE(app, argc, argv);

  auto tok = HfTokenizer::load(shared + "/data/tokenizers/llama3-style/tokenizer.json");
  std::vector<std::string> bytes = tok->token_bytes();
  std::set<std::string> seen(bytes.begin(), bytes.end());
  std::ifstream text(shared + "/data/text/tinyshakespeare.txt");
  std::vector<std::string> words;
  for (std::string w; text >> w && words.size() < 200000;) words.push_back(w);
  for (size_t i = 0; int(bytes.size()) < vocab_size && i < words.size(); ++i)
    for (const std::string& t : {words[i], " " + words[i], " " + words[i] + " " + words[(i + 1) % words.size()]})
      if (int(bytes.size()) < vocab_size && seen.insert(t).second) bytes.push_back(t);
  const int real = tok->vocab_size();
  bytes.push_back("</eos>");
  const int32_t eos = int32_t(bytes.size()) - 1;
  auto vocab = std::make_shared<grammar::Vocabulary>(bytes, std::vector<int32_t>{eos});

  std::ifstream f(tests + "/json_schemas.json");
  const auto corpus = nlohmann::ordered_json::parse(f);
  nlohmann::ordered_json schema = {{"type", "object"}, {"properties", nlohmann::ordered_json::object()},
                                   {"required", nlohmann::ordered_json::array()}, {"additionalProperties", false}};
  for (const auto& e : corpus) {
    if (e.contains("unbounded") || e["schema"].dump().find("$ref") != std::string::npos) continue;  // refs point into their own schema
    schema["properties"][e["name"].get<std::string>()] = e["schema"];
    schema["required"].push_back(e["name"]);
  }

  auto t0 = Clock::now();
  auto g = std::make_shared<grammar::CompiledGrammar>(grammar::json_schema_grammar(schema), vocab);
  auto t1 = Clock::now();
  g->precompute();
  auto t2 = Clock::now();
  std::printf("vocabulary: %d tokens (%d of llama3-style, the rest words of tinyshakespeare)\n", vocab->size(), real);
  std::printf("schema: %zu properties, grammar %zu rules, %zu positions; build %.1f ms, precompute %.1f ms\n",
              schema["properties"].size(), g->grammar().alts.size(), g->grammar().elems.size(),
              std::chrono::duration<double, std::milli>(t1 - t0).count(),
              std::chrono::duration<double, std::milli>(t2 - t1).count());

  std::vector<int32_t> closing;
  for (int32_t id = 0; id < vocab->size(); ++id)
    if (vocab->bytes(id).find_first_of("\"}],") != std::string::npos) closing.push_back(id);
  std::vector<uint32_t> mask(size_t(vocab->mask_words()));
  for (int pass = 0; pass < 2; ++pass) {
    std::mt19937 rng(1);  // the same walks in both passes: the second finds every state cached
    std::vector<double> us;
    for (int w = 0; w < walks; ++w) {
      grammar::Matcher m(g);
      for (int step = 0; step < tokens && !m.complete(); ++step) {
        const auto a = Clock::now();
        m.fill_mask(mask.data());
        us.push_back(std::chrono::duration<double, std::micro>(Clock::now() - a).count());
        auto allowed = [&](int32_t id) { return (mask[size_t(id) / 32] >> (id % 32)) & 1; };
        std::vector<int32_t> pool;
        if (rng() % 2)
          for (int32_t id : closing)
            if (allowed(id)) pool.push_back(id);
        if (pool.empty())
          for (int32_t id = 0; id < vocab->size(); ++id)
            if (allowed(id)) pool.push_back(id);
        if (pool.empty()) break;
        m.accept(pool[rng() % pool.size()]);
      }
    }
    std::sort(us.begin(), us.end());
    double sum = 0;
    for (double x : us) sum += x;
    std::printf("%s: %zu masks, mean %.1f us, p50 %.1f us, p99 %.1f us, max %.1f us\n", pass ? "warm" : "cold", us.size(),
                sum / double(us.size()), us[us.size() / 2], us[us.size() * 99 / 100], us.back());
  }
  const auto s = g->stats();
  std::printf("cache: %llu positions, %llu mask hits, %llu misses, %llu uncertain-token checks\n",
              (unsigned long long)s.positions, (unsigned long long)s.mask_hits, (unsigned long long)s.mask_misses,
              (unsigned long long)s.uncertain_checks);
}
