// http: rill's HTTP/1.1 server, event-driven (Boost.Asio + Beast). Connections are read and written by a few
// I/O threads on epoll, so a connection that sends slowly (or not at all) costs a socket and a timer, never a
// thread: headers must arrive within `header_timeout`, a body within `body_timeout`, and a reader that does
// not drain its socket for `write_timeout` is dropped. A request, once read whole, goes to its route: `fast`
// routes (health, metrics) are answered on the I/O thread, so they answer however busy generation is; the
// others run on a pool of worker threads, one request each, and may block (waiting on the engine) and stream
// their answer through a Sink. While a request runs its socket is watched, so `client_gone()` tells within
// milliseconds that its client has left, without writing anything.
//
// Thread rules: a route runs on one thread (I/O or worker) and owns its Request and Response; a Sink is
// written by that thread only. Server's methods may be called from any thread; serve() blocks until
// shutdown() ends.
#pragma once

#include <chrono>
#include <cstddef>
#include <functional>
#include <memory>
#include <regex>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace rill::http {

struct Request {
  std::string method;  // as sent: "GET", "POST", ...
  std::string path;    // the target without its query
  std::string query;   // after '?', or empty
  std::vector<std::pair<std::string, std::string>> headers;
  std::string body;
  std::vector<std::string> params;  // the route pattern's captured groups
  std::string remote;               // the client's address
  std::function<bool()> client_gone = [] { return false; };

  // The first header of that name (case-insensitive), or "".
  std::string header(std::string_view name) const;
};

// Where a streamed response's bytes go (sent as HTTP chunks). write() is false once the client is gone or has
// not read for the write timeout; it blocks while much is queued and unread (back-pressure on slow readers).
class Sink {
 public:
  virtual ~Sink() = default;
  virtual bool write(std::string_view bytes) = 0;
  virtual bool alive() const = 0;
};

struct Response {
  int status = 200;
  std::string content_type = "application/json";
  std::string body;
  std::vector<std::pair<std::string, std::string>> headers;
  // A streamed response: called once, after the headers went out (chunked); it writes through the Sink until
  // it is done and returns (true: done; false: it gave up, e.g. the client left). `finally` runs after it,
  // always.
  std::function<bool(Sink&)> stream;
  std::function<void()> finally;

  void set_content(std::string b, std::string type) {
    body = std::move(b);
    content_type = std::move(type);
  }
  void set_header(std::string name, std::string value) {
    headers.emplace_back(std::move(name), std::move(value));
  }
};

using Handler = std::function<void(const Request&, Response&)>;

struct Config {
  std::string host = "127.0.0.1";
  int port = 8000;  // 0: any free port
  size_t max_body_bytes = 16u << 20;
  size_t max_header_bytes = 16u << 10;
  size_t max_headers = 100;
  std::chrono::milliseconds header_timeout{10000};  // the whole head of a request, from its first wait
  std::chrono::milliseconds body_timeout{60000};
  std::chrono::milliseconds write_timeout{30000};  // a reader that takes nothing for this long is dropped
  size_t max_connections = 16384;
  size_t max_connections_per_address = 0;  // 0: no limit
  int io_threads = 2;
  int workers = 80;  // requests running at once on the worker pool; the rest wait in its queue
};

// What the server asks of the application: the answer to a request no route takes or that cannot be read
// (`error(status, message, res)` fills `res`), whether a request may pass (`authorize`, for non-public
// routes), and each response's status (`on_response`, for metrics).
struct Hooks {
  std::function<void(int status, const std::string& message, Response& res)> error;
  std::function<bool(const Request&)> authorize = [](const Request&) { return true; };
  std::function<void(int status)> on_response = [](int) {};
};

class Server {
 public:
  Server(Config config, Hooks hooks);
  ~Server();
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  // Routes, matched in the order added. `pattern` is a regex over the whole path; its groups become
  // Request::params. A `fast` route runs on the I/O thread: it must not block. A `public_route` skips
  // authorize.
  void route(const std::string& method, const std::string& pattern, Handler h, bool fast = false,
             bool public_route = false);

  // Binds (throws rill::Error naming host:port when it cannot); returns the port.
  int bind();
  // Serves until shutdown() has ended.
  void serve();
  // Stops accepting, answers queued requests and new requests on open connections with 503, closes idle
  // connections, and waits up to `deadline` for running requests to end; then calls `at_deadline` (the
  // application aborts what still runs: its routes end their responses), waits up to `grace` more for them and
  // for the last bytes to leave, and ends serve(): it returns within deadline + grace. Returns how many requests were still running at the deadline.
  size_t shutdown(std::chrono::milliseconds deadline, const std::function<void()>& at_deadline,
                  std::chrono::milliseconds grace = std::chrono::milliseconds(5000));
  // Connections open and requests running now (for tests and metrics).
  size_t connections() const;
  size_t running() const;

  struct Impl;  // (defined in http.cpp, with its connections)

 private:
  std::shared_ptr<Impl> impl_;
};

}  // namespace rill::http
