// serve_load: drives a running rill (or any OpenAI-compatible) server with Poisson or burst arrivals and
// uniform prompt/output length ranges, and reports throughput, time to first token (TTFT), time per output
// token (TPOT), inter-token latency (ITL) and end-to-end latency percentiles, and goodput under an SLO,
// as JSON; --plot draws a PNG (through gnuplot). Prompts are random token ids, outputs use ignore_eos, so
// lengths are exact.
//   serve_load --url http://127.0.0.1:8000 --num-requests 100 --rate 4 --out result.json --plot result.png
#include <httplib.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cmath>
#include <fstream>
#include <mutex>
#include <nlohmann/json.hpp>
#include <random>
#include <thread>

using json = nlohmann::ordered_json;
using Clock = std::chrono::steady_clock;

namespace {

struct Sample {
  double start = 0, ttft = -1, e2e = 0;
  std::vector<double> itl;  // gaps between streamed chunks
  int prompt_tokens = 0, output_tokens = 0;
  bool ok = false;
  std::string error;
};

double percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const double idx = p / 100.0 * double(v.size() - 1);
  const size_t lo = size_t(std::floor(idx)), hi = size_t(std::ceil(idx));
  return v[lo] + (v[hi] - v[lo]) * (idx - double(lo));
}

json stats(const std::vector<double>& v) {
  double sum = 0;
  for (double x : v) sum += x;
  return {{"mean", v.empty() ? 0 : sum / double(v.size())}, {"p50", percentile(v, 50)}, {"p90", percentile(v, 90)},
          {"p99", percentile(v, 99)}, {"max", v.empty() ? 0 : *std::max_element(v.begin(), v.end())}};
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Load test of an OpenAI-compatible completions server"};
  std::string url = "http://127.0.0.1:8000", api_key, model, arrival = "poisson", out, plot;
  int num = 100, pmin = 32, pmax = 512, omin = 16, omax = 128, vocab = 0, max_concurrency = 0;
  double rate = 4, slo_ttft_ms = 2000, slo_tpot_ms = 200;
  uint64_t seed = 0;
  app.add_option("--url", url, "Server base URL");
  app.add_option("--api-key", api_key, "Bearer token");
  app.add_option("--model", model, "Model name (default: the first of /v1/models)");
  app.add_option("--num-requests", num, "Requests to send")->check(CLI::PositiveNumber);
  app.add_option("--rate", rate, "Mean arrival rate, requests/s (poisson)")->check(CLI::PositiveNumber);
  app.add_option("--arrival", arrival, "poisson, or burst (all at once)")->check(CLI::IsMember({"poisson", "burst"}));
  app.add_option("--prompt-tokens-min", pmin, "Shortest prompt")->check(CLI::PositiveNumber);
  app.add_option("--prompt-tokens-max", pmax, "Longest prompt")->check(CLI::PositiveNumber);
  app.add_option("--output-tokens-min", omin, "Shortest output")->check(CLI::PositiveNumber);
  app.add_option("--output-tokens-max", omax, "Longest output")->check(CLI::PositiveNumber);
  app.add_option("--vocab", vocab, "Token ids are drawn below this (default: from /tokenize of a probe, else 1000)");
  app.add_option("--max-concurrency", max_concurrency, "Most requests in flight (0: unlimited)");
  app.add_option("--slo-ttft-ms", slo_ttft_ms, "Goodput SLO: time to first token");
  app.add_option("--slo-tpot-ms", slo_tpot_ms, "Goodput SLO: time per output token");
  app.add_option("--seed", seed, "Random seed for arrivals and lengths");
  app.add_option("--out", out, "Write the JSON result here");
  app.add_option("--plot", plot, "Draw a PNG here (needs gnuplot)");
  CLI11_PARSE(app, argc, argv);
  if (pmax < pmin || omax < omin) {
    std::fprintf(stderr, "serve_load: the min of a length range exceeds its max\n");
    return 2;
  }
  httplib::Headers headers;
  if (!api_key.empty()) headers.emplace("Authorization", "Bearer " + api_key);
  {
    httplib::Client c(url);
    auto r = c.Get("/v1/models", headers);
    if (!r || r->status != 200) {
      std::fprintf(stderr, "serve_load: %s/v1/models did not answer (is the server running?)\n", url.c_str());
      return 1;
    }
    if (model.empty()) model = json::parse(r->body)["data"][0]["id"];
    if (vocab == 0) vocab = 1000;
  }
  std::mt19937_64 rng(seed);
  std::exponential_distribution<double> gap(rate);
  std::vector<Sample> samples(static_cast<size_t>(num));
  std::vector<json> bodies;
  std::vector<double> arrivals;
  double t = 0;
  for (int i = 0; i < num; ++i) {
    const int p = pmin + int(rng() % uint64_t(pmax - pmin + 1)), o = omin + int(rng() % uint64_t(omax - omin + 1));
    std::vector<int> ids(static_cast<size_t>(p));
    for (auto& id : ids) id = 1 + int(rng() % uint64_t(vocab - 1));
    bodies.push_back({{"model", model}, {"prompt", ids}, {"max_tokens", o}, {"ignore_eos", true}, {"temperature", 0},
                      {"stream", true}});
    samples[size_t(i)].prompt_tokens = p;
    arrivals.push_back(arrival == "burst" ? 0 : t);
    t += gap(rng);
  }
  std::mutex mu;
  std::condition_variable cv;
  int in_flight = 0;
  const auto t0 = Clock::now();
  auto since = [&](Clock::time_point x) { return std::chrono::duration<double>(x - t0).count(); };
  std::vector<std::thread> threads;
  for (int i = 0; i < num; ++i) {
    std::this_thread::sleep_until(t0 + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(arrivals[size_t(i)])));
    if (max_concurrency > 0) {
      std::unique_lock<std::mutex> lock(mu);
      cv.wait(lock, [&] { return in_flight < max_concurrency; });
    }
    {
      std::lock_guard<std::mutex> lock(mu);
      ++in_flight;
    }
    threads.emplace_back([&, i] {
      Sample& s = samples[size_t(i)];
      const auto start = Clock::now();
      s.start = since(start);
      auto last = start;
      std::string buffer;
      httplib::Client c(url);
      c.set_read_timeout(600, 0);
      httplib::Request req;
      req.method = "POST";
      req.path = "/v1/completions";
      req.headers = headers;
      req.headers.emplace("Content-Type", "application/json");
      req.body = bodies[size_t(i)].dump();
      req.content_receiver = [&](const char* data, size_t n, uint64_t, uint64_t) {
        buffer.append(data, n);
        size_t end;
        while ((end = buffer.find("\n\n")) != std::string::npos) {
          const std::string event = buffer.substr(0, end);
          buffer.erase(0, end + 2);
          if (event.rfind("data: ", 0) != 0 || event == "data: [DONE]") continue;
          const json j = json::parse(event.substr(6), nullptr, false);
          if (j.is_discarded() || j["choices"].empty() || j["choices"][0]["text"].get<std::string>().empty()) continue;
          const auto now = Clock::now();
          if (s.ttft < 0) s.ttft = std::chrono::duration<double>(now - start).count();
          else s.itl.push_back(std::chrono::duration<double>(now - last).count());
          last = now;
          ++s.output_tokens;
        }
        return true;
      };
      httplib::Response res;
      httplib::Error err;
      const bool sent = c.send(req, res, err);
      s.e2e = std::chrono::duration<double>(Clock::now() - start).count();
      s.ok = sent && res.status == 200 && s.ttft >= 0;
      if (!s.ok) s.error = sent ? "HTTP " + std::to_string(res.status) : httplib::to_string(err);
      {
        std::lock_guard<std::mutex> lock(mu);
        --in_flight;
      }
      cv.notify_one();
    });
  }
  for (auto& th : threads) th.join();
  const double duration = since(Clock::now());

  std::vector<double> ttft, tpot, itl, e2e;
  int ok = 0, good = 0;
  int64_t out_tokens = 0, in_tokens = 0;
  for (const auto& s : samples) {
    if (!s.ok) continue;
    ++ok;
    ttft.push_back(s.ttft);
    e2e.push_back(s.e2e);
    itl.insert(itl.end(), s.itl.begin(), s.itl.end());
    const double per_token = s.output_tokens > 1 ? (s.e2e - s.ttft) / double(s.output_tokens - 1) : 0;
    tpot.push_back(per_token);
    out_tokens += s.output_tokens;
    in_tokens += s.prompt_tokens;
    if (s.ttft * 1000 <= slo_ttft_ms && per_token * 1000 <= slo_tpot_ms) ++good;
  }
  json result = {
      {"url", url}, {"model", model}, {"arrival", arrival}, {"rate", arrival == "burst" ? json("burst") : json(rate)},
      {"num_requests", num}, {"completed", ok}, {"failed", num - ok}, {"duration_s", duration},
      {"prompt_tokens", {{"min", pmin}, {"max", pmax}, {"total", in_tokens}}},
      {"output_tokens", {{"min", omin}, {"max", omax}, {"total", out_tokens}}},
      {"request_throughput", ok / duration}, {"output_throughput_tokens_per_s", double(out_tokens) / duration},
      {"total_throughput_tokens_per_s", double(out_tokens + in_tokens) / duration},
      {"ttft_s", stats(ttft)}, {"tpot_s", stats(tpot)}, {"itl_s", stats(itl)}, {"e2e_s", stats(e2e)},
      {"slo", {{"ttft_ms", slo_ttft_ms}, {"tpot_ms", slo_tpot_ms}}}, {"goodput_requests_per_s", good / duration},
      {"requests_meeting_slo", good}};
  std::printf("%s\n", result.dump(2).c_str());
  if (!out.empty()) std::ofstream(out) << result.dump(2) << "\n";
  if (!plot.empty()) {
    const std::string dat = plot + ".dat", gp = plot + ".gp";
    {
      std::ofstream d(dat);
      d << "# start_s ttft_s tpot_s e2e_s prompt_tokens output_tokens\n";
      for (const auto& s : samples)
        if (s.ok)
          d << s.start << " " << s.ttft << " " << (s.output_tokens > 1 ? (s.e2e - s.ttft) / (s.output_tokens - 1) : 0) << " "
            << s.e2e << " " << s.prompt_tokens << " " << s.output_tokens << "\n";
    }
    std::ofstream g(gp);
    g << "set terminal pngcairo size 1200,800 noenhanced\nset output '" << plot << "'\n"
      << "set multiplot layout 2,1 title '" << model << ": " << num << " requests, " << (arrival == "burst" ? "burst" : std::to_string(rate) + " req/s Poisson")
      << ", prompts " << pmin << "-" << pmax << ", outputs " << omin << "-" << omax << " tokens'\n"
      << "set grid\nset xlabel 'arrival time (s)'\nset ylabel 'seconds'\n"
      << "plot '" << dat << "' using 1:2 with points pt 7 ps 0.6 title 'time to first token', '" << dat
      << "' using 1:4 with points pt 6 ps 0.6 title 'end-to-end latency'\n"
      << "set ylabel 'milliseconds'\nplot '" << dat << "' using 1:($3*1000) with points pt 7 ps 0.6 title 'time per output token'\n"
      << "unset multiplot\n";
    g.close();
    std::fflush(stdout);
    const int rc = std::system(("gnuplot '" + gp + "' 2>&1").c_str());
    if (rc != 0) std::fprintf(stderr, "serve_load: gnuplot failed (is gnuplot installed?); data in %s, script in %s\n", dat.c_str(), gp.c_str());
  }
  return ok == num ? 0 : 1;
}
