// The HTTP server (server/http.h) alone, with routes made for the test, over loopback: what hostile or slow
// clients do to it (issue 26), and the protocol cases cpp-httplib got wrong.
#include "server/http.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <httplib.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <future>
#include <thread>

#include "loopback.h"

namespace rill::test {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

double ms_since(Clock::time_point t) {
  return std::chrono::duration<double, std::milli>(Clock::now() - t).count();
}

struct Served {
  std::unique_ptr<http::Server> server;
  int port = 0;
  std::thread thread;
  std::atomic<int> blocked{0};
  std::atomic<bool> release{false};
  std::atomic<int> finally_calls{0};
  std::atomic<int> gone_seen{0};
  std::atomic<int> sink_failed{0};

  explicit Served(http::Config c = {}) {
    c.port = 0;
    server = std::make_unique<http::Server>(c, http::Hooks{});
    server->route(
        "GET", "/health", [](const http::Request&, http::Response& r) { r.set_content("ok", "text/plain"); },
        true, true);
    server->route("POST", "/echo",
                  [](const http::Request& q, http::Response& r) { r.set_content(q.body, "text/plain"); });
    server->route("GET", "/items/([0-9]+)", [](const http::Request& q, http::Response& r) {
      r.set_content(q.params[0], "text/plain");
    });
    // Blocks its worker until released (or its client leaves).
    server->route("GET", "/block", [this](const http::Request& q, http::Response& r) {
      ++blocked;
      while (!release && !q.client_gone()) std::this_thread::sleep_for(5ms);
      if (q.client_gone()) ++gone_seen;
      --blocked;
      r.set_content("released", "text/plain");
    });
    // Streams 64 KiB events until the client stops taking them (or 64 MiB went out).
    server->route("GET", "/firehose", [this](const http::Request&, http::Response& r) {
      r.content_type = "text/event-stream";
      r.stream = [this](http::Sink& s) {
        const std::string event(64 << 10, 'x');
        for (int i = 0; i < 1024; ++i)
          if (!s.write(event)) {
            ++sink_failed;
            return false;
          }
        return true;
      };
      r.finally = [this] { ++finally_calls; };
    });
    port = server->bind();
    thread = std::thread([this] { server->serve(); });
  }
  ~Served() {
    release = true;
    server->shutdown(0ms, nullptr, 2000ms);
    thread.join();
  }
  httplib::Client client() const {
    httplib::Client c("127.0.0.1", port);
    c.set_read_timeout(10, 0);
    return c;
  }
};

// Sends raw bytes and returns what comes back until the server closes or `wait` passes.
std::string talk(int port, const std::string& bytes, std::chrono::milliseconds wait = 3000ms,
                 bool close_after = true) {
  const int s = connect_loopback(port);
  if (s < 0) return "(no connection)";
  ::send(s, bytes.data(), bytes.size(), MSG_NOSIGNAL);
  std::string got;
  const auto end = Clock::now() + wait;
  timeval tv{0, 50000};
  setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  char buf[4096];
  while (Clock::now() < end) {
    const ssize_t n = ::recv(s, buf, sizeof buf, 0);
    if (n == 0) break;
    if (n > 0) got.append(buf, size_t(n));
  }
  if (close_after) ::close(s);
  return got;
}

int status_of(const std::string& response) {
  if (response.rfind("HTTP/1.1 ", 0) != 0 || response.size() < 12) return -1;
  return std::stoi(response.substr(9, 3));
}

// A GET on its own connection, without cpp-httplib: concurrent httplib clients race inside the library's
// uninstrumented code as ThreadSanitizer sees it (std::regex in libcpp-httplib.so), which is not this server.
std::pair<int, std::string> raw_get(int port, const std::string& path) {
  const std::string r =
      talk(port, "GET " + path + " HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 20000ms);
  const size_t body = r.find("\r\n\r\n");
  return {status_of(r), body == std::string::npos ? std::string() : r.substr(body + 4)};
}

TEST(Http, RoutesMethodsAndErrors) {
  Served s;
  auto c = s.client();
  EXPECT_EQ(c.Get("/health")->body, "ok");
  EXPECT_EQ(c.Get("/items/42")->body, "42");
  auto r = c.Post("/echo", "hello", "text/plain");
  EXPECT_EQ(r->body, "hello");
  EXPECT_EQ(c.Get("/nowhere")->status, 404);
  // A known path with another method is a 405 naming the allowed ones (unknown methods too).
  r = c.Delete("/echo");
  EXPECT_EQ(r->status, 405);
  EXPECT_EQ(r->get_header_value("Allow"), "POST");
  const std::string foo = talk(s.port, "FOO /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
  EXPECT_EQ(status_of(foo), 405) << foo;
  // PUT or PATCH without a body is answered at once (cpp-httplib waited 5 s for a body).
  auto t = Clock::now();
  const std::string put = talk(s.port, "PUT /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
  EXPECT_EQ(status_of(put), 405) << put;
  EXPECT_LT(ms_since(t), 1000);
  // HEAD of a GET route: its head, no body.
  const std::string head = talk(s.port, "HEAD /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
  EXPECT_EQ(status_of(head), 200);
  EXPECT_NE(head.find("Content-Length: 2"), std::string::npos) << head;
  EXPECT_EQ(head.substr(head.size() - 4), "\r\n\r\n") << head;
}

TEST(Http, MalformedRequestsAreAnsweredAtOnce) {
  Served s;
  auto t = Clock::now();
  const std::string neg = talk(s.port, "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n");
  EXPECT_EQ(status_of(neg), 400) << neg;
  EXPECT_LT(ms_since(t), 1000) << "cpp-httplib waited 5 s, then said 413";
  EXPECT_EQ(status_of(talk(s.port, "GARBAGE\r\n\r\n")), 400);
  EXPECT_EQ(status_of(talk(s.port, "GET / HTTP/1.1\r\nNo colon here\r\n\r\n")), 400);
  // Chunk extensions and trailers are valid HTTP/1.1 (cpp-httplib answered 400).
  const std::string chunked =
      talk(s.port,
           "POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
           "5;name=value\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: 1\r\n\r\n");
  EXPECT_EQ(status_of(chunked), 200) << chunked;
  EXPECT_NE(chunked.find("hello world"), std::string::npos) << chunked;
}

TEST(Http, LimitsOnHeadersAndBodies) {
  http::Config c;
  c.max_body_bytes = 1000;
  c.max_header_bytes = 2048;
  c.max_headers = 20;
  Served s(c);
  std::string many = "GET /health HTTP/1.1\r\nHost: x\r\n";
  for (int i = 0; i < 30; ++i) many += "X-H" + std::to_string(i) + ": 1\r\n";
  EXPECT_EQ(status_of(talk(s.port, many + "\r\n")), 431);
  EXPECT_EQ(status_of(talk(s.port, "GET /health HTTP/1.1\r\nX-Big: " + std::string(4096, 'a') + "\r\n\r\n")),
            431);
  // A body over the limit, announced or chunked, is a 413 (and the client sees it, not a reset).
  EXPECT_EQ(
      status_of(talk(s.port, "POST /echo HTTP/1.1\r\nContent-Length: 5000\r\n\r\n" + std::string(5000, 'a'))),
      413);
  std::string chunks = "POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n";
  for (int i = 0; i < 20; ++i) chunks += "64\r\n" + std::string(100, 'b') + "\r\n";
  EXPECT_EQ(status_of(talk(s.port, chunks + "0\r\n\r\n")), 413);
  // Expect: 100-continue gets its interim answer, then the response.
  const std::string cont =
      talk(s.port, "POST /echo HTTP/1.1\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\nhi", 1000ms);
  EXPECT_EQ(cont.rfind("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK", 0), 0u) << cont;
}

// Issue 26 defect 3: 80 connections sending a header byte a second made every /health time out. Now slow
// connections cost no thread, and /health is answered while 200 of them trickle and every worker is busy.
TEST(Http, SlowClientsAndBusyWorkersDoNotStarveHealth) {
  http::Config c;
  c.workers = 4;
  c.header_timeout = 2000ms;
  Served s(c);
  std::vector<std::future<std::pair<int, std::string>>> busy;
  for (int i = 0; i < 8; ++i)
    busy.push_back(std::async(std::launch::async, [&s] { return raw_get(s.port, "/block"); }));
  std::vector<int> slow;
  for (int i = 0; i < 200; ++i) {
    const int fd = connect_loopback(s.port);
    ASSERT_GE(fd, 0);
    ::send(fd, "G", 1, MSG_NOSIGNAL);
    slow.push_back(fd);
  }
  std::vector<double> ms;
  const auto until = Clock::now() + 1500ms;
  while (Clock::now() < until) {
    for (int fd : slow) ::send(fd, "E", 1, MSG_NOSIGNAL | MSG_DONTWAIT);  // a byte each, never a whole head
    const auto t = Clock::now();
    EXPECT_EQ(raw_get(s.port, "/health").first, 200);
    ms.push_back(ms_since(t));
    std::this_thread::sleep_for(20ms);
  }
  std::sort(ms.begin(), ms.end());
  // (the bench holds it to 100 ms at full scale; here, beside other tests and sanitizers, to what starving is
  // not)
  EXPECT_LT(ms[ms.size() * 99 / 100], 500.0) << "health p99 under load; it was a 10 s timeout";
  EXPECT_EQ(s.blocked, 4) << "four workers busy, four requests queued";
  // The trickling connections end at the header timeout: answered 408, then closed.
  std::this_thread::sleep_for(1000ms);
  char buf[256];
  const ssize_t n = ::recv(slow[0], buf, sizeof buf, MSG_DONTWAIT);
  ASSERT_GT(n, 0);
  EXPECT_EQ(status_of(std::string(buf, size_t(n))), 408);
  for (int fd : slow) ::close(fd);
  s.release = true;
  for (auto& f : busy) EXPECT_EQ(f.get().second, "released");
}

TEST(Http, ConnectionCapsPerAddress) {
  http::Config c;
  c.max_connections_per_address = 3;
  Served s(c);
  std::vector<int> held;
  for (int i = 0; i < 3; ++i) held.push_back(connect_loopback(s.port));
  std::this_thread::sleep_for(100ms);
  const std::string refused = talk(s.port, "GET /health HTTP/1.1\r\n\r\n", 1000ms);
  EXPECT_EQ(status_of(refused), 503) << refused;
  EXPECT_NE(refused.find("too many connections from 127.0.0.1"), std::string::npos) << refused;
  ::close(held[0]);
  std::this_thread::sleep_for(100ms);
  EXPECT_EQ(status_of(talk(s.port, "GET /health HTTP/1.1\r\nConnection: close\r\n\r\n")), 200);
  for (size_t i = 1; i < held.size(); ++i) ::close(held[i]);
}

// A route learns that its client left without writing anything (issue 26 defect 5).
TEST(Http, ClientGoneIsSeenWhileARouteRuns) {
  Served s;
  const int fd = connect_loopback(s.port);
  const std::string req = "GET /block HTTP/1.1\r\nHost: x\r\n\r\n";
  ::send(fd, req.data(), req.size(), MSG_NOSIGNAL);
  for (int i = 0; i < 200 && s.blocked == 0; ++i) std::this_thread::sleep_for(5ms);
  ASSERT_EQ(s.blocked, 1);
  const auto t = Clock::now();
  ::close(fd);
  while (s.blocked > 0 && ms_since(t) < 2000) std::this_thread::sleep_for(5ms);
  EXPECT_EQ(s.gone_seen, 1);
  EXPECT_LT(ms_since(t), 1000);
  for (int i = 0; i < 100 && s.server->running() > 0; ++i) std::this_thread::sleep_for(5ms);
  EXPECT_EQ(s.server->running(), 0u);
}

// A streamed response to a client that does not read: the route's writes block (bounded memory), then fail
// after the write timeout, and the route ends (in rill: its request is cancelled and its blocks freed).
TEST(Http, ReadersThatDoNotDrainAreDropped) {
  http::Config c;
  c.write_timeout = 500ms;
  Served s(c);
  const int fd = connect_loopback(s.port);
  int small = 4096;
  setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof small);
  const std::string req = "GET /firehose HTTP/1.1\r\nHost: x\r\n\r\n";
  ::send(fd, req.data(), req.size(), MSG_NOSIGNAL);
  const auto t = Clock::now();
  while (s.finally_calls == 0 && ms_since(t) < 10000) std::this_thread::sleep_for(10ms);
  EXPECT_EQ(s.sink_failed, 1);
  EXPECT_EQ(s.finally_calls, 1);
  EXPECT_LT(ms_since(t), 5000);
  ::close(fd);
}

TEST(Http, KeepAliveAndStreaming) {
  Served s;
  httplib::Client c = s.client();
  c.set_keep_alive(true);
  for (int i = 0; i < 5; ++i)
    EXPECT_EQ(c.Post("/echo", std::to_string(i), "text/plain")->body, std::to_string(i));
  auto r = c.Get("/firehose");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->body.size(), size_t(64) << 20);
  EXPECT_EQ(c.Get("/health")->body, "ok");
  EXPECT_EQ(s.finally_calls, 1);
}

// Issue 26 defect 7: shutdown had no deadline and queued clients got no answer. Now: queued requests are
// answered 503, running ones may end until the deadline, then the application is told to end them.
TEST(Http, ShutdownAnswersEveryClientWithinItsDeadline) {
  http::Config c;
  c.workers = 2;
  auto s = std::make_unique<Served>(c);
  std::vector<std::future<std::pair<int, std::string>>> calls;
  for (int i = 0; i < 6; ++i)
    calls.push_back(std::async(std::launch::async, [&s] { return raw_get(s->port, "/block"); }));
  for (int i = 0; i < 400 && s->blocked < 2; ++i) std::this_thread::sleep_for(5ms);
  std::this_thread::sleep_for(100ms);  // the other four are queued
  ASSERT_EQ(s->blocked, 2);
  std::atomic<bool> told{false};
  const auto t = Clock::now();
  const size_t left = s->server->shutdown(300ms, [&] {
    told = true;
    s->release = true;  // "cancel what still runs"
  });
  EXPECT_EQ(left, 2u);
  EXPECT_TRUE(told);
  EXPECT_LT(ms_since(t), 2000);
  int ok = 0, refused = 0;
  for (auto& f : calls) {
    const int status = f.get().first;
    EXPECT_GT(status, 0) << "every client gets an answer";
    if (status == 200) ++ok;
    if (status == 503) ++refused;
  }
  EXPECT_EQ(ok, 2);
  EXPECT_EQ(refused, 4);
  s->thread.join();
  s->thread = std::thread([] {});
}

}  // namespace
}  // namespace rill::test
