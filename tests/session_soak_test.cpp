// Soak test of streaming sessions (bounded in time: RILL_SOAK_SECONDS, default 4): client threads append,
// generate (some cancelled part-way), delete and recreate sessions at random while short TTLs expire idle ones
// and ordinary requests run beside them. Afterwards: nothing crashed or hung, every block is free once the
// sessions are gone, and every surviving session holds exactly its own tokens: its next greedy tokens equal a
// single sink-policy run over the history its client recorded.
#include <atomic>
#include <random>
#include <thread>

#include "backend/backend.h"
#include "core/error.h"
#include "engine/engine.h"
#include "reference.h"
#include "test_util.h"

namespace rill::test {
namespace {

struct ClientSession {
  uint64_t id = 0;
  std::vector<int32_t> history;    // every token appended or received
  std::vector<int32_t> last_word;  // the final greedy tokens
};

TEST(SessionSoak, ConcurrentSessionsStayIsolated) {
  TempDir dir;
  const std::string model_dir = dir / "m";
  ASSERT_EQ(std::system((make_random_model_bin() + " --out " + model_dir +
                         " --dim 32 --layers 2 --heads 4 --kv-heads 2 --ffn 64 --vocab 500 --context 256 --dtype f32 > /dev/null").c_str()), 0);
  auto backend = make_cpu_backend(2);
  Model model(read_checkpoint(model_dir), *backend);
  const KvPolicy policy = KvPolicy::parse("sink", 4, 48);
  EngineConfig cfg;
  cfg.num_blocks = 200;
  cfg.max_batch_tokens = 64;
  cfg.max_sessions = 12;
  cfg.session_ttl_seconds = 0.25;
  Engine engine(model, cfg);

  const double seconds = std::getenv("RILL_SOAK_SECONDS") ? std::atof(std::getenv("RILL_SOAK_SECONDS")) : 4.0;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
  std::atomic<int64_t> generations{0}, cancels{0}, expired_seen{0}, recreated{0};
  std::vector<ClientSession> finals(8);
  std::vector<std::thread> clients;
  for (int c = 0; c < 8; ++c) {
    clients.emplace_back([&, c] {
      std::mt19937 rng(uint32_t(100 + c));
      ClientSession s;
      auto fresh = [&] {
        for (;;) {
          try {
            s = ClientSession{engine.create_session(policy), {}};
            ++recreated;
            return;
          } catch (const EngineFull&) {
            std::this_thread::sleep_for(std::chrono::milliseconds(5));
          }
        }
      };
      fresh();
      while (std::chrono::steady_clock::now() < deadline) {
        try {
          const int op = int(rng() % 10);
          if (op < 4) {
            std::vector<int32_t> t;
            for (int i = 0, n = 1 + int(rng() % 60); i < n; ++i) t.push_back(int32_t(rng() % 500));
            engine.append_session(s.id, t);
            s.history.insert(s.history.end(), t.begin(), t.end());
          } else if (op < 8 && !s.history.empty()) {
            Request g;
            g.max_tokens = 1 + int(rng() % 24);
            g.sampling.temperature = (rng() % 2) ? 0.f : 0.9f;
            g.sampling.seed = rng();
            g.sampling.has_seed = true;
            const int cancel_after = (rng() % 3 == 0) ? int(rng() % 6) : -1;
            auto stream = engine.generate_session(s.id, g);
            int got = 0;
            for (;;) {
              auto e = stream->next(30.0);
              ASSERT_TRUE(e.has_value()) << "a session stream stalled";
              if (e->token < 0) break;
              s.history.push_back(e->token);
              if (++got == cancel_after) {
                stream->cancel();
                ++cancels;
              }
            }
            ++generations;
          } else if (op == 8) {
            std::this_thread::sleep_for(std::chrono::milliseconds(rng() % 400));  // long enough to expire, sometimes
          } else {
            engine.delete_session(s.id);
            fresh();
          }
        } catch (const SessionNotFound&) {
          ++expired_seen;
          fresh();
        }
      }
      // The last word: 8 greedy tokens, to compare with a single stream over the history once all is quiet.
      for (;;) {
        try {
          if (s.history.empty()) {
            std::vector<int32_t> t = {1, 2, 3};
            engine.append_session(s.id, t);
            s.history = t;
          }
          Request g;
          g.max_tokens = 8;
          g.ignore_eos = true;
          g.sampling.temperature = 0;
          auto st = engine.generate_session(s.id, g);
          for (auto e = st->next(30.0); e && e->token >= 0; e = st->next(30.0)) s.last_word.push_back(e->token);
          break;
        } catch (const SessionNotFound&) {
          fresh();
        }
      }
      finals[size_t(c)] = s;
    });
  }
  // Ordinary requests beside the sessions.
  std::thread others([&] {
    std::mt19937 rng(7);
    while (std::chrono::steady_clock::now() < deadline) {
      Request r;
      for (int i = 0, n = 1 + int(rng() % 40); i < n; ++i) r.prompt.push_back(int32_t(rng() % 500));
      r.max_tokens = 1 + int(rng() % 16);
      try {
        auto st = engine.submit(r);
        while (st->next(30.0)->token >= 0) {
        }
      } catch (const EngineFull&) {
      }
    }
  });
  for (auto& t : clients) t.join();
  others.join();
  EXPECT_GT(generations.load(), 20);
  EXPECT_GT(cancels.load(), 0);
  EXPECT_GT(expired_seen.load(), 0) << "no session expired under a 0.25 s TTL";

  // Isolation: each session's last word continues exactly one stream over its recorded history. (The
  // references run now that the engine is idle: a model runs one forward at a time.)
  for (const auto& s : engine.list_sessions()) engine.delete_session(s.id);
  EngineMetrics m;
  for (int tries = 0; tries < 400; ++tries) {
    m = engine.metrics();
    if (m.sessions == 0 && m.running == 0 && m.waiting == 0 && m.blocks_free == cfg.num_blocks) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  EXPECT_EQ(m.sessions, 0);
  EXPECT_EQ(m.blocks_free, cfg.num_blocks) << "leaked KV blocks";
  for (size_t c = 0; c < finals.size(); ++c) {
    KvCache kv(*backend, model.config(), SinkWindowState::max_blocks(policy, cfg.block_size), cfg.block_size);
    Request r = greedy_request(finals[c].history, 8);
    r.kv_policy = policy;
    EXPECT_EQ(finals[c].last_word, reference_generate(model, kv, r)) << "session of client " << c << " ("
                                                                     << finals[c].history.size() << " tokens)";
  }
}

}  // namespace
}  // namespace rill::test
