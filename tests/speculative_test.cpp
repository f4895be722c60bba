// Speculative decoding (issue 22): proposers, and the engine verifying their drafts. Whatever is proposed, a
// request gets exactly the tokens it gets alone without speculation (greedy, and seeded sampling with every
// filter and penalty: output token i always uses draw i), under every KV policy, chunked and batched; the
// draws follow the target distribution; rejected drafts leave no KV block behind, in the model's cache or the
// draft's.
#include <map>
#include <random>
#include <thread>

#include "backend/backend.h"
#include "core/error.h"
#include "engine/engine.h"
#include "engine/speculative.h"
#include "grammar/grammar.h"
#include "grammar/matcher.h"
#include "reference.h"
#include "test_util.h"

namespace rill::test {
namespace {

TEST(Ngram, ProposesWhatFollowedTheLatestLongestMatch) {
  //                          0  1  2  3  4  5  6  7  8  9 10 11
  const std::vector<int32_t> t{1, 2, 3, 9, 1, 2, 3, 7, 8, 5, 2, 3};
  // The suffix (2, 3) last occurred at 5..6 (followed by 7 8 5 2 3); (5, 2, 3) never occurred before.
  EXPECT_EQ(ngram_propose(t, 3, 2, 4, 1000), (std::vector<int32_t>{7, 8, 5}));
  EXPECT_EQ(ngram_propose(t, 10, 2, 4, 1000), (std::vector<int32_t>{7, 8, 5, 2, 3}));  // up to the end
  // Only 1-grams allowed: the latest earlier 3 is at 6.
  EXPECT_EQ(ngram_propose(t, 2, 1, 1, 1000), (std::vector<int32_t>{7, 8}));
  // The longest n wins over a later shorter match.
  const std::vector<int32_t> u{4, 5, 6, 1, 9, 5, 6, 2, 4, 5, 6};
  EXPECT_EQ(ngram_propose(u, 1, 2, 3, 1000), (std::vector<int32_t>{1}));  // (4 5 6) at 0, not (5 6) at 5
  EXPECT_TRUE(ngram_propose({1, 2, 3, 4}, 4, 2, 4, 1000).empty());
  EXPECT_TRUE(ngram_propose({}, 4, 1, 4, 1000).empty());
  // Beyond the lookback nothing is found.
  EXPECT_TRUE(ngram_propose(t, 3, 2, 4, 6).empty());
}

// Rows asked ahead of the recorded tokens get the draws of their own output index, and penalties that count the
// tokens ahead: the rows a verification asks for equal those the tokens would get one at a time.
TEST(SamplerAhead, RowsAheadEqualRowsOneAtATime) {
  SamplingParams p;
  p.temperature = 0.9f;
  p.seed = 42;
  p.has_seed = true;
  p.repetition_penalty = 1.2f;
  p.frequency_penalty = 0.3f;
  Sampler one(p), ahead(p);
  one.add_prompt({5, 6});
  ahead.add_prompt({5, 6});
  const std::vector<int32_t> drafts{7, 5, 7};
  std::vector<PenaltyEntry> pen_ahead;
  std::vector<SampleRow> rows_ahead;
  for (size_t j = 0; j <= drafts.size(); ++j)
    rows_ahead.push_back(ahead.next_row(&pen_ahead, std::vector<int32_t>(drafts.begin(), drafts.begin() + long(j))));
  for (size_t j = 0; j <= drafts.size(); ++j) {
    std::vector<PenaltyEntry> pen;
    const SampleRow r = one.next_row(&pen);
    EXPECT_EQ(r.uniform, rows_ahead[j].uniform) << "row " << j;
    std::map<int32_t, int32_t> a, b;
    for (int32_t i = r.penalty_begin; i < r.penalty_end; ++i) a[pen[size_t(i)].token] = pen[size_t(i)].output_count;
    for (int32_t i = rows_ahead[j].penalty_begin; i < rows_ahead[j].penalty_end; ++i)
      b[pen_ahead[size_t(i)].token] = pen_ahead[size_t(i)].output_count;
    EXPECT_EQ(a, b) << "row " << j;
    if (j < drafts.size()) one.record(drafts[j]);
  }
  // Recording two of the drafts leaves the draws of the tokens after them in place.
  ahead.record(7);
  ahead.record(5);
  std::vector<PenaltyEntry> pen;
  EXPECT_EQ(ahead.next_row(&pen).uniform, rows_ahead[2].uniform);
}

EngineMetrics settled(Engine& engine, int64_t finished) {
  EngineMetrics m;
  for (int tries = 0; tries < 400; ++tries) {
    m = engine.metrics();
    if (m.running == 0 && m.waiting == 0 && m.requests_finished >= finished) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return m;
}

class SpecTest : public testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    const std::string dir = shared("fixtures/models/" + GetParam());
    const std::string other = shared("fixtures/models/mistral");
    if (!std::filesystem::exists(dir) || !std::filesystem::exists(other)) GTEST_SKIP();
    RILL_TEST_BACKEND(backend_, 0);
    model_ = std::make_unique<Model>(read_checkpoint(dir), *backend_);
    self_draft_ = std::make_unique<Model>(read_checkpoint(dir), *backend_);
    other_draft_ = std::make_unique<Model>(read_checkpoint(other), *backend_);
  }
  std::vector<int32_t> alone(const Request& r) {
    KvCache kv(*backend_, model_->config(), 64, 16);
    return reference_generate(*model_, kv, r);
  }
  // Greedy and seeded requests (a quarter with every filter and penalty); the even ones repeat a pattern, so
  // that n-gram lookup finds something to propose.
  std::vector<Request> requests(int n, uint32_t seed) {
    std::mt19937 rng(seed);
    const int vocab = model_->config().vocab_size;
    std::vector<Request> out;
    for (int i = 0; i < n; ++i) {
      Request r;
      const int len = 4 + int(rng() % 60);
      std::vector<int32_t> pattern;
      for (int k = 0; k < 3 + int(rng() % 5); ++k) pattern.push_back(int32_t(rng() % uint32_t(vocab)));
      for (int k = 0; k < len; ++k)
        r.prompt.push_back(i % 2 == 0 ? pattern[size_t(k) % pattern.size()] : int32_t(rng() % uint32_t(vocab)));
      r.max_tokens = 1 + int(rng() % 40);
      r.ignore_eos = true;
      if (i % 3 == 1) {
        r.sampling.temperature = 0.8f;
        r.sampling.seed = 1000 + uint64_t(i);
        r.sampling.has_seed = true;
        if (i % 6 == 4) {
          r.sampling.top_k = 20;
          r.sampling.top_p = 0.9f;
          r.sampling.min_p = 0.01f;
          r.sampling.repetition_penalty = 1.1f;
          r.sampling.presence_penalty = 0.2f;
          r.sampling.frequency_penalty = 0.1f;
        }
      } else {
        r.sampling.temperature = 0;
      }
      out.push_back(r);
    }
    return out;
  }
  EngineConfig config(SpecMethod method, Model* draft, int k = 4) {
    EngineConfig cfg;
    cfg.num_blocks = 256;
    cfg.max_batch_tokens = 32;  // prompts are prefilled in chunks beside the verifications
    cfg.max_num_seqs = 12;
    cfg.spec.method = method;
    cfg.spec.draft = draft;
    cfg.spec.tokens = k;
    cfg.spec.max_batch = 64;
    cfg.spec.ngram_min = 1;  // random models rarely repeat longer n-grams: propose after any repeated token
    cfg.spec.weigh_costs = false;  // which steps speculate must not depend on time (SpeculationThatDoesNotPayPauses)
    return cfg;
  }
  // Every request gets exactly its tokens alone; every block of both caches is free after.
  EngineMetrics run_and_compare(const std::vector<Request>& reqs, const EngineConfig& cfg) {
    std::vector<std::vector<int32_t>> expected;
    for (const auto& r : reqs) expected.push_back(alone(r));
    Engine engine(*model_, cfg);
    std::vector<std::shared_ptr<RequestStream>> streams;
    for (const auto& r : reqs) streams.push_back(engine.submit(r));
    for (size_t i = 0; i < reqs.size(); ++i) {
      const Result got = drain(*streams[i]);
      EXPECT_EQ(got.tokens, expected[i]) << "request " << i << " (prompt " << reqs[i].prompt.size() << ", "
                                         << reqs[i].kv_policy.str() << ", T " << reqs[i].sampling.temperature << ")";
      EXPECT_EQ(got.end.finish, FinishReason::Length);
      EXPECT_EQ(got.end.completion_tokens, int(expected[i].size()));
    }
    const EngineMetrics m = settled(engine, int64_t(reqs.size()));
    EXPECT_EQ(m.blocks_free, cfg.num_blocks) << "every block is free again";
    EXPECT_EQ(m.draft_blocks_free, m.draft_blocks_total) << "every draft block is free again";
    EXPECT_GT(m.spec_steps, 0);
    EXPECT_LE(m.spec_accepted, m.spec_proposed);
    EXPECT_EQ(m.spec_emitted, m.spec_accepted + m.spec_steps) << "one correction or bonus per verification";
    return m;
  }

  std::unique_ptr<Backend> backend_;
  std::unique_ptr<Model> model_, self_draft_, other_draft_;
};

// The model as its own draft: greedy drafts are what the model picks, so nearly all are accepted (bonus tokens).
TEST_P(SpecTest, SelfDraftIsExact) {
  const EngineMetrics m = run_and_compare(requests(24, 3), config(SpecMethod::Draft, self_draft_.get()));
  EXPECT_GT(m.spec_accepted, m.spec_proposed / 2);
}

// Another model's drafts are mostly wrong: corrections and rollbacks on nearly every step (with the pause off),
// and with it on (the default), sequences soon stop speculating for a while.
TEST_P(SpecTest, OtherDraftIsExact) {
  EngineConfig cfg = config(SpecMethod::Draft, other_draft_.get(), 3);
  cfg.spec.min_acceptance = 0;
  const EngineMetrics always = run_and_compare(requests(24, 5), cfg);
  EXPECT_LT(always.spec_accepted, always.spec_proposed / 4);
  cfg.spec.min_acceptance = -1;
  const EngineMetrics paused = run_and_compare(requests(24, 5), cfg);
  EXPECT_LT(paused.spec_steps * 2, always.spec_steps) << "sequences whose drafts fail pause";
}

TEST_P(SpecTest, NgramIsExact) {
  const EngineMetrics m = run_and_compare(requests(24, 9), config(SpecMethod::Ngram, nullptr, 5));
  EXPECT_GT(m.spec_proposed, 0);
}

// Sink and window requests (4 sinks + a 32-token window, far shorter than prompt + output) speculate too.
TEST_P(SpecTest, SinkAndWindowPoliciesAreExact) {
  auto reqs = requests(12, 21);
  for (size_t i = 0; i < reqs.size(); ++i) {
    reqs[i].kv_policy = KvPolicy::parse(i % 3 == 2 ? "window" : "sink", i % 3 == 2 ? 0 : 4, 32);
    reqs[i].max_tokens = 40 + 7 * int(i);
  }
  run_and_compare(reqs, config(SpecMethod::Draft, self_draft_.get()));
  run_and_compare(reqs, config(SpecMethod::Ngram, nullptr));
}

// Log-probabilities of accepted tokens are the model's (the same as without speculation), and a request that opts
// out never speculates.
TEST_P(SpecTest, LogprobsAndOptOut) {
  auto reqs = requests(6, 13);
  for (auto& r : reqs) r.logprobs = 2;
  auto run = [&](const EngineConfig& cfg, EngineMetrics* m) {
    Engine engine(*model_, cfg);
    std::vector<std::shared_ptr<RequestStream>> streams;
    for (const auto& r : reqs) streams.push_back(engine.submit(r));
    std::vector<Result> out;
    for (auto& s : streams) out.push_back(drain(*s));
    *m = settled(engine, int64_t(reqs.size()));
    return out;
  };
  EngineMetrics plain_m, spec_m, off_m;
  const auto plain = run(config(SpecMethod::None, nullptr), &plain_m);
  const auto spec = run(config(SpecMethod::Draft, self_draft_.get()), &spec_m);
  EXPECT_GT(spec_m.spec_accepted, 0);
  for (size_t i = 0; i < reqs.size(); ++i) {
    EXPECT_EQ(spec[i].tokens, plain[i].tokens);
    ASSERT_EQ(spec[i].logprobs.size(), plain[i].logprobs.size());
    for (size_t j = 0; j < plain[i].logprobs.size(); ++j)
      EXPECT_NEAR(spec[i].logprobs[j], plain[i].logprobs[j], 1e-5) << "request " << i << " token " << j;
  }
  for (auto& r : reqs) r.speculate = false;
  run(config(SpecMethod::Draft, self_draft_.get()), &off_m);
  EXPECT_EQ(off_m.spec_steps, 0);
}

// Requests cancelled mid-speculation give back every block, the draft's included, and the others go on.
TEST_P(SpecTest, CancellationMidSpeculationLeaksNothing) {
  auto reqs = requests(10, 17);
  for (auto& r : reqs) r.max_tokens = 200;
  const EngineConfig cfg = config(SpecMethod::Draft, self_draft_.get());
  Engine engine(*model_, cfg);
  std::vector<std::shared_ptr<RequestStream>> streams;
  for (const auto& r : reqs) streams.push_back(engine.submit(r));
  for (size_t i = 0; i < streams.size(); i += 2) {
    for (int t = 0; t < 5; ++t) ASSERT_TRUE(streams[i]->next(60.0));
    streams[i]->cancel();
  }
  for (size_t i = 0; i < streams.size(); ++i) {
    const Result r = drain(*streams[i]);
    EXPECT_EQ(r.end.finish, i % 2 == 0 ? FinishReason::Cancelled : FinishReason::Length) << i;
  }
  const EngineMetrics m = settled(engine, int64_t(reqs.size()));
  EXPECT_GT(m.spec_steps, 0);
  EXPECT_EQ(m.blocks_free, cfg.num_blocks);
  EXPECT_EQ(m.draft_blocks_free, m.draft_blocks_total);
}

// A sink session speculates: its generations give what they give without speculation, over many calls, and a
// deleted session gives back its draft blocks.
TEST_P(SpecTest, SinkSessionSpeculates) {
  auto run = [&](const EngineConfig& cfg, EngineMetrics* m) {
    Engine engine(*model_, cfg);
    const uint64_t id = engine.create_session(KvPolicy::parse("sink", 4, 48));
    std::vector<int32_t> all;
    std::mt19937 rng(3);
    for (int call = 0; call < 6; ++call) {
      std::vector<int32_t> text;
      for (int k = 0; k < 20; ++k) text.push_back(int32_t(k % 5 == 0 ? rng() % 1000 : 7 + k % 3));
      engine.append_session(id, text);
      Request r;
      r.max_tokens = 30;
      r.ignore_eos = true;
      r.sampling.temperature = call % 2 ? 0.7f : 0.f;
      r.sampling.seed = 5;
      r.sampling.has_seed = true;
      const Result got = drain(*engine.generate_session(id, r));
      all.insert(all.end(), got.tokens.begin(), got.tokens.end());
    }
    EXPECT_TRUE(engine.delete_session(id));
    *m = engine.metrics();
    return all;
  };
  EngineMetrics plain_m, draft_m, ngram_m;
  const auto plain = run(config(SpecMethod::None, nullptr), &plain_m);
  EXPECT_EQ(run(config(SpecMethod::Draft, self_draft_.get()), &draft_m), plain);
  EXPECT_EQ(run(config(SpecMethod::Ngram, nullptr), &ngram_m), plain);
  EXPECT_GT(draft_m.spec_accepted, 0);
  EXPECT_EQ(draft_m.blocks_free, 256);
  EXPECT_EQ(draft_m.draft_blocks_free, draft_m.draft_blocks_total);
}

// Constrained requests speculate: drafts the grammar refuses are cut before verification, each verified row's
// mask follows the drafts before it, and the tokens are those without speculation, every one allowed.
TEST_P(SpecTest, GrammarConstrainedRequestsSpeculate) {
  const int vocab = model_->config().vocab_size;
  static const char* pieces[] = {"[", "]", ",", "1", "23", "4,", "5]", "a", "b", ",6", " ", "7"};
  std::vector<std::string> bytes(static_cast<size_t>(vocab));
  for (int i = 0; i < vocab; ++i) bytes[size_t(i)] = pieces[size_t(i) % std::size(pieces)];
  auto g = std::make_shared<grammar::CompiledGrammar>(
      grammar::Grammar::parse("root ::= \"[\" [0-9]+ (\",\" [0-9]+){0,12} \"]\""),
      std::make_shared<grammar::Vocabulary>(bytes, std::vector<int32_t>{}));
  auto reqs = requests(10, 41);
  for (auto& r : reqs) {
    r.grammar = g;
    r.max_tokens = 80;
  }
  reqs[3].kv_policy = KvPolicy::parse("sink", 4, 32);
  auto run = [&](const EngineConfig& cfg, EngineMetrics* m) {
    Engine engine(*model_, cfg);
    std::vector<std::shared_ptr<RequestStream>> streams;
    for (const auto& r : reqs) streams.push_back(engine.submit(r));
    std::vector<Result> out;
    for (auto& st : streams) out.push_back(drain(*st));
    *m = settled(engine, int64_t(reqs.size()));
    return out;
  };
  EngineMetrics pm, dm, nm;
  const auto plain = run(config(SpecMethod::None, nullptr), &pm);
  const auto draft = run(config(SpecMethod::Draft, self_draft_.get()), &dm);
  const auto ngram = run(config(SpecMethod::Ngram, nullptr), &nm);
  for (size_t i = 0; i < reqs.size(); ++i) {
    EXPECT_EQ(draft[i].tokens, plain[i].tokens) << "request " << i;
    EXPECT_EQ(ngram[i].tokens, plain[i].tokens) << "request " << i;
    EXPECT_EQ(draft[i].end.finish, plain[i].end.finish);
    grammar::Matcher m(g);
    for (int32_t t : draft[i].tokens) ASSERT_TRUE(m.accept(t)) << "request " << i;
  }
  EXPECT_GT(dm.spec_accepted, 0);
  EXPECT_GT(nm.spec_steps, 0);
  EXPECT_EQ(dm.blocks_free, 256);
  EXPECT_EQ(dm.draft_blocks_free, dm.draft_blocks_total);
}

TEST(SpecCosts, SpeculationPaysWhenItsTokensOutweighItsStep) {
  EXPECT_TRUE(speculation_pays(3.0, 0.5, 0.2));   // 3 tokens for 2.5 plain steps
  EXPECT_FALSE(speculation_pays(2.0, 0.5, 0.2));  // 2 tokens for 2.5 plain steps
  EXPECT_TRUE(speculation_pays(1.0, 0.0, 0.2));   // costs unknown: try
  EXPECT_TRUE(speculation_pays(1.0, 0.5, 0.0));
}

// With the costs weighed (the default), a sequence whose drafts give fewer tokens per verification than a
// speculative step costs in plain steps pauses: another model's drafts (nearly all rejected, one token per
// verification, for a step that also runs the draft) soon stop, and the tokens stay exact.
TEST_P(SpecTest, SpeculationThatDoesNotPayPauses) {
  EngineConfig cfg = config(SpecMethod::Draft, other_draft_.get(), 4);
  cfg.spec.min_acceptance = 0;  // only the costs
  cfg.spec.weigh_costs = false;
  const EngineMetrics always = run_and_compare(requests(16, 61), cfg);
  cfg.spec.weigh_costs = true;
  const EngineMetrics weighed = run_and_compare(requests(16, 61), cfg);
  EXPECT_LT(weighed.spec_steps * 2, always.spec_steps);
}

// The tokens of a verified step follow the model's distribution: over many seeds, the first three tokens of
// requests sampled with speculation (top-k 2: a tiny vocabulary, at most 8 outcomes) and without, from disjoint
// seeds, have the same distribution within a total-variation bound. Accepting every draft fails it: a self
// draft proposes the argmax, which the model draws only with its probability.
TEST_P(SpecTest, SampledTokensFollowTheModelsDistribution) {
  Request base;
  for (int i = 0; i < 12; ++i) base.prompt.push_back(int32_t(17 * i % 200));
  base.max_tokens = 3;
  base.ignore_eos = true;
  base.sampling.temperature = 1.5f;
  base.sampling.top_k = 2;
  base.sampling.has_seed = true;
  constexpr int kDraws = 2000;
  auto histogram = [&](const EngineConfig& cfg, uint64_t first_seed, EngineMetrics* m) {
    std::map<std::pair<int32_t, int32_t>, double> h;
    Engine engine(*model_, cfg);
    std::vector<std::shared_ptr<RequestStream>> streams;
    for (int i = 0; i < kDraws; ++i) {
      Request r = base;
      r.sampling.seed = first_seed + uint64_t(i);
      streams.push_back(engine.submit(r));
    }
    for (auto& s : streams) {
      const Result got = drain(*s);
      if (got.tokens.size() == 3) h[{got.tokens[0], got.tokens[1] * 1000003 + got.tokens[2]}] += 1.0 / kDraws;
    }
    *m = settled(engine, kDraws);
    return h;
  };
  EngineConfig cfg = config(SpecMethod::Draft, self_draft_.get(), 2);
  cfg.max_num_seqs = 64;
  cfg.max_batch_tokens = 512;
  cfg.max_waiting = kDraws;
  EngineConfig plain_cfg = cfg;
  plain_cfg.spec.method = SpecMethod::None;
  EngineMetrics sm, pm;
  const auto spec = histogram(cfg, 1, &sm);
  const auto plain = histogram(plain_cfg, 1'000'000, &pm);
  double tv = 0;
  std::map<std::pair<int32_t, int32_t>, char> keys;
  for (const auto& [k, v] : spec) keys[k] = 1;
  for (const auto& [k, v] : plain) keys[k] = 1;
  for (const auto& [k, c] : keys) {
    const auto a = spec.find(k), b = plain.find(k);
    tv += std::abs((a == spec.end() ? 0 : a->second) - (b == plain.end() ? 0 : b->second)) / 2;
  }
  // Two samples of 2000 draws over 8 outcomes differ by 0.035 in total variation on average (sd 0.015).
  EXPECT_LT(tv, 0.08) << keys.size() << " outcomes";
  std::cerr << "total variation " << tv << " over " << keys.size() << " outcomes\n";
  EXPECT_GT(sm.spec_accepted, 0);
  EXPECT_LT(sm.spec_accepted, sm.spec_proposed) << "some drafts are rejected";
}

INSTANTIATE_TEST_SUITE_P(Models, SpecTest, testing::Values("llama", "qwen3_moe"));

}  // namespace
}  // namespace rill::test
