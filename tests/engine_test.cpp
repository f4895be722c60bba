// The serving engine against the single-request path: whatever the batch around it (chunked prefill,
// prefix reuse, preemption), a request gets exactly the tokens it gets alone, and every block comes back.
#include <random>
#include <thread>

#include "backend/backend.h"
#include "core/error.h"
#include "engine/engine.h"
#include "grammar/grammar.h"
#include "grammar/matcher.h"
#include "reference.h"
#include "test_util.h"

namespace rill::test {
namespace {

class EngineTest : public testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    const std::string dir = shared("fixtures/models/" + GetParam());
    if (!std::filesystem::exists(dir)) GTEST_SKIP();
    RILL_TEST_BACKEND(backend_, 0);
    model_ = std::make_unique<Model>(read_checkpoint(dir), *backend_);
  }
  // The same request alone, through the tests' reference loop.
  std::vector<int32_t> alone(const Request& r) {
    KvCache kv(*backend_, model_->config(), 64, 16);
    return reference_generate(*model_, kv, r);
  }
  std::vector<Request> mixed_requests(int n, uint32_t seed, const std::vector<int32_t>& shared_prefix = {}) {
    std::mt19937 rng(seed);
    std::vector<Request> out;
    for (int i = 0; i < n; ++i) {
      Request r;
      r.prompt = shared_prefix;
      const int len = 1 + int(rng() % 90);
      for (int k = 0; k < len; ++k) r.prompt.push_back(int32_t(rng() % uint32_t(model_->config().vocab_size)));
      r.max_tokens = 1 + int(rng() % 20);
      r.ignore_eos = true;
      if (i % 2) {  // half sample with a seed, half greedy
        r.sampling.temperature = 0.8f;
        r.sampling.seed = 1000 + uint64_t(i);
        r.sampling.has_seed = true;
        if (i % 4 == 3) {  // and a quarter with every filter and penalty
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
  void run_and_compare(const std::vector<Request>& reqs, EngineConfig cfg, EngineMetrics* final_metrics = nullptr) {
    std::vector<std::vector<int32_t>> expected;
    for (const auto& r : reqs) expected.push_back(alone(r));
    Engine engine(*model_, cfg);
    std::vector<std::shared_ptr<RequestStream>> streams;
    for (const auto& r : reqs) streams.push_back(engine.submit(r));
    for (size_t i = 0; i < reqs.size(); ++i) {
      const Result got = drain(*streams[i]);
      EXPECT_EQ(got.tokens, expected[i]) << "request " << i << " (prompt " << reqs[i].prompt.size() << " tokens)";
      EXPECT_EQ(got.end.finish, FinishReason::Length);
      EXPECT_EQ(got.end.completion_tokens, int(expected[i].size()));
      EXPECT_EQ(got.end.prompt_tokens, int(reqs[i].prompt.size()));
    }
    // The loop publishes metrics after the step that finished the last request.
    EngineMetrics m;
    for (int tries = 0; tries < 200; ++tries) {
      m = engine.metrics();
      if (m.running == 0 && m.waiting == 0 && m.requests_finished == int64_t(reqs.size())) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    EXPECT_EQ(m.running, 0);
    EXPECT_EQ(m.waiting, 0);
    EXPECT_EQ(m.blocks_free, cfg.num_blocks) << "every block is free again (cached prefixes included)";
    if (final_metrics) *final_metrics = m;
  }

  std::unique_ptr<Backend> backend_;
  std::unique_ptr<Model> model_;
};

TEST_P(EngineTest, BatchInvariantWithChunkedPrefill) {
  EngineConfig cfg;
  cfg.num_blocks = 256;
  cfg.max_batch_tokens = 32;  // most prompts are longer: they are prefilled in chunks beside decodes
  cfg.max_num_seqs = 16;
  EngineMetrics m;
  run_and_compare(mixed_requests(24, 7), cfg, &m);
  EXPECT_GT(m.steps, 24);
}

// The warm-up runs every kind of step on the engine's KV cache before the first request (issue 29): afterwards
// requests get exactly their tokens alone (the scratch KV it wrote is never read as a prefix), every block is
// free, and on a GPU it recorded the decode graphs of every bucket.
TEST_P(EngineTest, WarmUpChangesNoTokensAndHoldsNoBlock) {
  EngineConfig cfg;
  cfg.num_blocks = 256;
  cfg.max_batch_tokens = 64;
  cfg.max_num_seqs = 5;  // buckets 1, 2, 4, 8
  cfg.max_model_len = 400;
  cfg.warm_up = true;
  {
    Engine engine(*model_, cfg);
    const WarmUpReport& w = engine.warm_up_report();
    EXPECT_GT(w.steps, 0);
    EXPECT_GT(w.seconds, 0);
    EXPECT_EQ(engine.metrics().blocks_free, cfg.num_blocks);
    EXPECT_EQ(engine.metrics().steps, 0) << "warm-up steps are not the engine's";
    const ModelConfig& c = model_->config();
    const bool graphs = backend_->can_record() && model_->recordable() && (c.head_dim == 64 || c.head_dim == 128);
    // 4 buckets x block-table widths 8, 16, 32 (400 tokens in 25 blocks).
    EXPECT_EQ(w.graphs, graphs ? 12 : 0);
  }
  run_and_compare(mixed_requests(12, 11), cfg);
}

// Requests under the sink policy (4 sinks + a 32-token window, far shorter than prompt + output) run beside
// ordinary ones: both get exactly their tokens alone, and the sink-window ones hold a bounded number of blocks.
TEST_P(EngineTest, SinkWindowRequestsBesideOrdinaryOnes) {
  auto reqs = mixed_requests(16, 31);
  for (size_t i = 0; i < reqs.size(); i += 2) {
    reqs[i].kv_policy = KvPolicy::parse("sink", 4, 32);
    reqs[i].max_tokens = 40 + int(i);
  }
  reqs[2].kv_policy = KvPolicy::parse("window", 0, 32);
  EngineConfig cfg;
  cfg.num_blocks = 256;
  cfg.max_batch_tokens = 24;
  cfg.max_num_seqs = 16;
  run_and_compare(reqs, cfg);
}

TEST_P(EngineTest, PrefixReuseGivesSameTokens) {
  std::vector<int32_t> prefix;
  for (int i = 0; i < 64; ++i) prefix.push_back(int32_t((i * 37 + 11) % model_->config().vocab_size));
  EngineConfig cfg;
  cfg.num_blocks = 128;
  cfg.max_batch_tokens = 64;
  EngineMetrics m;
  run_and_compare(mixed_requests(8, 11, prefix), cfg, &m);
  EXPECT_GT(m.prefix_hit_tokens, 0);
  // A request after the others reports its cached prompt tokens.
  Engine engine(*model_, cfg);
  Request r;
  r.prompt = prefix;
  r.prompt.push_back(5);
  r.max_tokens = 2;
  drain(*engine.submit(r));
  const Result second = drain(*engine.submit(r));
  EXPECT_EQ(second.end.cached_tokens, 64);
}

// Requests asking for logprobs (computed on the device) get the tokens they get without, and the
// log-probabilities of the model's own distribution at each step: the token's, and the top alternatives in
// rank order, as a host log-softmax of the same position's logits gives them (penalised rows included: the
// penalties change the pick, not the distribution reported).
TEST_P(EngineTest, LogprobsComeWithTheTokens) {
  auto reqs = mixed_requests(8, 5);
  for (size_t i = 0; i < reqs.size(); ++i) reqs[i].logprobs = int(i % 3) * 3;  // 0, 3 or 6 alternatives
  std::vector<std::vector<int32_t>> expected;
  for (const auto& r : reqs) expected.push_back(alone(r));
  std::vector<std::vector<Event>> got(reqs.size());
  {  // the engine's thread uses the model: the references below run after it is gone
    EngineConfig cfg;
    cfg.num_blocks = 128;
    cfg.max_batch_tokens = 32;
    Engine engine(*model_, cfg);
    std::vector<std::shared_ptr<RequestStream>> streams;
    for (const auto& r : reqs) streams.push_back(engine.submit(r));
    for (size_t i = 0; i < reqs.size(); ++i)
      for (;;) {
        auto e = streams[i]->next(60.0);
        ASSERT_TRUE(e) << "stream stalled";
        if (e->token < 0) break;
        got[i].push_back(*e);
      }
  }
  const int vocab = model_->config().vocab_size;
  for (size_t i = 0; i < reqs.size(); ++i) {
    const Request& r = reqs[i];
    const std::vector<Event>& events = got[i];
    std::vector<int32_t> tokens;
    for (const Event& e : events) tokens.push_back(e.token);
    ASSERT_EQ(tokens, expected[i]) << "request " << i << ": logprobs changed the tokens";
    // The reference: every position's logits from one prefill of prompt + output.
    std::vector<int32_t> seq = r.prompt;
    seq.insert(seq.end(), tokens.begin(), tokens.end() - 1);
    KvCache kv(*backend_, model_->config(), 64, 16);
    const auto logits = prompt_logits(*model_, kv, seq);
    for (size_t j = 0; j < events.size(); ++j) {
      SCOPED_TRACE("request " + std::to_string(i) + ", token " + std::to_string(j));
      const float* row = logits.data() + (r.prompt.size() - 1 + j) * size_t(vocab);
      std::vector<float> want(size_t(1 + 2 * r.logprobs));
      top_logprobs_row(row, vocab, events[j].token, r.logprobs, want.data());
      float mx = 1.f;
      for (int v = 0; v < vocab; ++v) mx = std::max(mx, std::fabs(row[v]));
      const double tol = test_on_gpu() ? 0.1 * mx : 1e-3;  // bf16 on the GPU; else summation order
      EXPECT_NEAR(events[j].logprob, want[0], tol);
      EXPECT_LE(events[j].logprob, 1e-6);
      ASSERT_EQ(events[j].top_logprobs.size(), size_t(r.logprobs));
      for (int a = 0; a < r.logprobs; ++a) {
        const auto [id, lp] = events[j].top_logprobs[size_t(a)];
        if (a > 0) {
          EXPECT_GE(events[j].top_logprobs[size_t(a - 1)].second, lp) << "alternatives in rank order";
        }
        if (id == events[j].token) {
          EXPECT_EQ(lp, events[j].logprob);
        }
        EXPECT_NEAR(lp, want[size_t(2 + 2 * a)], tol);
        if (!test_on_gpu()) {
          EXPECT_EQ(id, int32_t(want[size_t(1 + 2 * a)]));  // bf16 may swap near-ties
        }
      }
      if (r.sampling.temperature == 0 && r.logprobs > 0) {
        EXPECT_EQ(events[j].top_logprobs[0].first, events[j].token);
      }
    }
  }
}

TEST_P(EngineTest, PreemptionLosesNothing) {
  EngineConfig cfg;
  cfg.num_blocks = 14;  // 224 token slots for ~12 requests of up to ~110 tokens
  cfg.max_batch_tokens = 48;
  cfg.max_num_seqs = 8;
  EngineMetrics m;
  run_and_compare(mixed_requests(12, 23), cfg, &m);
  EXPECT_GT(m.preemptions, 0) << "the cache was meant to be too small";
}

// A streaming session: appends in pieces, generates, appends again, generates again; each generation equals a
// single sink-policy run over the session's whole history, and ordinary requests beside it are unchanged.
TEST_P(EngineTest, SessionEqualsOneStreamAndLeavesOthersAlone) {
  const KvPolicy policy = KvPolicy::parse("sink", 4, 32);
  const auto others = mixed_requests(6, 41);
  std::vector<std::vector<int32_t>> expected;
  for (const auto& r : others) expected.push_back(alone(r));
  EngineConfig cfg;
  cfg.num_blocks = 256;
  cfg.max_batch_tokens = 24;
  Engine engine(*model_, cfg);
  const uint64_t id = engine.create_session(policy);
  std::vector<std::shared_ptr<RequestStream>> streams;
  for (const auto& r : others) streams.push_back(engine.submit(r));
  std::vector<int32_t> history;
  std::mt19937 rng(5);
  auto append = [&](int n) {
    std::vector<int32_t> t;
    for (int i = 0; i < n; ++i) t.push_back(int32_t(rng() % uint32_t(model_->config().vocab_size)));
    engine.append_session(id, t);
    history.insert(history.end(), t.begin(), t.end());
  };
  Request g;
  g.max_tokens = 20;
  g.ignore_eos = true;
  g.sampling.temperature = 0;
  // The references run after the engine has gone quiet (a Model runs one forward at a time).
  std::vector<std::vector<int32_t>> contexts, outputs;
  for (int round = 0; round < 2; ++round) {
    append(30);
    append(25);  // while the first piece may still be prefilling
    contexts.push_back(history);
    const Result got = drain(*engine.generate_session(id, g));
    EXPECT_EQ(got.end.finish, FinishReason::Length);
    outputs.push_back(got.tokens);
    history.insert(history.end(), got.tokens.begin(), got.tokens.end());
  }
  std::vector<Result> other_results;
  for (auto& st : streams) other_results.push_back(drain(*st));
  // The session's last generated token is prefilled in one more step; then the loop is idle.
  for (int tries = 0; tries < 400 && engine.session_status(id).pending > 0; ++tries)
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  ASSERT_EQ(engine.session_status(id).pending, 0);
  for (size_t i = 0; i < others.size(); ++i) EXPECT_EQ(other_results[i].tokens, expected[i]) << "request " << i;
  for (size_t round = 0; round < contexts.size(); ++round) {
    Request ref = g;
    ref.prompt = contexts[round];
    ref.kv_policy = policy;
    EXPECT_EQ(outputs[round], alone(ref)) << "round " << round;
  }
  const SessionStatus st = engine.session_status(id);
  EXPECT_EQ(st.tokens, int64_t(history.size()));
  EXPECT_LE(st.tokens_cached, 4 + 32);
  EXPECT_LE(st.blocks, SinkWindowState::max_blocks(policy, cfg.block_size));
  EXPECT_GT(st.kv_bytes, 0u);
  EXPECT_THROW(engine.session_status(id + 100), SessionNotFound);
  EXPECT_TRUE(engine.delete_session(id));
  EXPECT_FALSE(engine.delete_session(id));
  EngineMetrics m;
  for (int tries = 0; tries < 200; ++tries) {
    m = engine.metrics();
    if (m.sessions == 0 && m.running == 0) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  EXPECT_EQ(m.sessions, 0);
  EXPECT_EQ(m.blocks_free, cfg.num_blocks);
}

// Constrained requests (a grammar each: greedy, seeded sampling, a sink window, a session's generation) run beside
// unconstrained ones: each gets the tokens it gets alone in the engine (its own matcher and mask), every token is
// one its grammar allows, and a generation ends (stop) when its grammar is complete.
TEST_P(EngineTest, GrammarConstrainedRequestsInBatches) {
  const int vocab = model_->config().vocab_size;
  // Token i stands for one of a few short strings, so that the random model's tokens spell bracketed lists.
  static const char* pieces[] = {"[", "]", ",", "1", "23", "4,", "5]", "a", "b", ",6", " ", "7"};
  std::vector<std::string> bytes(static_cast<size_t>(vocab));
  for (int i = 0; i < vocab; ++i) bytes[size_t(i)] = pieces[size_t(i) % std::size(pieces)];
  auto g = std::make_shared<grammar::CompiledGrammar>(grammar::Grammar::parse("root ::= \"[\" [0-9]+ (\",\" [0-9]+){0,5} \"]\""),
                                                      std::make_shared<grammar::Vocabulary>(bytes, std::vector<int32_t>{}));
  auto reqs = mixed_requests(12, 53);
  for (size_t i = 0; i < reqs.size(); i += 2) {
    reqs[i].grammar = g;
    reqs[i].max_tokens = 60;
  }
  reqs[4].kv_policy = KvPolicy::parse("sink", 4, 32);
  EngineConfig cfg;
  cfg.num_blocks = 256;
  cfg.max_batch_tokens = 32;
  cfg.max_num_seqs = 16;
  cfg.grammar_threads = 1;
  auto run = [&](const std::vector<Request>& rs, int threads) {
    EngineConfig c = cfg;
    c.grammar_threads = threads;
    Engine engine(*model_, c);
    std::vector<std::shared_ptr<RequestStream>> streams;
    for (const auto& r : rs) streams.push_back(engine.submit(r));
    std::vector<Result> out;
    for (auto& st : streams) out.push_back(drain(*st));
    return out;
  };
  const std::vector<Result> together = run(reqs, 1);
  const std::vector<Result> threaded = run(reqs, 4);  // masks and accepts of the rows on 4 threads
  for (size_t i = 0; i < reqs.size(); i += 2) {
    const Result alone_result = run({reqs[i]}, 1)[0];
    EXPECT_EQ(together[i].tokens, alone_result.tokens) << "request " << i;
    EXPECT_EQ(threaded[i].tokens, alone_result.tokens) << "request " << i;
    grammar::Matcher m(g);
    std::string text;
    for (int32_t t : together[i].tokens) {
      ASSERT_TRUE(m.accept(t)) << "request " << i << ": token " << t << " after '" << text << "'";
      text += bytes[size_t(t)];
    }
    EXPECT_EQ(together[i].end.finish, FinishReason::Stop) << "request " << i << ": " << text;
    EXPECT_TRUE(m.finished()) << text;
  }
  // A session's generation under the grammar, after unconstrained text.
  Engine engine(*model_, cfg);
  const uint64_t id = engine.create_session(KvPolicy::parse("sink", 4, 32));
  engine.append_session(id, std::vector<int32_t>(40, 3));
  Request gen;
  gen.max_tokens = 60;
  gen.grammar = g;
  gen.sampling.temperature = 0;
  const Result got = drain(*engine.generate_session(id, gen));
  grammar::Matcher m(g);
  for (int32_t t : got.tokens) ASSERT_TRUE(m.accept(t));
  EXPECT_TRUE(m.finished());
  EXPECT_EQ(got.end.finish, FinishReason::Stop);
}

INSTANTIATE_TEST_SUITE_P(Models, EngineTest, testing::Values("llama", "qwen3_moe"));

class EngineBasics : public EngineTest {};

TEST_P(EngineBasics, SessionsExpireAndAreBounded) {
  EngineConfig cfg;
  cfg.num_blocks = 64;
  cfg.max_sessions = 2;
  cfg.session_ttl_seconds = 1.0;
  Engine engine(*model_, cfg);
  const uint64_t a = engine.create_session(KvPolicy::parse("sink", 4, 32));
  const uint64_t b = engine.create_session(KvPolicy{});
  EXPECT_THROW(engine.create_session(KvPolicy{}), EngineFull);
  Request g;
  g.max_tokens = 3;
  g.ignore_eos = true;
  try {  // first, before a loaded machine lets b expire
    engine.generate_session(b, g);
    ADD_FAILURE() << "an empty session generated";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("empty"), std::string::npos) << e.what();
  }
  engine.append_session(a, {1, 2, 3});
  g.max_tokens = 100000;
  const auto stream = engine.generate_session(a, g);
  EXPECT_THROW(engine.append_session(a, {4}), SessionBusy);
  EXPECT_THROW(engine.generate_session(a, g), SessionBusy);
  stream->cancel();  // a client going away ends the generation; the session stays
  EXPECT_EQ(drain(*stream).end.finish, FinishReason::Cancelled);
  EXPECT_NO_THROW(engine.append_session(a, {4}));
  // Both expire 1 s after their last use; allow a loaded machine (parallel CI) up to 20 s to get there.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  while (engine.metrics().sessions_expired < 2 && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  EXPECT_THROW(engine.session_status(a), SessionNotFound);
  const EngineMetrics m = engine.metrics();
  EXPECT_GE(m.sessions_expired, 2);
  EXPECT_EQ(m.blocks_free, cfg.num_blocks);
}

// A model whose logits are all NaN: a sampled request ends with an error naming the cause (it is not sampled
// from garbage, and the engine loop does not stop), and the engine goes on serving the next request.
TEST(EngineErrors, NaNLogitsEndTheRequestNotTheEngine) {
  const std::string dir = shared("fixtures/models/llama");
  if (!std::filesystem::exists(dir)) GTEST_SKIP() << "missing: " << dir;
  std::unique_ptr<Backend> backend;
  RILL_TEST_BACKEND(backend, 0);
  Checkpoint ck = read_checkpoint(dir);
  Tensor& norm = ck.weights.tensors.at("model.norm.weight");
  std::vector<float> nans(size_t(norm.numel()), NAN);
  norm.data = nans.data();
  norm.dtype = DType::F32;
  Model model(ck, *backend);
  EngineConfig cfg;
  cfg.num_blocks = 32;
  Engine engine(model, cfg);
  Request r;
  r.prompt = {1, 2, 3};
  r.max_tokens = 4;
  r.sampling.temperature = 0.8f;
  Result got = drain(*engine.submit(r));
  EXPECT_TRUE(got.tokens.empty());
  EXPECT_EQ(got.end.finish, FinishReason::Error);
  EXPECT_NE(got.end.error.find("NaN"), std::string::npos) << got.end.error;
  r.sampling.temperature = 0;  // greedy takes the argmax of what there is: the engine still answers
  got = drain(*engine.submit(r));
  EXPECT_EQ(got.end.finish, FinishReason::Length);
}

// A session call's effects are in the metrics by the time it returns (the server's tests read them right after a
// DELETE; they used to be published one loop turn later, and a test under load read the old count).
TEST_P(EngineBasics, SessionCallsPublishTheirMetrics) {
  EngineConfig cfg;
  cfg.num_blocks = 64;
  Engine engine(*model_, cfg);
  for (int round = 0; round < 200; ++round) {
    const uint64_t id = engine.create_session(KvPolicy{});
    EXPECT_EQ(engine.metrics().sessions, 1) << round;
    engine.append_session(id, std::vector<int32_t>(40, 3));
    for (int i = 0; i < 400 && engine.session_status(id).pending > 0; ++i)
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    ASSERT_TRUE(engine.delete_session(id));
    const EngineMetrics m = engine.metrics();
    EXPECT_EQ(m.sessions, 0) << round;
    EXPECT_EQ(m.blocks_free, cfg.num_blocks) << round;
  }
}

TEST_P(EngineBasics, CancelFreesBlocks) {
  EngineConfig cfg;
  cfg.num_blocks = 64;
  Engine engine(*model_, cfg);
  Request r;
  r.prompt = {1, 2, 3};
  r.max_tokens = 900;
  r.ignore_eos = true;
  auto s = engine.submit(r);
  ASSERT_TRUE(s->next(60.0));
  s->cancel();
  Result rest = drain(*s);
  EXPECT_EQ(rest.end.finish, FinishReason::Cancelled);
  for (int i = 0; i < 200 && engine.metrics().blocks_free != cfg.num_blocks; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  EXPECT_EQ(engine.metrics().blocks_free, cfg.num_blocks);
}

TEST_P(EngineBasics, RejectsBadRequests) {
  EngineConfig cfg;
  cfg.num_blocks = 8;
  cfg.max_model_len = 100;
  Engine engine(*model_, cfg);
  Request r;
  EXPECT_THROW(engine.submit(r), Error);  // empty prompt
  r.prompt = {1, model_->config().vocab_size};
  EXPECT_THROW(engine.submit(r), Error);  // token outside the vocabulary
  r.prompt = {1, 2};
  r.max_tokens = 99;
  try {
    engine.submit(r);
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("101 exceeds the maximum context length of 100"), std::string::npos) << e.what();
  }
  r.max_tokens = 0;
  EXPECT_THROW(engine.submit(r), Error);
}

TEST_P(EngineBasics, FullQueueIsRefused) {
  EngineConfig cfg;
  cfg.num_blocks = 8;
  cfg.max_waiting = 2;
  cfg.max_num_seqs = 1;
  Engine engine(*model_, cfg);
  Request r;
  r.prompt = {1, 2};
  r.max_tokens = 50;
  r.ignore_eos = true;
  std::vector<std::shared_ptr<RequestStream>> ok;
  bool refused = false;
  for (int i = 0; i < 20 && !refused; ++i) {
    try {
      ok.push_back(engine.submit(r));
    } catch (const EngineFull&) {
      refused = true;
    }
  }
  EXPECT_TRUE(refused);
  for (auto& s : ok) EXPECT_EQ(drain(*s).end.finish, FinishReason::Length);
}

INSTANTIATE_TEST_SUITE_P(Models, EngineBasics, testing::Values("llama"));

}  // namespace
}  // namespace rill::test
