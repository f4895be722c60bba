#include "server/http.h"

#include <sys/resource.h>
#include <sys/socket.h>

#include <atomic>
#include <boost/asio.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <cerrno>
#include <condition_variable>
#include <cstdio>
#include <deque>
#include <mutex>
#include <optional>
#include <thread>
#include <unordered_map>

#include "core/error.h"

namespace rill::http {

namespace net = boost::asio;
namespace beast = boost::beast;
namespace bh = boost::beast::http;
using tcp = net::ip::tcp;
using Clock = std::chrono::steady_clock;

namespace {

std::string_view view(boost::beast::string_view s) {
  return {s.data(), s.size()};
}

bool iequals(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i)
    if (std::tolower(static_cast<unsigned char>(a[i])) != std::tolower(static_cast<unsigned char>(b[i])))
      return false;
  return true;
}

std::string status_line(int status) {
  const auto reason = bh::obsolete_reason(bh::int_to_status(unsigned(status)));
  return "HTTP/1.1 " + std::to_string(status) + " " + std::string(reason.empty() ? "Unknown" : reason) +
         "\r\n";
}

// The head of a response: status, content type, length (or chunked), connection, the route's headers.
std::string response_head(const Response& res, std::optional<size_t> length, bool chunked, bool keep_alive) {
  std::string h = status_line(res.status);
  h += "Content-Type: " + res.content_type + "\r\n";
  if (length) h += "Content-Length: " + std::to_string(*length) + "\r\n";
  if (chunked) h += "Transfer-Encoding: chunked\r\n";
  if (!keep_alive) h += "Connection: close\r\n";
  for (const auto& [k, v] : res.headers) h += k + ": " + v + "\r\n";
  h += "\r\n";
  return h;
}

// A fixed pool of threads running requests in arrival order. A task is called with true to run, or with false
// when the pool stops taking work (shutdown): the task then answers its client itself.
class WorkerPool {
 public:
  using Task = std::function<void(bool run)>;
  explicit WorkerPool(int n) {
    for (int i = 0; i < n; ++i) threads_.emplace_back([this] { work(); });
  }
  ~WorkerPool() { stop(); }

  void submit(Task t) {
    {
      std::lock_guard<std::mutex> lk(m_);
      if (accepting_) {
        queue_.push_back(std::move(t));
        cv_.notify_one();
        return;
      }
    }
    t(false);
  }
  // Refuses what is queued and anything submitted from now on.
  void refuse_queued() {
    std::deque<Task> refused;
    {
      std::lock_guard<std::mutex> lk(m_);
      accepting_ = false;
      refused.swap(queue_);
    }
    for (auto& t : refused) t(false);
  }
  void stop() {
    refuse_queued();
    {
      std::lock_guard<std::mutex> lk(m_);
      stopping_ = true;
    }
    cv_.notify_all();
    for (auto& t : threads_)
      if (t.joinable()) t.join();
  }

 private:
  void work() {
    for (;;) {
      Task t;
      {
        std::unique_lock<std::mutex> lk(m_);
        cv_.wait(lk, [&] { return stopping_ || !queue_.empty(); });
        if (queue_.empty()) return;
        t = std::move(queue_.front());
        queue_.pop_front();
      }
      t(true);
    }
  }
  std::mutex m_;
  std::condition_variable cv_;
  std::deque<Task> queue_;
  bool accepting_ = true, stopping_ = false;
  std::vector<std::thread> threads_;
};

struct Route {
  std::string method;
  std::regex pattern;
  Handler handler;
  bool fast = false, public_route = false;
};

constexpr size_t kMaxUnsent = 1u << 20;  // bytes a streamed response may have queued before write() waits
constexpr size_t kMaxDrainAfterError = 1u << 20;

}  // namespace

std::string Request::header(std::string_view name) const {
  for (const auto& [k, v] : headers)
    if (iequals(k, name)) return v;
  return "";
}

class Connection;

struct Server::Impl {
  Config config;
  Hooks hooks;
  std::vector<Route> routes;

  // Declared before the io_context: handlers it still holds at destruction end connections, which unregister
  // here.
  std::mutex conns_m;
  std::unordered_map<Connection*, std::weak_ptr<Connection>> conns;
  std::unordered_map<std::string, size_t> per_address;
  std::atomic<size_t> running{0};
  std::atomic<bool> draining{false};
  std::atomic<bool> stopped{false};

  net::io_context ioc;
  tcp::acceptor acceptor{ioc};
  std::optional<net::executor_work_guard<net::io_context::executor_type>> work;
  WorkerPool workers;

  Impl(Config c, Hooks h) : config(std::move(c)), hooks(std::move(h)), workers(std::max(1, config.workers)) {
    if (!hooks.error)
      hooks.error = [](int status, const std::string& message, Response& res) {
        res.status = status;
        res.set_content(message + "\n", "text/plain");
      };
  }

  void accept();
  void answer_error(int status, const std::string& message, Response& res) const {
    hooks.error(status, message, res);
  }
  std::vector<std::shared_ptr<Connection>> live();
};

// One client connection: reads a request, hands it to its route, writes the response, and again while the
// client keeps the connection. Every socket operation runs on the connection's strand; worker threads reach
// it only through send()/finish() and the closed flag.
class Connection : public std::enable_shared_from_this<Connection> {
 public:
  Connection(tcp::socket socket, Server::Impl& srv, std::string remote)
      : stream_(std::move(socket)),
        read_timer_(stream_.get_executor()),
        srv_(srv),
        remote_(std::move(remote)) {}
  ~Connection() {
    std::lock_guard<std::mutex> lk(srv_.conns_m);
    srv_.conns.erase(this);
    auto it = srv_.per_address.find(remote_);
    if (it != srv_.per_address.end() && --it->second == 0) srv_.per_address.erase(it);
  }

  void start() {
    net::dispatch(stream_.get_executor(), [self = shared_from_this()] { self->read_request(); });
  }

  // From the shutdown: a connection waiting for a request is closed; one in a request is left to end it.
  void close_if_idle() {
    net::post(stream_.get_executor(), [self = shared_from_this()] {
      if (!self->in_request_) self->close();
    });
  }
  // From the teardown, with the I/O threads stopped: workers still writing stop at their next write.
  void abandon() {
    {
      std::lock_guard<std::mutex> lk(m_);
      closed_ = true;
    }
    cv_.notify_all();
  }

  // Queues bytes of the response (any thread); waits while much is unsent; false once the client is gone.
  bool send(std::string_view bytes, bool wait = true) {
    std::unique_lock<std::mutex> lk(m_);
    if (closed_) return false;
    pending_.append(bytes);
    if (!writing_) {
      writing_ = true;
      net::post(stream_.get_executor(), [self = shared_from_this()] { self->write_pending(); });
    }
    // (Not on the connection's own strand, as a fast route's or an error's answer is sent: it would wait for
    // itself. Those answers are small.)
    if (wait) cv_.wait(lk, [&] { return closed_ || pending_.size() < kMaxUnsent; });
    return !closed_;
  }
  // The response is all queued: once written, the connection reads the next request (or closes).
  void finish(bool keep_alive) {
    std::lock_guard<std::mutex> lk(m_);
    if (!keep_alive) keep_alive_ = false;
    response_done_ = true;
    if (!writing_) net::post(stream_.get_executor(), [self = shared_from_this()] { self->after_write(); });
  }
  bool gone() const {
    std::lock_guard<std::mutex> lk(m_);
    return closed_;
  }

  // Writes a whole response and finishes it: from a worker (`wait`: while much is unsent), or on the strand.
  void respond(const Response& res, bool head_only = false, bool wait = true) {
    srv_.hooks.on_response(res.status);
    const bool keep = keep_alive_now();
    send(response_head(res, res.body.size(), false, keep) + (head_only ? std::string() : res.body), wait);
    finish(keep);
  }
  void respond_error(int status, const std::string& message, bool close_after = false, bool wait = true) {
    Response res;
    srv_.answer_error(status, message, res);
    if (close_after) set_keep_alive(false);
    respond(res, false, wait);
  }
  // The same on the connection's strand (an error found while reading, a fast route).
  void answer_here(int status, const std::string& message, bool close_after = false) {
    respond_error(status, message, close_after, false);
  }

 private:
  bool keep_alive_now() {
    std::lock_guard<std::mutex> lk(m_);
    return keep_alive_ && !srv_.draining;
  }
  void set_keep_alive(bool k) {
    std::lock_guard<std::mutex> lk(m_);
    keep_alive_ = k;
  }

  void read_request() {
    in_request_ = false;
    if (srv_.draining || gone()) return close();
    parser_.emplace();
    parser_->header_limit(uint32_t(srv_.config.max_header_bytes));
    parser_->body_limit(uint64_t(srv_.config.max_body_bytes));
    read_deadline(srv_.config.header_timeout);
    bh::async_read_header(stream_, buffer_, *parser_,
                          [self = shared_from_this()](beast::error_code ec, size_t) { self->on_header(ec); });
  }

  // A read that outlives its deadline is cancelled (not the socket closed, as tcp_stream's own timeout does),
  // so that a client that started a request can still be told 408.
  void read_deadline(std::chrono::milliseconds d) {
    timed_out_ = false;
    read_timer_.expires_after(d);
    read_timer_.async_wait([self = shared_from_this(), gen = ++read_gen_](beast::error_code ec) {
      if (ec || gen != self->read_gen_) return;
      self->timed_out_ = true;
      beast::error_code ignored;
      self->stream_.socket().cancel(ignored);
    });
  }
  void read_done() {
    ++read_gen_;
    read_timer_.cancel();
  }

  // A failed read: the client left or timed out (close), or sent what is not HTTP or too much (say why).
  void read_failed(beast::error_code ec, const char* what) {
    read_done();
    if (timed_out_ && stream_.socket().is_open()) ec = beast::error::timeout;
    if (ec == bh::error::end_of_stream || ec == net::error::eof || ec == net::error::operation_aborted ||
        ec == net::error::connection_reset || ec == net::error::broken_pipe || !stream_.socket().is_open())
      return close();
    in_request_ = true;
    if (ec == beast::error::timeout) {
      // Nothing started: an idle keep-alive connection ends quietly; a request that stalled gets a 408.
      if (buffer_.size() == 0 && (!parser_ || !parser_->got_some())) return close();
      return answer_here(408, std::string("the request's ") + what + " did not arrive in time", true);
    }
    if (ec == bh::error::body_limit)
      return answer_here(
          413, "the request body is larger than " + std::to_string(srv_.config.max_body_bytes) + " bytes",
          true);
    if (ec == bh::error::header_limit)
      return answer_here(
          431,
          "the request's headers are larger than " + std::to_string(srv_.config.max_header_bytes) + " bytes",
          true);
    answer_here(400, "malformed HTTP request (" + ec.message() + ")", true);
  }

  void on_header(beast::error_code ec) {
    if (ec) return read_failed(ec, "headers");
    read_done();
    in_request_ = true;
    const auto& h = parser_->get();
    if (size_t(std::distance(h.begin(), h.end())) > srv_.config.max_headers)
      return answer_here(
          431, "the request has more than " + std::to_string(srv_.config.max_headers) + " headers", true);
    set_keep_alive(h.keep_alive());
    version_ = h.version();
    read_deadline(srv_.config.body_timeout);
    if (iequals(view(h[bh::field::expect]), "100-continue") && !parser_->is_done()) {
      static const std::string kContinue = "HTTP/1.1 100 Continue\r\n\r\n";
      net::async_write(stream_, net::buffer(kContinue),
                       [self = shared_from_this()](beast::error_code e, size_t) {
                         if (e) return self->close();
                         self->read_body();
                       });
      return;
    }
    read_body();
  }

  void read_body() {
    bh::async_read(stream_, buffer_, *parser_, [self = shared_from_this()](beast::error_code ec, size_t) {
      if (ec) return self->read_failed(ec, "body");
      self->read_done();
      self->dispatch();
    });
  }

  void dispatch() {
    bh::request<bh::string_body> msg = parser_->release();
    parser_.reset();
    Request req;
    req.method = std::string(msg.method_string());
    const std::string_view target = view(msg.target());
    const size_t q = target.find('?');
    req.path = std::string(target.substr(0, q));
    if (q != std::string_view::npos) req.query = std::string(target.substr(q + 1));
    for (const auto& f : msg) req.headers.emplace_back(std::string(f.name_string()), std::string(f.value()));
    req.body = std::move(msg.body());
    req.remote = remote_;
    if (srv_.draining) return answer_here(503, "the server is shutting down", true);

    const bool head = req.method == "HEAD";
    const Route* route = nullptr;
    std::string allowed;
    std::smatch m;
    for (const auto& r : srv_.routes) {
      if (!std::regex_match(req.path, m, r.pattern)) continue;
      if (r.method == req.method || (head && r.method == "GET")) {
        route = &r;
        for (size_t i = 1; i < m.size(); ++i) req.params.push_back(m[i].str());
        break;
      }
      if (allowed.find(r.method) == std::string::npos) allowed += (allowed.empty() ? "" : ", ") + r.method;
    }
    if (!route) {
      if (allowed.empty()) return answer_here(404, "no route " + req.method + " " + req.path);
      Response res;
      srv_.answer_error(
          405, "method " + req.method + " is not allowed on " + req.path + " (allowed: " + allowed + ")",
          res);
      res.set_header("Allow", allowed);
      return respond(res, false, false);
    }
    if (!route->public_route && !srv_.hooks.authorize(req)) {
      Response res;
      srv_.answer_error(401, "missing or wrong API key (send 'Authorization: Bearer KEY')", res);
      return respond(res, false, false);
    }
    if (route->fast) {
      Response res;
      run(*route, req, res);
      return respond(res, head, false);
    }
    // A route that may block: on a worker, with the socket watched for the client leaving meanwhile.
    ++srv_.running;
    counted_ = true;
    watch();
    std::weak_ptr<Connection> weak = weak_from_this();
    req.client_gone = [weak] {
      auto c = weak.lock();
      return !c || c->gone();
    };
    srv_.workers.submit([self = shared_from_this(), route, req = std::move(req), head](bool go) mutable {
      if (!go) return self->respond_error(503, "the server is shutting down", true);
      Response res;
      self->run(*route, req, res);
      if (!res.stream) return self->respond(res, head);
      self->stream(res);
    });
  }

  void run(const Route& route, const Request& req, Response& res) {
    try {
      route.handler(req, res);
    } catch (
        const std::exception& e) {  // routes answer their own errors; this keeps the server up if one did not
      res = Response();
      srv_.answer_error(500, e.what(), res);
    }
  }

  // A streamed response, on the worker: chunks (or, to an HTTP/1.0 client, the bytes until the connection
  // closes).
  void stream(Response& res) {
    class ChunkSink : public Sink {
     public:
      ChunkSink(Connection& c, bool chunked) : c_(c), chunked_(chunked) {}
      bool write(std::string_view bytes) override {
        if (bytes.empty()) return alive();
        if (!chunked_) return c_.send(bytes);
        char size[24];
        std::snprintf(size, sizeof size, "%zx\r\n", bytes.size());
        std::string chunk = size;
        chunk.append(bytes);
        chunk += "\r\n";
        return c_.send(chunk);
      }
      bool alive() const override { return !c_.gone(); }

     private:
      Connection& c_;
      bool chunked_;
    };
    srv_.hooks.on_response(res.status);
    const bool chunked = version_ >= 11;
    const bool keep = chunked && keep_alive_now();
    send(response_head(res, std::nullopt, chunked, keep));
    ChunkSink sink(*this, chunked);
    bool ok = false;
    try {
      ok = res.stream(sink);
    } catch (const std::exception& e) {
      std::fprintf(stderr, "rill: response stream failed: %s\n", e.what());
    }
    if (res.finally) res.finally();
    if (ok && chunked) send("0\r\n\r\n");
    finish(ok && keep);  // a stream that gave up ends its connection: the client sees the body cut short
  }

  // Watches the socket while a route runs: the client's end of the connection closing (EOF or error) marks
  // the connection gone. Bytes that arrive (a pipelined request) end the watch and wait for the next read.
  void watch() {
    watching_ = true;
    const unsigned gen = ++watch_gen_;
    stream_.socket().async_wait(
        tcp::socket::wait_read, [self = shared_from_this(), gen](beast::error_code ec) {
          if (gen != self->watch_gen_ || ec == net::error::operation_aborted) return;
          self->watching_ = false;
          if (ec || !self->stream_.socket().is_open()) return self->close();
          char c;
          const ssize_t n = ::recv(self->stream_.socket().native_handle(), &c, 1, MSG_PEEK | MSG_DONTWAIT);
          if (n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR))
            return self->close();
          if (n < 0) self->watch();
        });
  }

  void write_pending() {
    {
      std::lock_guard<std::mutex> lk(m_);
      if (closed_) {
        writing_ = false;
        pending_.clear();
      } else {
        inflight_.swap(pending_);
        pending_.clear();
      }
    }
    cv_.notify_all();
    if (inflight_.empty()) {
      {
        std::lock_guard<std::mutex> lk(m_);
        writing_ = false;
      }
      return after_write();
    }
    stream_.expires_after(srv_.config.write_timeout);
    net::async_write(stream_, net::buffer(inflight_),
                     [self = shared_from_this()](beast::error_code ec, size_t) {
                       self->inflight_.clear();
                       if (ec) {
                         self->close();
                         {
                           std::lock_guard<std::mutex> lk(self->m_);
                           self->writing_ = false;
                           self->pending_.clear();
                         }
                         return self->after_write();
                       }
                       bool more = false;
                       {
                         std::lock_guard<std::mutex> lk(self->m_);
                         more = !self->pending_.empty();
                         if (!more) self->writing_ = false;
                       }
                       if (more) return self->write_pending();
                       self->stream_.expires_never();
                       self->after_write();
                     });
  }

  // Runs when a write ended: once the response is all written, the next request (or the end of the
  // connection).
  void after_write() {
    bool keep = false;
    {
      std::lock_guard<std::mutex> lk(m_);
      if (!response_done_ || writing_) return;
      response_done_ = false;
      keep = keep_alive_ && !closed_;
    }
    if (counted_) {
      counted_ = false;
      --srv_.running;
    }
    if (watching_) {
      ++watch_gen_;  // the pending wait is cancelled and ignored
      watching_ = false;
      beast::error_code ignored;
      stream_.socket().cancel(ignored);
    }
    if (keep && !srv_.draining) return read_request();
    linger_close();
  }

  // Ends the connection after a response: our side shuts, and what the client still sends (the rest of a body
  // we refused) is read and dropped for a moment, so that it sees the response rather than a reset.
  void linger_close() {
    beast::error_code ignored;
    stream_.socket().shutdown(tcp::socket::shutdown_send, ignored);
    stream_.expires_after(std::chrono::seconds(2));
    drain();
  }
  void drain() {
    drain_buf_.resize(16384);
    stream_.async_read_some(net::buffer(drain_buf_),
                            [self = shared_from_this()](beast::error_code ec, size_t n) {
                              self->drained_ += n;
                              if (ec || self->drained_ > kMaxDrainAfterError) return self->close();
                              self->drain();
                            });
  }

  void close() {
    {
      std::lock_guard<std::mutex> lk(m_);
      closed_ = true;
    }
    cv_.notify_all();
    beast::error_code ignored;
    stream_.socket().shutdown(tcp::socket::shutdown_both, ignored);
    stream_.socket().close(ignored);
  }

  beast::tcp_stream stream_;
  net::steady_timer read_timer_;
  beast::flat_buffer buffer_;
  std::optional<bh::request_parser<bh::string_body>> parser_;
  Server::Impl& srv_;
  std::string remote_;
  std::vector<char> drain_buf_;
  size_t drained_ = 0;
  // Strand-only state.
  bool in_request_ = false, counted_ = false, watching_ = false;
  unsigned watch_gen_ = 0, read_gen_ = 0;
  bool timed_out_ = false;
  unsigned version_ = 11;
  std::string inflight_;
  // Shared with workers, under m_.
  mutable std::mutex m_;
  std::condition_variable cv_;
  std::string pending_;
  bool writing_ = false, response_done_ = false, closed_ = false, keep_alive_ = true;
};

std::vector<std::shared_ptr<Connection>> Server::Impl::live() {
  std::vector<std::shared_ptr<Connection>> out;
  std::lock_guard<std::mutex> lk(conns_m);
  for (auto& [p, w] : conns)
    if (auto c = w.lock()) out.push_back(std::move(c));
  return out;
}

void Server::Impl::accept() {
  acceptor.async_accept(net::make_strand(ioc), [this](beast::error_code ec, tcp::socket socket) {
    if (ec) {
      if (ec == net::error::operation_aborted || !acceptor.is_open()) return;
      // Out of descriptors (or another passing error): try again shortly rather than spin.
      auto timer = std::make_shared<net::steady_timer>(ioc, std::chrono::milliseconds(50));
      timer->async_wait([this, timer](beast::error_code) {
        if (acceptor.is_open()) accept();
      });
      return;
    }
    beast::error_code e;
    const auto ep = socket.remote_endpoint(e);
    const std::string remote = e ? std::string("?") : ep.address().to_string();
    std::string refusal;
    {
      std::lock_guard<std::mutex> lk(conns_m);
      if (conns.size() >= config.max_connections)
        refusal = "the server has too many connections";
      else if (config.max_connections_per_address > 0 &&
               per_address[remote] >= config.max_connections_per_address)
        refusal = "too many connections from " + remote;
      else
        ++per_address[remote];  // (given back by ~Connection)
    }
    if (!refusal.empty()) {
      // Said without waiting (a fresh socket takes a small write) and closed.
      Response res;
      answer_error(503, refusal, res);
      res.set_header("Retry-After", "1");
      hooks.on_response(503);
      const std::string bytes = response_head(res, res.body.size(), false, false) + res.body;
      (void)::send(socket.native_handle(), bytes.data(), bytes.size(), MSG_DONTWAIT | MSG_NOSIGNAL);
      socket.shutdown(tcp::socket::shutdown_both, e);
      socket.close(e);
      return accept();
    }
    auto c = std::make_shared<Connection>(std::move(socket), *this, remote);
    {
      std::lock_guard<std::mutex> lk(conns_m);
      conns[c.get()] = c;
    }
    c->start();
    accept();
  });
}

Server::Server(Config config, Hooks hooks)
    : impl_(std::make_shared<Impl>(std::move(config), std::move(hooks))) {}

Server::~Server() {
  Impl& i = *impl_;
  i.draining = true;
  i.stopped = true;
  i.work.reset();
  i.ioc.stop();
  for (auto& c : i.live()) c->abandon();
  i.workers.stop();
}

void Server::route(const std::string& method, const std::string& pattern, Handler h, bool fast,
                   bool public_route) {
  impl_->routes.push_back(Route{method, std::regex(pattern), std::move(h), fast, public_route});
}

int Server::bind() {
  Impl& i = *impl_;
  // Each connection is a descriptor: take all the process may have.
  rlimit lim{};
  if (getrlimit(RLIMIT_NOFILE, &lim) == 0 && lim.rlim_cur < lim.rlim_max) {
    lim.rlim_cur = lim.rlim_max;
    setrlimit(RLIMIT_NOFILE, &lim);
  }
  const std::string where =
      i.config.host + ":" + (i.config.port == 0 ? std::string("(any port)") : std::to_string(i.config.port));
  beast::error_code ec;
  const auto addr = net::ip::make_address(i.config.host == "localhost" ? "127.0.0.1" : i.config.host, ec);
  RILL_CHECK(!ec, "cannot listen on " + where + ": '" + i.config.host + "' is not an IP address");
  const tcp::endpoint ep(addr, static_cast<unsigned short>(i.config.port));
  i.acceptor.open(ep.protocol(), ec);
  if (!ec) i.acceptor.set_option(net::socket_base::reuse_address(true), ec);
  if (!ec) i.acceptor.bind(ep, ec);
  if (!ec) i.acceptor.listen(4096, ec);
  RILL_CHECK(!ec, "cannot listen on " + where + " (" + ec.message() + ": in use, or no permission?)");
  return i.acceptor.local_endpoint().port();
}

void Server::serve() {
  Impl& i = *impl_;
  if (i.stopped) return;
  i.work.emplace(i.ioc.get_executor());
  i.accept();
  std::vector<std::thread> io;
  for (int t = 1; t < std::max(1, i.config.io_threads); ++t) io.emplace_back([&i] { i.ioc.run(); });
  i.ioc.run();
  for (auto& t : io) t.join();
}

size_t Server::shutdown(std::chrono::milliseconds deadline, const std::function<void()>& at_deadline,
                        std::chrono::milliseconds grace) {
  Impl& i = *impl_;
  if (i.draining.exchange(true)) return 0;
  net::post(i.acceptor.get_executor(), [&i] {
    beast::error_code ignored;
    i.acceptor.close(ignored);
  });
  i.workers.refuse_queued();
  for (auto& c : i.live()) c->close_if_idle();
  auto wait_until = [&i](Clock::time_point t) {
    while (i.running > 0 && Clock::now() < t) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  };
  const auto at = Clock::now() + deadline, end = at + grace;
  wait_until(at);
  const size_t left = i.running;
  if (left > 0 && at_deadline) at_deadline();
  wait_until(end);
  // Let the last responses leave (within the grace), then end serve().
  while (Clock::now() < end && connections() > 0) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  i.stopped = true;
  i.work.reset();
  i.ioc.stop();
  return left;
}

size_t Server::connections() const {
  std::lock_guard<std::mutex> lk(impl_->conns_m);
  return impl_->conns.size();
}
size_t Server::running() const {
  return impl_->running;
}

}  // namespace rill::http
