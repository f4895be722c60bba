// session_stream: streams N tokens through one engine session under the sink KV policy and checks that the
// cost per token and the memory stay flat. Appends random token ids in chunks (prefilled as they arrive) and,
// every --every tokens, generates --gen tokens; records the append throughput, the per-token decode latency
// and the process RSS at each checkpoint, and fits a line to each against the tokens seen (the slope is what
// must be ~0). Writes JSON.
//   session_stream --model models/rill-tiny --tokens 1000000 --out result.json
#include <CLI/CLI.hpp>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <thread>
#include <unistd.h>
#include <algorithm>

#include "backend/backend.h"
#include "engine/engine.h"

using json = nlohmann::ordered_json;
using Clock = std::chrono::steady_clock;

namespace {

double rss_mib() {
  std::ifstream f("/proc/self/statm");
  long pages = 0, resident = 0;
  f >> pages >> resident;
  return double(resident) * double(sysconf(_SC_PAGESIZE)) / (1 << 20);
}

// Least-squares slope and intercept of y against x.
std::pair<double, double> fit(const std::vector<double>& x, const std::vector<double>& y) {
  const double n = double(x.size());
  double sx = 0, sy = 0, sxx = 0, sxy = 0;
  for (size_t i = 0; i < x.size(); ++i) sx += x[i], sy += y[i], sxx += x[i] * x[i], sxy += x[i] * y[i];
  const double slope = (n * sxy - sx * sy) / (n * sxx - sx * sx);
  return {slope, (sy - slope * sx) / n};
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app("Streams tokens through one rill session and measures per-token cost and memory");
  std::string model_path = "models/rill-tiny", out;
  int64_t total = 1000000;
  int chunk = 1024, every = 65536, gen = 32, sinks = 4, window = 508, threads = 0;
  app.add_option("--model", model_path, "Model directory");
  app.add_option("--tokens", total, "Tokens to stream through the session");
  app.add_option("--chunk", chunk, "Tokens per append");
  app.add_option("--every", every, "Checkpoint (generate and measure) every N tokens");
  app.add_option("--gen", gen, "Tokens generated at each checkpoint");
  app.add_option("--sinks", sinks, "Attention sinks");
  app.add_option("--window", window, "Latest tokens kept (the window of the sink policy)");
  app.add_option("--threads", threads, "CPU threads (0: all)");
  app.add_option("--out", out, "Write the JSON result here");
  CLI11_PARSE(app, argc, argv);

  auto backend = rill::make_cpu_backend(threads);
  rill::Model model(rill::read_checkpoint(model_path), *backend);
  rill::EngineConfig cfg;
  cfg.num_blocks = 256;
  cfg.max_batch_tokens = 512;
  cfg.session_ttl_seconds = 1e9;
  rill::Engine engine(model, cfg);
  const rill::KvPolicy policy = rill::KvPolicy::parse("sink", sinks, window);
  const uint64_t id = engine.create_session(policy);
  std::mt19937 rng(1);
  const int vocab = model.config().vocab_size;

  std::vector<double> xs, decode_ms, append_us, rss, blocks;
  json points = json::array();
  int64_t seen = 0, since = 0;
  auto t_append = Clock::now();
  while (seen < total) {
    std::vector<int32_t> t(static_cast<size_t>(std::min<int64_t>(chunk, total - seen)));
    for (auto& v : t) v = int32_t(rng() % uint32_t(vocab));
    engine.append_session(id, t);
    seen += int64_t(t.size());
    since += int64_t(t.size());
    if (since < every && seen < total) continue;
    // Checkpoint: wait for the prefill, then time a generation.
    while (engine.session_status(id).pending > 0) std::this_thread::sleep_for(std::chrono::microseconds(200));
    const double append_per_token = std::chrono::duration<double, std::micro>(Clock::now() - t_append).count() / double(since);
    rill::Request g;
    g.max_tokens = gen;
    g.ignore_eos = true;
    g.sampling.temperature = 0;
    auto stream = engine.generate_session(id, g);
    std::vector<double> gaps;
    auto last = Clock::now();
    for (auto e = stream->next(60); e && e->token >= 0; e = stream->next(60)) {
      const auto now = Clock::now();
      gaps.push_back(std::chrono::duration<double, std::milli>(now - last).count());
      last = now;
    }
    seen += gen;
    std::sort(gaps.begin() + 1, gaps.end());  // the first gap includes the last token's prefill
    const double median = gaps[1 + (gaps.size() - 1) / 2];
    const rill::SessionStatus st = engine.session_status(id);
    xs.push_back(double(seen));
    decode_ms.push_back(median);
    append_us.push_back(append_per_token);
    rss.push_back(rss_mib());
    blocks.push_back(st.blocks);
    points.push_back({{"tokens", seen}, {"decode_ms_per_token_median", median}, {"append_us_per_token", append_per_token},
                      {"rss_mib", rss.back()}, {"kv_blocks", st.blocks}, {"kv_bytes", st.kv_bytes}, {"tokens_cached", st.tokens_cached}});
    std::fprintf(stderr, "%9lld tokens: decode %.3f ms/token, append %.1f us/token, RSS %.1f MiB, %d KV blocks\n",
                 (long long)seen, median, append_per_token, rss.back(), st.blocks);
    since = 0;
    t_append = Clock::now();
  }
  // Slopes over the checkpoints after the first (the first includes warm-up and the window filling up).
  auto tail = [](const std::vector<double>& v) { return std::vector<double>(v.begin() + 1, v.end()); };
  const auto [dec_slope, dec_b] = fit(tail(xs), tail(decode_ms));
  const auto [app_slope, app_b] = fit(tail(xs), tail(append_us));
  const auto [rss_slope, rss_b] = fit(tail(xs), tail(rss));
  json result = {{"model", model_path}, {"policy", {{"sinks", sinks}, {"window", window}}}, {"tokens", seen},
                 {"threads", backend->name()},
                 {"decode_ms_per_token", {{"intercept", dec_b}, {"slope_per_million_tokens", dec_slope * 1e6}}},
                 {"append_us_per_token", {{"intercept", app_b}, {"slope_per_million_tokens", app_slope * 1e6}}},
                 {"rss_mib", {{"intercept", rss_b}, {"slope_per_million_tokens", rss_slope * 1e6}}},
                 {"points", points}};
  std::printf("%s\n", result.dump(2).c_str());
  if (!out.empty()) std::ofstream(out) << result.dump(2) << "\n";
  return 0;
}
