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
#include "grammar_workload.h"
#include "tokenizer/hf_tokenizer.h"

using namespace rill;
using Clock = std::chrono::steady_clock;

// A batch as the engine runs it: `batch` sequences under one grammar, each step a mask per sequence (the engine
// computes them while the device runs the step) and the picked token accepted (after the step). Picks are uniform
// among the allowed tokens, the most varied a model could be. `passes` runs of `steps` steps, the grammar's caches
// kept between them (as between requests).
void batch_run(const std::shared_ptr<grammar::CompiledGrammar>& g, const char* name, int batch, int steps, int passes) {
  const auto& vocab = g->vocab();
  for (int pass = 0; pass < passes; ++pass) {
    std::mt19937 rng(2 + uint32_t(pass));
    std::vector<grammar::Matcher> seqs(static_cast<size_t>(batch), grammar::Matcher(g));
    std::vector<std::vector<uint32_t>> masks(size_t(batch), std::vector<uint32_t>(size_t(vocab.mask_words())));
    const auto before = g->stats();
    double fill_s = 0, accept_s = 0;
    for (int step = 0; step < steps; ++step) {
      auto a = Clock::now();
      for (int i = 0; i < batch; ++i) seqs[size_t(i)].fill_mask(masks[size_t(i)].data());
      fill_s += std::chrono::duration<double>(Clock::now() - a).count();
      std::vector<int32_t> picks;
      for (int i = 0; i < batch; ++i) {
        std::vector<int32_t> pool;
        for (int32_t id = 0; id < vocab.size(); ++id)
          if ((masks[size_t(i)][size_t(id) / 32] >> (id % 32)) & 1) pool.push_back(id);
        picks.push_back(pool.empty() ? -1 : pool[rng() % pool.size()]);
      }
      a = Clock::now();
      for (int i = 0; i < batch; ++i)
        if (picks[size_t(i)] >= 0) seqs[size_t(i)].accept(picks[size_t(i)]);
      accept_s += std::chrono::duration<double>(Clock::now() - a).count();
    }
    const auto after = g->stats();
    std::printf("%s, batch %d x %d steps, pass %d: masks %.0f us per step (%llu computed), accepts %.0f us per step\n",
                name, batch, steps, pass + 1, 1e6 * fill_s / steps,
                (unsigned long long)(after.mask_misses - before.mask_misses), 1e6 * accept_s / steps);
  }
}

int main(int argc, char** argv) {
  CLI::App app{"constrained-decoding mask benchmark"};
  std::string shared = "../shared", tests = "tests/data";
  int walks = 4, tokens = 300, vocab_size = 128256, batch = 64;
  app.add_option("--shared", shared);
  app.add_option("--tests", tests);
  app.add_option("--walks", walks);
  app.add_option("--tokens", tokens);
  app.add_option("--vocab", vocab_size);
  app.add_option("--batch", batch, "sequences in the batch simulation");
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
  batch_run(g, "corpus schema", batch, tokens, 2);
  // gpu_bench's constrained workload (its synthetic vocabulary of 128,256 tokens and person-stream schema).
  auto synthetic = std::make_shared<grammar::Vocabulary>(rill::bench::synthetic_vocabulary(128256), std::vector<int32_t>{});
  batch_run(rill::bench::person_stream_grammar(synthetic), "gpu_bench's person stream", batch, 128, 3);
  batch_run(rill::bench::person_stream_grammar(synthetic, true), "the same, name maxLength 40", batch, 128, 3);
  const auto s = g->stats();
  std::printf("cache: %llu positions (%.1f MiB of token sets), %llu mask hits, %llu misses, %llu uncertain-token checks, "
              "%llu token steps cached, %llu computed\n",
              (unsigned long long)s.positions, double(s.position_bytes) / (1 << 20), (unsigned long long)s.mask_hits,
              (unsigned long long)s.mask_misses, (unsigned long long)s.uncertain_checks, (unsigned long long)s.step_hits,
              (unsigned long long)s.step_misses);
}
