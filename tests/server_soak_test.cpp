// A bounded soak of the whole server (issue 26): for RILL_SOAK_SECONDS (default 20; longer on demand), client
// threads send a seeded random mix of streaming and whole completions, chat with response_format, session
// create / append / generate / delete, clients that leave mid-request, slow readers, and malformed requests,
// while /health is polled. Every answer must be one the request can get (no 500, no connection dropped on a
// client that stayed); /health must keep answering; at the end no KV block is held by a request (blocks held
// by cached prefixes are reported apart) and the process's memory has not grown past warm-up.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <fstream>
#include <map>
#include <mutex>
#include <random>

#include "loopback.h"
#include "server_fixture.h"

namespace rill::test {
namespace {

double soak_seconds() {
  const char* env = std::getenv("RILL_SOAK_SECONDS");
  return env ? std::atof(env) : 20.0;
}

size_t rss_bytes() {
  std::ifstream in("/proc/self/statm");
  size_t pages = 0, resident = 0;
  in >> pages >> resident;
  return resident * size_t(sysconf(_SC_PAGESIZE));
}

std::string raw_post(const std::string& path, const std::string& body) {
  return "POST " + path + " HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: " +
         std::to_string(body.size()) + "\r\n\r\n" + body;
}

struct Tally {
  std::mutex m;
  std::map<std::string, int> counts;
  std::vector<std::string> problems;
  void add(const std::string& what) {
    std::lock_guard<std::mutex> lk(m);
    ++counts[what];
  }
  void problem(const std::string& what) {
    std::lock_guard<std::mutex> lk(m);
    if (problems.size() < 20) problems.push_back(what);
  }
};

// One client's session of random calls until `end`.
void client_loop(Fixture& f, uint32_t seed, std::chrono::steady_clock::time_point end, Tally& t) {
  std::mt19937 rng(seed);
  auto pick = [&](int n) { return int(rng() % uint32_t(n)); };
  const json sink = {{"type", "sink"}, {"sinks", 4}, {"window", 60}};
  std::vector<std::string> sessions;
  auto expect = [&](const char* what, int status, std::initializer_list<int> ok, const std::string& body) {
    for (int s : ok)
      if (s == status) return t.add(std::string(what) + " " + std::to_string(status));
    t.problem(std::string(what) + ": status " + std::to_string(status) + " " + body.substr(0, 200));
  };
  while (std::chrono::steady_clock::now() < end) {
    auto c = f.client();
    const std::string prompt = "Once upon a time " + std::to_string(rng() % 1000);
    switch (pick(9)) {
      case 0: {  // a streamed completion, read whole or left after some bytes
        const bool leave = pick(3) == 0;
        const json body = {
            {"prompt", prompt}, {"max_tokens", 4 + pick(40)}, {"stream", true}, {"ignore_eos", true}};
        if (leave) {
          const int s = connect_loopback(f.server->port());
          if (s < 0) break;
          const std::string req = raw_post("/v1/completions", body.dump());
          ::send(s, req.data(), req.size(), MSG_NOSIGNAL);
          char buf[300];
          (void)::recv(s, buf, sizeof buf, 0);
          ::close(s);
          t.add("stream left");
          break;
        }
        auto r = c.Post("/v1/completions", body.dump(), "application/json");
        if (!r)
          t.problem("stream: no response " + httplib::to_string(r.error()));
        else
          expect("stream", r->status, {200, 503}, r->body);
        break;
      }
      case 1: {  // a whole completion, sometimes with the sink policy past the context
        json body = {
            {"prompt", prompt}, {"max_tokens", 4 + pick(30)}, {"temperature", 0.8}, {"seed", pick(100)}};
        if (pick(4) == 0)
          body = {{"prompt", prompt}, {"max_tokens", 600}, {"kv_policy", sink}, {"ignore_eos", true}};
        auto r = c.Post("/v1/completions", body.dump(), "application/json");
        if (!r)
          t.problem("completion: no response " + httplib::to_string(r.error()));
        else
          expect("completion", r->status, {200, 503}, r->body);
        break;
      }
      case 2: {  // chat with a JSON constraint
        const json body = {{"messages", {{{"role", "user"}, {"content", prompt}}}},
                           {"max_tokens", 24},
                           {"response_format", {{"type", "json_object"}}}};
        auto r = c.Post("/v1/chat/completions", body.dump(), "application/json");
        if (!r)
          t.problem("chat: no response " + httplib::to_string(r.error()));
        else
          expect("chat", r->status, {200, 503}, r->body);
        break;
      }
      case 3: {  // sessions: create, append, generate, sometimes delete
        if (sessions.empty() || pick(4) == 0) {
          auto r = c.Post("/v1/sessions", json({{"kv_policy", sink}}).dump(), "application/json");
          if (!r)
            t.problem("session create: no response");
          else if (r->status == 200)
            sessions.push_back(json::parse(r->body)["id"]);
          else
            expect("session create", r->status, {503}, r->body);
          break;
        }
        const std::string id = sessions[size_t(pick(int(sessions.size())))];
        auto r = c.Post(("/v1/sessions/" + id + "/append").c_str(), json({{"text", prompt}}).dump(),
                        "application/json");
        if (!r)
          t.problem("append: no response");
        else
          expect("append", r->status, {200, 404, 409}, r->body);  // 404: expired; 409: generating
        const bool stream = pick(2) == 0;
        r = c.Post(("/v1/sessions/" + id + "/generate").c_str(),
                   json({{"max_tokens", 2 + pick(20)}, {"stream", stream}}).dump(), "application/json");
        if (!r)
          t.problem("generate: no response");
        else
          expect("generate", r->status, {200, 404, 409}, r->body);
        if (pick(3) == 0) {
          auto d = c.Delete(("/v1/sessions/" + id).c_str());
          if (d) expect("delete", d->status, {200, 404}, d->body);
          sessions.erase(std::find(sessions.begin(), sessions.end(), id));
        }
        break;
      }
      case 4: {  // a client that sends a long request and leaves before the answer
        const int s = connect_loopback(f.server->port());
        if (s < 0) {
          t.problem("connect failed");
          break;
        }
        const std::string req = raw_post("/v1/completions", json({{"prompt", prompt},
                                                                  {"max_tokens", 5000},
                                                                  {"kv_policy", sink},
                                                                  {"ignore_eos", true},
                                                                  {"stream", pick(2) == 0}})
                                                                .dump());
        ::send(s, req.data(), req.size(), MSG_NOSIGNAL);
        std::this_thread::sleep_for(std::chrono::milliseconds(20 + pick(200)));
        ::close(s);
        t.add("left");
        break;
      }
      case 5: {  // a slow reader: a stream read a few bytes at a time, then dropped
        const int s = connect_loopback(f.server->port());
        if (s < 0) break;
        int small = 2048;
        setsockopt(s, SOL_SOCKET, SO_RCVBUF, &small, sizeof small);
        const std::string req = raw_post("/v1/completions", json({{"prompt", prompt},
                                                                  {"max_tokens", 2000},
                                                                  {"kv_policy", sink},
                                                                  {"stream", true},
                                                                  {"ignore_eos", true}})
                                                                .dump());
        ::send(s, req.data(), req.size(), MSG_NOSIGNAL);
        char buf[64];
        for (int i = 0; i < 10; ++i) {
          (void)::recv(s, buf, sizeof buf, 0);
          std::this_thread::sleep_for(std::chrono::milliseconds(30));
        }
        ::close(s);
        t.add("slow reader");
        break;
      }
      case 6: {  // malformed requests: each a 4xx
        static const char* bodies[] = {"{",
                                       "[]",
                                       "{\"prompt\": 5}",
                                       "{\"prompt\": \"x\", \"max_tokens\": -1}",
                                       "{\"messages\": \"x\"}",
                                       "{\"prompt\": \"x\", \"n\": 1000000}"};
        std::string body = bodies[pick(6)];
        if (pick(6) == 0) body = "{\"prompt\": " + std::string(5000, '[') + std::string(5000, ']') + "}";
        auto r = c.Post(pick(2) ? "/v1/completions" : "/v1/chat/completions", body, "application/json");
        if (!r)
          t.problem("malformed: no response");
        else
          expect("malformed", r->status, {400}, r->body);
        break;
      }
      case 7: {  // not HTTP at all
        const int s = connect_loopback(f.server->port());
        if (s < 0) break;
        const std::string junk = "\x16\x03\x01 not http \r\n\r\n";
        ::send(s, junk.data(), junk.size(), MSG_NOSIGNAL);
        char buf[256];
        timeval tv{5, 0};
        setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
        const ssize_t n = ::recv(s, buf, sizeof buf, 0);
        if (n <= 0 || std::string(buf, size_t(n)).rfind("HTTP/1.1 400", 0) != 0)
          t.problem("junk: not a 400");
        else
          t.add("junk 400");
        ::close(s);
        break;
      }
      default: {
        auto r = c.Get("/metrics");
        if (!r || r->status != 200)
          t.problem("metrics failed");
        else
          t.add("metrics");
      }
    }
  }
  auto c = f.client();
  for (const auto& id : sessions) c.Delete(("/v1/sessions/" + id).c_str());
}

TEST(ServerSoak, MixedHostileTrafficLeavesNothingBehind) {
  if (!have_fixtures()) GTEST_SKIP();
  EngineConfig ec;
  ec.max_num_seqs = 16;
  ec.max_sessions = 24;
  ec.session_ttl_seconds = 3;
  ServerConfig sc;
  sc.write_timeout_s = 2;  // slow readers are dropped quickly
  Fixture f(ec, sc);
  const double seconds = soak_seconds();
  const auto start = std::chrono::steady_clock::now();
  const auto end = start + std::chrono::milliseconds(int64_t(seconds * 1000));
  Tally t;
  std::vector<std::thread> clients;
  for (uint32_t i = 0; i < 12; ++i) clients.emplace_back([&, i] { client_loop(f, 1000 + i, end, t); });
  // /health throughout, and the process's memory after a third of the run (warm-up) and at the end.
  std::vector<double> health_ms;
  size_t rss_warm = 0;
  while (std::chrono::steady_clock::now() < end) {
    const auto t0 = std::chrono::steady_clock::now();
    auto r = f.client().Get("/health");
    health_ms.push_back(
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
    if (!r || r->status != 200) t.problem("health failed");
    if (rss_warm == 0 && std::chrono::steady_clock::now() - start > (end - start) / 3) rss_warm = rss_bytes();
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  for (auto& c : clients) c.join();
  // Let cancelled work and dropped connections settle, and the sessions left behind expire.
  const auto settle = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  EngineMetrics m = f.engine->metrics();
  while (std::chrono::steady_clock::now() < settle &&
         (m.running > 0 || m.waiting > 0 || m.sessions > 0 || f.server->connections() > 0)) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    m = f.engine->metrics();
  }
  const size_t rss_end = rss_bytes();
  std::sort(health_ms.begin(), health_ms.end());
  std::printf("soak %.0f s: ", seconds);
  for (const auto& [what, n] : t.counts) std::printf("%s=%d  ", what.c_str(), n);
  std::printf(
      "\nhealth p50 %.1f ms p99 %.1f ms max %.1f ms; KV blocks held by requests %d, by cached prefixes %d "
      "(of %d); RSS after warm-up %.1f MiB, at the end %.1f MiB\n",
      health_ms[health_ms.size() / 2], health_ms[health_ms.size() * 99 / 100], health_ms.back(),
      m.blocks_total - m.blocks_free, m.blocks_cached_free, m.blocks_total, double(rss_warm) / (1 << 20),
      double(rss_end) / (1 << 20));
  for (const auto& p : t.problems) ADD_FAILURE() << p;
  EXPECT_EQ(m.running, 0);
  EXPECT_EQ(m.waiting, 0);
  EXPECT_EQ(m.sessions, 0);
  EXPECT_EQ(m.blocks_total - m.blocks_free, 0) << "KV blocks still held by requests";
  EXPECT_EQ(f.server->connections(), 0u);
  EXPECT_LT(double(rss_end), double(rss_warm) * 1.25 + double(64 << 20)) << "memory grew after warm-up";
  EXPECT_GT(t.counts["stream 200"] + t.counts["completion 200"], 10) << "the soak did work";
}

}  // namespace
}  // namespace rill::test
