// cpu_generate: batch-1 prefill and decode speed of a model on the CPU backend, next to the machine's
// measured memory bandwidth, so decode can be reported as a fraction of its physical limit:
//   limit (tokens/s) = copy bandwidth / bytes read per generated token (weights + KV cache).
// Prints a table and writes JSON (--out).
#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <sys/mman.h>
#include <thread>

#include "backend/backend.h"
#include "backend/cpu/vec.h"
#include "core/thread_pool.h"
#include "formats/checkpoint.h"
#include "model/model.h"
#include "timed_request.h"

namespace {

double now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// A buffer as the backend holds weights: 2 MiB aligned, transparent huge pages asked for.
std::shared_ptr<char> huge_buffer(size_t bytes, char fill) {
  constexpr size_t kHuge = size_t(2) << 20;
  bytes = (bytes + kHuge - 1) / kHuge * kHuge;
  auto* p = static_cast<char*>(std::aligned_alloc(kHuge, bytes));
#if defined(MADV_HUGEPAGE)
  madvise(p, bytes, MADV_HUGEPAGE);
#endif
  std::memset(p, fill, bytes);
  return std::shared_ptr<char>(p, std::free);
}

// Best of `repeats` parallel copies of `bytes` (bytes copied per second: each is read once and written once).
double copy_bandwidth(rill::ThreadPool& pool, size_t bytes, int repeats) {
  auto src = huge_buffer(bytes, 1), dst = huge_buffer(bytes, 0);
  double best = 0;
  for (int r = 0; r < repeats; ++r) {
    const double t0 = now();
    const int64_t chunks = pool.size() * 4;
    pool.parallel_for(chunks, 1, [&](int64_t b, int64_t e) {
      const size_t per = bytes / size_t(chunks);
      std::memcpy(dst.get() + size_t(b) * per, src.get() + size_t(b) * per, per * size_t(e - b));
    });
    best = std::max(best, double(bytes) / (now() - t0));
  }
  return best;
}

// Best of `repeats` parallel read-only passes (bytes read per second): eight independent sums per thread, so
// the pass waits on memory, not on an add chain.
double read_bandwidth(rill::ThreadPool& pool, size_t bytes, int repeats) {
  auto buf = huge_buffer(bytes, 1);
  double best = 0;
  std::atomic<uint64_t> sink{0};
  for (int r = 0; r < repeats; ++r) {
    const double t0 = now();
    const int64_t chunks = pool.size();
    pool.parallel_for(chunks, 1, [&](int64_t b, int64_t e) {
      const size_t per = bytes / 8 / size_t(chunks);
      const uint64_t* p = reinterpret_cast<const uint64_t*>(buf.get()) + size_t(b) * per;
      uint64_t s[8] = {};
      for (size_t i = 0; i + 8 <= per * size_t(e - b); i += 8)
        for (int j = 0; j < 8; ++j) s[j] += p[i + j];
      sink += s[0] + s[1] + s[2] + s[3] + s[4] + s[5] + s[6] + s[7];
    });
    best = std::max(best, double(bytes) / (now() - t0));
  }
  return best;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Batch-1 CPU generation speed against the memory-bandwidth limit"};
  std::string model_path, out;
  int prompt_tokens = 128, new_tokens = 128, repeats = 3, threads = 0;
  app.add_option("--model", model_path, "Model directory or .bin")->required();
  app.add_option("--prompt-tokens", prompt_tokens, "Prompt length (random token ids)");
  app.add_option("--new-tokens", new_tokens, "Tokens to generate");
  app.add_option("--repeats", repeats, "Runs; the median is reported");
  app.add_option("--threads", threads, "CPU threads (0: all)");
  app.add_option("--out", out, "Write results as JSON to this file");
  CLI11_PARSE(app, argc, argv);

  auto backend = rill::make_cpu_backend(threads);
  rill::ThreadPool pool(threads);
  const size_t bw_bytes = size_t(512) << 20;
  const double copy_bw = copy_bandwidth(pool, bw_bytes, 5);
  const double read_bw = read_bandwidth(pool, bw_bytes, 5);

  rill::Model model(rill::read_checkpoint(model_path), *backend);
  const auto& c = model.config();
  rill::EngineConfig ec;
  ec.num_blocks = rill::kv_blocks_for_sequence(rill::KvPolicy{}, prompt_tokens + new_tokens, ec.block_size);
  ec.max_batch_tokens = prompt_tokens;
  ec.max_num_seqs = 1;
  rill::Engine engine(model, ec);
  std::mt19937 rng(1);
  rill::Request req;
  req.max_tokens = new_tokens;
  req.ignore_eos = true;
  req.sampling.temperature = 0;

  std::vector<double> prefill_tps, decode_tps;
  int steps = 0;
  for (int r = 0; r < repeats + 1; ++r) {  // the first run warms caches and page-ins the weights
    // A new prompt each run, so the prefix cache does not skip its prefill.
    req.prompt.assign(static_cast<size_t>(prompt_tokens), 0);
    for (auto& t : req.prompt) t = int32_t(rng() % uint32_t(c.vocab_size));
    const rill::bench::Timed res = rill::bench::timed_request(engine, req);
    if (r == 0) continue;
    prefill_tps.push_back(prompt_tokens / res.first);
    decode_tps.push_back(res.decode_steps() / res.decode);
    steps = res.decode_steps();
  }
  // Bytes read per decode step: every weight once (the tied head counted once, as it is read once per
  // step; the embedding row is negligible) plus the KV cache read by attention, averaged over the steps.
  const double kv_per_token = double(rill::KvCache::bytes_per_token(c));
  const double avg_ctx = prompt_tokens + 1 + (steps - 1) / 2.0;
  const double bytes_per_step = double(model.weight_bytes()) + kv_per_token * avg_ctx;
  const double decode = median(decode_tps);
  const double limit_copy = copy_bw / bytes_per_step, limit_read = read_bw / bytes_per_step;

  nlohmann::json j = {
      {"model", model_path},
      {"parameters", c.parameter_count()},
      {"weight_bytes", model.weight_bytes()},
      {"backend", backend->name()},
      {"hardware_threads", std::thread::hardware_concurrency()},
      {"prompt_tokens", prompt_tokens},
      {"new_tokens", new_tokens},
      {"repeats", repeats},
      {"prefill_tokens_per_s", median(prefill_tps)},
      {"prefill_GFLOPs", 2.0 * double(c.parameter_count()) * median(prefill_tps) / 1e9},
      {"decode_tokens_per_s", decode},
      {"decode_bytes_per_token", bytes_per_step},
      {"copy_bandwidth_GBps", copy_bw / 1e9},
      {"read_bandwidth_GBps", read_bw / 1e9},
      {"decode_limit_tokens_per_s_copy_bw", limit_copy},
      {"decode_fraction_of_copy_bw_limit", decode / limit_copy},
      {"decode_fraction_of_read_bw_limit", decode / limit_read},
      {"decode_limit_tokens_per_s_read_bw", limit_read},
  };
  std::printf("%s\n", j.dump(2).c_str());
  std::printf("\nprefill %.1f tok/s, decode %.2f tok/s = %.0f%% of the read-bandwidth limit (%.2f tok/s at %.2f GB/s, "
              "%.1f MB/token); %.0f%% of the copy-bandwidth limit (%.2f GB/s copied)\n",
              median(prefill_tps), decode, 100 * decode / limit_read, limit_read, read_bw / 1e9, bytes_per_step / 1e6,
              100 * decode / limit_copy, copy_bw / 1e9);
  if (!out.empty()) std::ofstream(out) << j.dump(2) << "\n";
  return 0;
}
