// Fuzzes rill's HTTP server (server/http.cpp) with raw bytes from a client: one connection per input, the
// input sent and the sending side closed, the answer read until the server closes. The server runs for the
// whole fuzzing session; a crash, a sanitizer report or a connection the server never ends (a hang) is a
// finding.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <thread>

#include "server/http.h"

using namespace std::chrono_literals;

namespace {

int port = 0;

void start_server() {
  rill::http::Config c;
  c.port = 0;
  c.max_body_bytes = 1 << 16;
  c.max_header_bytes = 4096;
  c.max_headers = 32;
  c.header_timeout = 500ms;
  c.body_timeout = 500ms;
  c.write_timeout = 500ms;
  c.io_threads = 1;
  c.workers = 2;
  auto* server = new rill::http::Server(c, rill::http::Hooks{});  // lives for the whole run
  using rill::http::Request, rill::http::Response, rill::http::Sink;
  server->route(
      "GET", "/health", [](const Request&, Response& r) { r.set_content("ok", "text/plain"); }, true, true);
  server->route("POST", "/echo",
                [](const Request& q, Response& r) { r.set_content(q.body, "application/octet-stream"); });
  server->route("GET", "/items/([0-9]+)",
                [](const Request& q, Response& r) { r.set_content(q.params[0], "text/plain"); });
  server->route("GET", "/stream", [](const Request& q, Response& r) {
    r.content_type = "text/event-stream";
    r.stream = [](Sink& s) {
      return s.write("data: 1\n\n") && s.write("data: 2\n\n") && s.write("data: [DONE]\n\n");
    };
  });
  port = server->bind();
  std::thread([server] { server->serve(); }).detach();
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  start_server();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const int s = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(uint16_t(port));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(s, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) __builtin_trap();  // the server is gone
  ::send(s, data, size, MSG_NOSIGNAL);
  ::shutdown(s, SHUT_WR);
  timeval tv{3, 0};
  setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  char buf[8192];
  for (;;) {
    const ssize_t n = ::recv(s, buf, sizeof buf, 0);
    if (n == 0) break;
    if (n < 0) {
      if (errno == EAGAIN || errno == EWOULDBLOCK)
        __builtin_trap();  // the server left the connection hanging
      break;
    }
  }
  ::close(s);
  return 0;
}
