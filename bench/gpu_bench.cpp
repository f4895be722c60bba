// gpu_bench: rill's CUDA backend on a Llama-3-8B-shaped model with random bf16 weights made in memory (no
// download, no disk), against the device's own limits measured in the same run:
//   copy bandwidth (device-to-device cudaMemcpy, read + write bytes / time) and the cuBLASLt bf16 GEMM rate
//   (8192^3); batch-1 decode at 1k context, batch-64 generation (128-token prompts, 128 new tokens, through
//   the serving engine), prefill of a 4096-token prompt, and each attention kernel alone (decode at
//   64 x 4096 keys, causal prefill of 4096 tokens), and token sampling on the device against reading the
//   logits back (--what sampling).
// Timings use CUDA events on the backend's stream or host clocks around requests to an Engine, after warm-up,
// median of repeats. Writes JSON (--out) and prints a table. See bench/run_cuda.sh for the full device run.
#include <cuda_runtime.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <thread>

#include "backend/backend.h"
#include "backend/cuda/cuda_backend.h"
#include "engine/engine.h"
#include "timed_request.h"
#include "formats/hf_config.h"
#include "grammar_workload.h"
#include "model/model.h"

namespace {

using Clock = std::chrono::steady_clock;
double seconds(Clock::time_point a, Clock::time_point b) { return std::chrono::duration<double>(b - a).count(); }
double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) throw rill::Error(std::string(what) + ": " + cudaGetErrorString(e));
}

// Times `fn` (which queues work on `stream`) with CUDA events: `warm` untimed calls, then the median of `reps`.
template <typename F>
double time_events(cudaStream_t stream, int warm, int reps, F&& fn) {
  for (int i = 0; i < warm; ++i) fn();
  cudaEvent_t a, b;
  check(cudaEventCreate(&a), "event");
  check(cudaEventCreate(&b), "event");
  std::vector<double> t;
  for (int i = 0; i < reps; ++i) {
    check(cudaEventRecord(a, stream), "record");
    fn();
    check(cudaEventRecord(b, stream), "record");
    check(cudaEventSynchronize(b), "sync");
    float ms = 0;
    cudaEventElapsedTime(&ms, a, b);
    t.push_back(ms / 1000.0);
  }
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  return median(t);
}

// Uniform bf16 noise with standard deviation ~`std`, filled by several threads.
std::vector<uint16_t> random_bf16(size_t n, uint64_t seed, float std) {
  std::vector<uint16_t> v(n);
  const unsigned threads = std::max(1u, std::thread::hardware_concurrency());
  std::vector<std::thread> pool;
  for (unsigned w = 0; w < threads; ++w)
    pool.emplace_back([&, w] {
      uint64_t x = seed * 0x9E3779B97F4A7C15ull + w + 1;
      const size_t b = n * w / threads, e = n * (w + 1) / threads;
      for (size_t i = b; i < e; ++i) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        const float u = float(x >> 40) / float(1 << 24) * 2.f - 1.f;  // [-1, 1)
        v[i] = rill::f32_to_bf16(u * std * 1.7320508f);
      }
    });
  for (auto& t : pool) t.join();
  return v;
}

rill::Tensor host_view(std::vector<uint16_t>& buf, rill::Shape s) {
  rill::Tensor t;
  t.data = buf.data();
  t.dtype = rill::DType::BF16;
  t.shape = s;
  return t;
}

std::vector<int32_t> random_tokens(int n, int vocab, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<int32_t> t(static_cast<size_t>(n));
  for (auto& x : t) x = int32_t(rng() % uint32_t(vocab));
  return t;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"rill CUDA benchmarks on a Llama-3-8B-shaped model with random bf16 weights"};
  int layers = 32, repeats = 5;
  std::vector<int64_t> row_counts{16, 32, 64, 128};
  std::string out, what = "bandwidth,gemm,gemv,rows,decode1,batch64,prefill,attention,sampling",
                   dtype = "auto";
  app.add_option("--layers", layers, "Transformer layers (32 for Llama-3-8B; fewer for a quick run)");
  app.add_option("--repeats", repeats, "Timed repeats per figure (median)");
  app.add_option("--what", what,
                 "Comma-separated: bandwidth,gemm,gemv,rows,decode1,batch64,prefill,attention,sampling,verify,spec64 "
                 "(the last two, speculative decoding's verify cost and batch 64 with it on, run only when named)");
  app.add_option("--rows", row_counts, "Row counts of x for --what rows")->delimiter(',');
  std::vector<int> decode_ctx{192, 2048, 4096};
  app.add_option("--decode-ctx", decode_ctx,
                 "Key counts of --what attention's decode case, 64 sequences each (4096, the issue's figure, "
                 "is always timed)")
      ->delimiter(',');
  app.add_option("--out", out, "Write the figures as JSON here");
  app.add_option("--dtype", dtype,
                 "The backend's --dtype: auto (bf16) or float32 (for decode1, batch64, prefill)");
  CLI11_PARSE(app, argc, argv);
  auto want = [&](const char* k) { return ("," + what + ",").find("," + std::string(k) + ",") != std::string::npos; };

  try {
    auto backend = rill::make_backend("cuda", 0, dtype);
    auto stream = static_cast<cudaStream_t>(rill::cuda_stream(*backend));
    nlohmann::ordered_json j;
    j["device"] = backend->name();
    j["command"] = "gpu_bench --layers " + std::to_string(layers) + " --repeats " + std::to_string(repeats) +
                   (dtype == "auto" ? "" : " --dtype " + dtype);

    // Llama-3-8B's shape.
    const int64_t d = 4096, heads = 32, kv_heads = 8, hd = 128, ffn = 14336, vocab = 128256;
    double bw = 0, gemm_rate = 0;

    if (want("bandwidth") || want("decode1") || want("batch64")) {  // (verify, spec64: ratios only)
      const size_t bytes = size_t(2) << 30;
      void *a = nullptr, *b = nullptr;
      check(cudaMalloc(&a, bytes), "cudaMalloc");
      check(cudaMalloc(&b, bytes), "cudaMalloc");
      const double t = time_events(stream, 3, 10, [&] { cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice, stream); });
      cudaFree(a);
      cudaFree(b);
      bw = 2.0 * double(bytes) / t;
      j["copy_bandwidth_GBps"] = bw / 1e9;
      std::printf("copy bandwidth (read+write)      %8.0f GB/s\n", bw / 1e9);
    }
    if (want("gemm") || want("prefill")) {
      const int64_t n = 8192;
      auto buf = random_bf16(size_t(n * n), 1, 0.02f);
      const rill::Tensor w = backend->upload_weight(host_view(buf, {n, n}));
      const rill::Tensor x = backend->upload_weight(host_view(buf, {n, n}));
      const rill::Tensor y = backend->alloc(rill::DType::BF16, {n, n});
      const double t = time_events(stream, 3, repeats * 2, [&] { backend->linear(y, x, w, rill::Tensor{}); });
      gemm_rate = 2.0 * double(n) * double(n) * double(n) / t;
      j["cublaslt_bf16_TFLOPs_8192"] = gemm_rate / 1e12;
      std::printf("cuBLASLt bf16 GEMM 8192^3        %8.1f TFLOP/s\n", gemm_rate / 1e12);
    }

    // The decode-time products alone (one launch each), in weight bytes read per second: what a decode step
    // spends most of its time on. Each matrix is its own copy, so nothing is warm in L2. "gemv": one row
    // (batch-1 decode); "rowsN": N rows (a batch of N decoding sequences).
    auto products = [&](int64_t n) {
      nlohmann::ordered_json jg;
      auto weights = [&](int64_t rows, int64_t cols) {
        auto buf = random_bf16(size_t(rows * cols), 9, 0.02f);
        return backend->upload_weight(host_view(buf, {rows, cols}));
      };
      auto rows_of = [&](int64_t cols) {
        auto buf = random_bf16(size_t(n * cols), 10, 1.f);
        return backend->upload_weight(host_view(buf, {n, cols}));
      };
      const std::string tag = n == 1 ? "gemv" : "rows" + std::to_string(n);
      auto report = [&](const char* name, double bytes, double t) {
        jg[name] = {{"us", t * 1e6}, {"GBps", bytes / t / 1e9}};
        std::printf("%-6s %-25s %8.1f us   (%.0f GB/s)\n", tag.c_str(), name, t * 1e6, bytes / t / 1e9);
      };
      const rill::Tensor xd = rows_of(d), xf = rows_of(ffn);
      {
        const rill::Tensor wq = weights(heads * hd, d), wk = weights(kv_heads * hd, d), wv = weights(kv_heads * hd, d);
        const rill::Tensor q = backend->alloc(rill::DType::BF16, {n, heads * hd}),
                           k = backend->alloc(rill::DType::BF16, {n, kv_heads * hd}),
                           v = backend->alloc(rill::DType::BF16, {n, kv_heads * hd});
        const rill::Backend::LinearOut outs[] = {{q, wq, {}}, {k, wk, {}}, {v, wv, {}}};
        report("qkv 6144x4096", 2.0 * double(wq.numel() + wk.numel() + wv.numel()),
               time_events(stream, 5, 50, [&] { backend->linears(xd, outs, 3); }));
        {  // the stacked [q; k; v] matrix as one cuBLASLt GEMM
          const rill::Tensor all = weights((heads + 2 * kv_heads) * hd, d),
                             y = backend->alloc(rill::DType::BF16, {n, (heads + 2 * kv_heads) * hd});
          report("[q;k;v] 1 GEMM", 2.0 * double(all.numel()),
                 time_events(stream, 5, 50, [&] { backend->linear(y, xd, all, {}); }));
        }
        const rill::Tensor o = backend->alloc(rill::DType::BF16, {n, d});
        report("o_proj 4096x4096", 2.0 * double(wq.numel()), time_events(stream, 5, 50, [&] {
                 backend->linear(o, q, wq, {});
               }));
      }
      {
        const rill::Tensor gate = weights(ffn, d), up = weights(ffn, d), down = weights(d, ffn);
        const rill::Tensor g = backend->alloc(rill::DType::BF16, {n, ffn}),
                           u = backend->alloc(rill::DType::BF16, {n, ffn});
        const rill::Tensor act = backend->alloc(rill::DType::BF16, {n, ffn});
        report("gate+up 2x14336x4096", 4.0 * double(gate.numel()),
               time_events(stream, 5, 50, [&] { backend->swiglu(act, xd, gate, {}, up, {}, g, u); }));
        // The same two products as one GEMM over the stacked [gate; up] matrix (no SiLU): what stacking the
        // weights at load time would give.
        {
          const rill::Tensor both = weights(2 * ffn, d), y = backend->alloc(rill::DType::BF16, {n, 2 * ffn});
          const rill::Backend::LinearOut two[] = {{g, gate, {}}, {u, up, {}}};
          report("gate,up 2 GEMMs", 4.0 * double(gate.numel()),
                 time_events(stream, 5, 50, [&] { backend->linears(xd, two, 2); }));
          report("[gate;up] 1 GEMM", 4.0 * double(gate.numel()),
                 time_events(stream, 5, 50, [&] { backend->linear(y, xd, both, {}); }));
        }
        const rill::Tensor o = backend->alloc(rill::DType::BF16, {n, d});
        report("down 4096x14336", 2.0 * double(down.numel()),
               time_events(stream, 5, 50, [&] { backend->linear(o, xf, down, {}); }));
      }
      {
        const rill::Tensor head = weights(vocab, d), logits = backend->alloc(rill::DType::F32, {n, vocab});
        report("lm_head 128256x4096", 2.0 * double(head.numel()),
               time_events(stream, 5, 50, [&] { backend->linear(logits, xd, head, {}); }));
      }
      j[tag] = jg;
    };
    if (want("gemv")) products(1);
    if (want("rows"))
      for (int64_t n : row_counts) products(n);

    const bool need_model = want("decode1") || want("batch64") || want("prefill") || want("verify") || want("spec64");
    std::unique_ptr<rill::Model> model;
    std::vector<uint16_t> big, embed;
    int64_t matmul_params = 0;
    if (need_model) {
      const auto dir = std::filesystem::temp_directory_path() / "rill-gpu-bench";
      std::filesystem::create_directories(dir);
      nlohmann::json cfg = {{"architectures", {"LlamaForCausalLM"}}, {"hidden_size", d}, {"intermediate_size", ffn},
                            {"num_attention_heads", heads}, {"num_key_value_heads", kv_heads},
                            {"num_hidden_layers", layers}, {"vocab_size", vocab}, {"max_position_embeddings", 8192},
                            {"rms_norm_eps", 1e-5}, {"rope_theta", 500000.0}, {"tie_word_embeddings", false},
                            {"bos_token_id", 128000}, {"eos_token_id", 128001}};
      std::ofstream(dir / "config.json") << cfg.dump();
      rill::Checkpoint ck;
      ck.path = "random";
      ck.config = rill::read_hf_config((dir / "config.json").string());
      // One host buffer per role, shared by every layer (each upload is its own device copy).
      big = random_bf16(size_t(ffn * d), 2, 0.02f);
      embed = random_bf16(size_t(vocab * d), 3, 0.02f);
      static std::vector<uint16_t> ones(size_t(d), rill::f32_to_bf16(1.f));
      auto& W = ck.weights.tensors;
      W["model.embed_tokens.weight"] = host_view(embed, {vocab, d});
      W["lm_head.weight"] = host_view(embed, {vocab, d});
      W["model.norm.weight"] = host_view(ones, {d});
      for (int l = 0; l < layers; ++l) {
        const std::string p = "model.layers." + std::to_string(l) + ".";
        W[p + "input_layernorm.weight"] = host_view(ones, {d});
        W[p + "post_attention_layernorm.weight"] = host_view(ones, {d});
        W[p + "self_attn.q_proj.weight"] = host_view(big, {heads * hd, d});
        W[p + "self_attn.k_proj.weight"] = host_view(big, {kv_heads * hd, d});
        W[p + "self_attn.v_proj.weight"] = host_view(big, {kv_heads * hd, d});
        W[p + "self_attn.o_proj.weight"] = host_view(big, {d, heads * hd});
        W[p + "mlp.gate_proj.weight"] = host_view(big, {ffn, d});
        W[p + "mlp.up_proj.weight"] = host_view(big, {ffn, d});
        W[p + "mlp.down_proj.weight"] = host_view(big, {d, ffn});
      }
      matmul_params = int64_t(layers) * (2 * heads * hd * d + 2 * kv_heads * hd * d + 3 * ffn * d);
      const auto t0 = Clock::now();
      model = std::make_unique<rill::Model>(ck, *backend);
      backend->synchronize();
      std::printf("model: %d layers, %.2fB matmul params + lm_head, uploaded in %.1f s\n", layers,
                  double(matmul_params) / 1e9, seconds(t0, Clock::now()));
      j["layers"] = layers;
    }
    // Bytes per weight and KV entry: 2 (bf16), or 4 in float32 mode.
    const double elt = double(rill::dtype_size(backend->kv_dtype()));
    const double kv_bytes_per_token = double(2 * layers * kv_heads * hd) * elt;
    const double weight_bytes = elt * double(matmul_params + vocab * d) + elt * double(d) * (2 * layers + 1);

    if (want("decode1")) {
      const int ctx = 1024, steps = 128;
      rill::EngineConfig ec;
      ec.num_blocks = (ctx + steps + 32) / 16 + 1;
      ec.max_batch_tokens = ctx;
      ec.max_num_seqs = 1;
      rill::Engine engine(*model, ec);
      rill::Request req;
      req.max_tokens = steps;
      req.ignore_eos = true;
      req.sampling.temperature = 0;
      std::vector<double> per_token;
      for (int r = 0; r < repeats + 1; ++r) {
        req.prompt = random_tokens(ctx, int(vocab), uint32_t(r));
        const rill::bench::Timed res = rill::bench::timed_request(engine, req);
        if (r > 0) per_token.push_back(res.decode / (res.tokens - 1));
      }
      const double t = median(per_token);
      // The same with sampling (temperature, top-k, top-p, seeded), which runs on the device too.
      req.sampling.temperature = 0.8f;
      req.sampling.top_k = 50;
      req.sampling.top_p = 0.95f;
      req.sampling.has_seed = true;
      per_token.clear();
      for (int r = 0; r < repeats; ++r) {
        req.prompt = random_tokens(ctx, int(vocab), uint32_t(1000 + r));
        const rill::bench::Timed res = rill::bench::timed_request(engine, req);
        per_token.push_back(res.decode / (res.tokens - 1));
      }
      const double ts = median(per_token);
      const double bytes = weight_bytes + kv_bytes_per_token * (ctx + steps / 2);
      const double limit = bw / bytes;
      j["decode1"] = {{"context", ctx}, {"tokens_per_s", 1.0 / t}, {"ms_per_token", t * 1e3},
                      {"bytes_per_token_GB", bytes / 1e9}, {"bandwidth_limit_tokens_per_s", limit},
                      {"fraction_of_limit", (1.0 / t) / limit}, {"sampled_tokens_per_s", 1.0 / ts}};
      std::printf("decode batch 1 @1k               %8.1f tok/s  (%.2f ms; limit %.1f tok/s: %.1f%%)\n", 1.0 / t,
                  t * 1e3, limit, 100.0 * (1.0 / t) / limit);
      std::printf("  sampled (T 0.8, top-k 50, top-p 0.95) %6.1f tok/s\n", 1.0 / ts);
    }

    if (want("batch64")) {
      const int batch = 64, prompt = 128, gen = 128;
      rill::EngineConfig ec;
      ec.num_blocks = batch * (prompt + gen) / 16 + 64;
      ec.max_batch_tokens = batch * prompt;
      ec.max_num_seqs = batch;
      ec.max_waiting = 4 * batch;
      rill::Engine engine(*model, ec);
      bool sampled = false;
      int logprobs = -1;
      std::shared_ptr<const rill::grammar::CompiledGrammar> constraint;
      auto run = [&](int new_tokens, uint32_t seed, double* first_all) {
        std::vector<std::shared_ptr<rill::RequestStream>> streams;
        const auto t0 = Clock::now();
        for (int i = 0; i < batch; ++i) {
          rill::Request r;
          r.prompt = random_tokens(prompt, int(vocab), seed + uint32_t(i));
          r.max_tokens = new_tokens;
          r.ignore_eos = true;
          r.sampling.temperature = sampled ? 0.8f : 0.f;
          r.sampling.top_p = sampled ? 0.95f : 1.f;
          r.sampling.top_k = sampled ? 50 : 0;
          r.sampling.seed = i;
          r.sampling.has_seed = true;
          r.logprobs = logprobs;
          r.grammar = constraint;
          streams.push_back(engine.submit(r));
        }
        Clock::time_point last_first = t0;
        int64_t tokens = 0;
        for (auto& s : streams) {
          bool first = true;
          for (;;) {
            auto e = s->next(600.0);
            if (!e || e->token < 0) break;
            if (first) last_first = std::max(last_first, Clock::now()), first = false;
            ++tokens;
          }
        }
        const double total = seconds(t0, Clock::now());
        if (first_all) *first_all = seconds(t0, last_first);
        if (tokens != int64_t(batch) * new_tokens) throw rill::Error("batch64: missing tokens");
        return total;
      };
      run(8, 999, nullptr);  // warm-up: GEMM plans for every batch size
      // The decode phase: a whole run less a run that stops at the first token (the prefill).
      std::vector<double> totals, decode_rates, firsts;
      for (int r = 0; r < std::max(1, repeats / 2); ++r) firsts.push_back(run(1, uint32_t(500 + r), nullptr));
      for (int r = 0; r < std::max(1, repeats / 2); ++r) {
        const double t = run(gen, uint32_t(100 * r), nullptr);
        totals.push_back(t);
        decode_rates.push_back(double(batch) * (gen - 1) / (t - median(firsts)));
      }
      const double t = median(totals);
      const double tps = double(batch) * gen / t;
      sampled = true;  // the same runs with sampling (temperature, top-k, top-p) on the device
      std::vector<double> sampled_totals;
      for (int r = 0; r < std::max(1, repeats / 2); ++r)  // new prompts: the greedy runs' are in the prefix cache
        sampled_totals.push_back(run(gen, uint32_t(100000 + 100 * r), nullptr));
      const double tps_sampled = double(batch) * gen / median(sampled_totals);
      logprobs = 5;  // and with the log-probabilities of each token and its top 5 alternatives
      std::vector<double> logprob_totals;
      for (int r = 0; r < std::max(1, repeats / 2); ++r)
        logprob_totals.push_back(run(gen, uint32_t(200000 + 100 * r), nullptr));
      const double tps_logprobs = double(batch) * gen / median(logprob_totals);
      // And constrained: every sequence under a JSON Schema (objects one after another, so that none ends early),
      // over a synthetic vocabulary of the model's size; its token sets are computed before the timed runs, as the
      // server does when it compiles a request's grammar.
      logprobs = -1;
      constraint = rill::bench::person_stream_grammar(std::make_shared<rill::grammar::Vocabulary>(
          rill::bench::synthetic_vocabulary(vocab), std::vector<int32_t>{}));
      sampled = false;
      std::vector<double> constrained_totals, constrained_sampled_totals;
      for (int r = 0; r < std::max(1, repeats / 2); ++r)
        constrained_totals.push_back(run(gen, uint32_t(300000 + 100 * r), nullptr));
      sampled = true;
      for (int r = 0; r < std::max(1, repeats / 2); ++r)
        constrained_sampled_totals.push_back(run(gen, uint32_t(400000 + 100 * r), nullptr));
      constraint.reset();
      const double tps_constrained = double(batch) * gen / median(constrained_totals);
      const double tps_constrained_sampled = double(batch) * gen / median(constrained_sampled_totals);
      // One decode step reads every weight once and each sequence's KV (~prompt + gen/2 tokens).
      const double step_bytes = weight_bytes + kv_bytes_per_token * batch * (prompt + gen / 2);
      const double limit = bw / step_bytes * batch;
      const double dr = median(decode_rates);
      j["batch64"] = {{"batch", batch}, {"prompt", prompt}, {"new_tokens", gen}, {"seconds", t},
                      {"output_tokens_per_s", tps}, {"decode_phase_tokens_per_s", dr},
                      {"bandwidth_limit_decode_tokens_per_s", limit}, {"decode_fraction_of_limit", dr / limit},
                      {"sampled_output_tokens_per_s", tps_sampled},
                      {"sampled_logprobs5_output_tokens_per_s", tps_logprobs},
                      {"constrained_output_tokens_per_s", tps_constrained},
                      {"constrained_sampled_output_tokens_per_s", tps_constrained_sampled},
                      {"constrained_first_run_output_tokens_per_s", double(batch) * gen / constrained_totals[0]},
                      {"constrained_sampled_first_run_output_tokens_per_s",
                       double(batch) * gen / constrained_sampled_totals[0]}};
      std::printf("batch 64 x (128 + 128)           %8.0f tok/s  (%.2f s; decode phase %.0f tok/s, %.1f%% of %.0f)\n",
                  tps, t, dr, 100.0 * dr / limit, limit);
      std::printf("  sampled (T 0.8, top-k 50, top-p 0.95) %6.0f tok/s\n", tps_sampled);
      std::printf("  sampled, logprobs 5                   %6.0f tok/s\n", tps_logprobs);
      std::printf("  JSON Schema, greedy                   %6.0f tok/s (%.3fx greedy; its first run, with the grammar's caches cold: %.0f)\n",
                  tps_constrained, tps_constrained / tps, double(batch) * gen / constrained_totals[0]);
      std::printf("  JSON Schema, sampled                  %6.0f tok/s (%.3fx sampled; its first run: %.0f)\n",
                  tps_constrained_sampled, tps_constrained_sampled / tps_sampled,
                  double(batch) * gen / constrained_sampled_totals[0]);
    }

    // Speculative decoding's cost side: one step verifying K drafts per sequence (K + 1 tokens each, logits and a
    // token for every one) against a plain decode step (K = 0, a replayed graph), at batch 1 and 16, 1k context.
    // With acceptance rate a, a step yields (1 - a^(K+1)) / (1 - a) tokens: the speedup is that over this ratio
    // (plus the proposer's cost).
    if (want("verify")) {
      const int ctx = 1024;
      nlohmann::ordered_json jv = nlohmann::ordered_json::array();
      for (int batch : {1, 16}) {
        const int per_seq = (ctx + 16 + 15) / 16 + 1;
        rill::KvCache kv(*backend, model->config(), batch * per_seq, 16);
        rill::ModelRunner runner(*model);
        std::vector<double> base;
        for (int k = 0; k <= 8; ++k) {
          rill::Batch b;
          for (int s = 0; s < batch; ++s) {
            std::vector<int32_t> table(static_cast<size_t>(per_seq));
            for (int i = 0; i < per_seq; ++i) table[size_t(i)] = s * per_seq + i;
            b.add_sequence(random_tokens(k + 1, int(vocab), uint32_t(s + 7 * k)), ctx, ctx, table, 16,
                           k == 0 ? rill::Logits::Last : rill::Logits::All);
          }
          for (int w = 0; w < 3; ++w) runner.run(b, kv);  // plans made, the decode graph recorded
          std::vector<double> t;
          for (int r = 0; r < 10 * repeats; ++r) {
            const auto t0 = Clock::now();
            runner.run(b, kv);
            t.push_back(seconds(t0, Clock::now()));
          }
          const double m = median(t);
          if (k == 0) base.push_back(m);
          jv.push_back({{"batch", batch}, {"k", k}, {"ms", m * 1e3}, {"vs_decode", m / base.back()}});
          std::printf("verify batch %2d K %d (%2d tokens/seq)  %8.3f ms  %5.2fx a decode step\n", batch, k, k + 1,
                      m * 1e3, m / base.back());
        }
      }
      j["verify"] = jv;
    }

    // Speculation under load: batch 64 with --spec ngram on (its default --spec-max-batch 16 turns it off while
    // more than 16 sequences decode) and off, alternating, same prompts; random tokens, so lookup rarely finds
    // anything: this is the cost of having it on.
    if (want("spec64")) {
      const int batch = 64, prompt = 128, gen = 128;
      auto run = [&](bool spec, uint32_t seed) {
        rill::EngineConfig ec;
        ec.num_blocks = batch * (prompt + gen) / 16 + 64;
        ec.max_batch_tokens = batch * prompt;
        ec.max_num_seqs = batch;
        if (spec) ec.spec.method = rill::SpecMethod::Ngram;
        rill::Engine engine(*model, ec);
        std::vector<std::shared_ptr<rill::RequestStream>> streams;
        const auto t0 = Clock::now();
        for (int i = 0; i < batch; ++i) {
          rill::Request r;
          r.prompt = random_tokens(prompt, int(vocab), seed + uint32_t(i));
          r.max_tokens = gen;
          r.ignore_eos = true;
          r.sampling.temperature = 0;
          streams.push_back(engine.submit(r));
        }
        for (auto& st : streams)
          for (;;) {
            auto e = st->next(600.0);
            if (!e || e->token < 0) break;
          }
        return double(batch) * gen / seconds(t0, Clock::now());
      };
      run(false, 1);
      run(true, 1);
      std::vector<double> ratios, on, off;
      for (int r = 0; r < std::max(3, repeats); ++r) {
        off.push_back(run(false, uint32_t(1000 * (r + 2))));
        on.push_back(run(true, uint32_t(1000 * (r + 2))));
        ratios.push_back(on.back() / off.back());
      }
      j["spec64"] = {{"batch", batch}, {"prompt", prompt}, {"new_tokens", gen}, {"off_tokens_per_s", median(off)},
                     {"ngram_on_tokens_per_s", median(on)}, {"on_vs_off", median(ratios)}};
      std::printf("batch 64 spec ngram on / off       %8.0f / %.0f tok/s  (%.3fx, median of %zu paired runs)\n",
                  median(on), median(off), median(ratios), ratios.size());
    }

    if (want("prefill")) {
      const int T = 4096;
      rill::EngineConfig ec;
      ec.num_blocks = T / 16 + 2;
      ec.max_batch_tokens = T;
      ec.max_num_seqs = 1;
      rill::Engine engine(*model, ec);
      rill::Request req;
      req.max_tokens = 1;
      req.sampling.temperature = 0;
      std::vector<double> t;
      for (int r = 0; r < repeats + 1; ++r) {
        req.prompt = random_tokens(T, int(vocab), uint32_t(7 + r));
        const rill::bench::Timed res = rill::bench::timed_request(engine, req);
        if (r > 0) t.push_back(res.first);
      }
      const double s = median(t);
      const double attn_flops = 4.0 * double(hd) * double(heads) * double(layers) * double(T) * double(T + 1) / 2.0;
      const double flops = 2.0 * double(T) * double(matmul_params) + 2.0 * double(d) * double(vocab) + attn_flops;
      j["prefill"] = {{"tokens", T}, {"seconds", s}, {"model_TFLOPs", flops / s / 1e12},
                      {"fraction_of_cublaslt", gemm_rate > 0 ? flops / s / gemm_rate : 0.0},
                      {"attention_share_of_flops", attn_flops / flops}};
      std::printf("prefill 4096                     %8.1f ms   (%.0f TFLOP/s model FLOPs: %.1f%% of cuBLASLt)\n",
                  s * 1e3, flops / s / 1e12, gemm_rate > 0 ? 100.0 * flops / s / gemm_rate : 0.0);
    }

    if (want("attention")) {
      // Decode: 64 sequences x 4096 keys. Prefill: one causal 4096-token prompt. 32 query heads, 8 KV, hd 128.
      auto bench_attention = [&](int seqs, int ctx, int q_len) {
        const int bs = 16, per_seq = ctx / bs;
        rill::KvLayer kvl;
        kvl.k = backend->alloc(rill::DType::BF16, {int64_t(seqs) * per_seq, bs, kv_heads, hd});
        kvl.v = backend->alloc(rill::DType::BF16, {int64_t(seqs) * per_seq, bs, kv_heads, hd});
        auto noise = random_bf16(size_t(per_seq) * bs * kv_heads * hd, 5, 1.f);
        for (int s = 0; s < seqs; ++s) {
          check(cudaMemcpy(static_cast<uint16_t*>(kvl.k.data) + size_t(s) * noise.size(), noise.data(), noise.size() * 2,
                           cudaMemcpyHostToDevice), "fill");
          check(cudaMemcpy(static_cast<uint16_t*>(kvl.v.data) + size_t(s) * noise.size(), noise.data(), noise.size() * 2,
                           cudaMemcpyHostToDevice), "fill");
        }
        const int n = seqs * q_len;
        auto qn = random_bf16(size_t(n) * heads * hd, 6, 1.f);
        const rill::Tensor q = backend->upload_weight(host_view(qn, {n, heads * hd}));
        const rill::Tensor o = backend->alloc(rill::DType::BF16, {n, heads * hd});
        std::vector<int32_t> q_start, ctx_len, tables, token_seq;
        for (int s = 0; s <= seqs; ++s) q_start.push_back(s * q_len);
        for (int s = 0; s < seqs; ++s) {
          ctx_len.push_back(ctx);
          for (int b = 0; b < per_seq; ++b) tables.push_back(s * per_seq + b);
          for (int t = 0; t < q_len; ++t) token_seq.push_back(s);
        }
        auto up = [&](const std::vector<int32_t>& v) {
          rill::Tensor t = backend->alloc(rill::DType::I32, {int64_t(v.size())});
          backend->write(t, v.data(), v.size() * 4);
          return t;
        };
        rill::AttentionBatch ab;
        ab.num_seqs = seqs;
        ab.num_tokens = n;
        ab.max_blocks_per_seq = per_seq;
        ab.q_start = up(q_start);
        ab.ctx_len = up(ctx_len);
        ab.block_tables = up(tables);
        ab.token_seq = up(token_seq);
        ab.max_q_len = q_len;
        ab.max_ctx_len = ctx;
        ab.host_q_len.assign(size_t(seqs), q_len);
        const float scale = 1.f / std::sqrt(float(hd));
        return time_events(stream, 3, repeats * 4, [&] { backend->attention(o, q, kvl, ab, int(heads), scale, 0); });
      };
      for (int ctx : decode_ctx) {  // other context lengths first (4096 is the figure, below)
        if (ctx == 4096) continue;
        if (ctx <= 0 || ctx % 16 != 0)
          throw rill::Error("--decode-ctx: " + std::to_string(ctx) + " is not a positive multiple of 16");
        const double t = bench_attention(64, ctx, 1), bytes = 2.0 * 64 * ctx * kv_heads * hd * 2;
        j["attention"]["decode_64x" + std::to_string(ctx) + "_us"] = t * 1e6;
        std::printf("attention decode 64 x %-5d        %8.1f us   (%.0f GB/s of K+V)\n", ctx, t * 1e6,
                    bytes / t / 1e9);
      }
      const double td = bench_attention(64, 4096, 1);
      const double kv_read = 2.0 * 64 * 4096 * kv_heads * hd * 2;
      const double tp = bench_attention(1, 4096, 4096);
      const double pf = 4.0 * hd * heads * 4096.0 * 4096.0 / 2.0;
      j["attention"]["decode_64x4096_us"] = td * 1e6;
      j["attention"]["decode_GBps"] = kv_read / td / 1e9;
      j["attention"]["prefill_4096_ms"] = tp * 1e3;
      j["attention"]["prefill_TFLOPs"] = pf / tp / 1e12;
      std::printf("attention decode 64 x 4096       %8.1f us   (%.0f GB/s of K+V)\n", td * 1e6, kv_read / td / 1e9);
      std::printf("attention prefill 4096 causal    %8.2f ms   (%.0f TFLOP/s)\n", tp * 1e3, pf / tp / 1e12);
    }
    if (want("sampling")) {
      // Picking tokens from 128256-entry logits rows: on the device (argmax; the sampler with its filters) and
      // the way it went before, reading the logits back and sampling each row on the host.
      nlohmann::ordered_json js;
      for (int rows : {1, 64}) {
        std::vector<float> host(size_t(rows) * size_t(vocab));
        std::mt19937 rng{uint32_t(rows)};
        std::normal_distribution<float> nd(0.f, 3.f);
        for (float& x : host) x = nd(rng);
        const rill::Tensor logits = backend->alloc(rill::DType::F32, {rows, vocab});
        const rill::Tensor ids = backend->alloc(rill::DType::I32, {rows});
        backend->write(logits, host.data(), host.size() * 4);
        auto params = [&](float t, int k, float p, float mp) {
          std::vector<rill::SampleRow> v(static_cast<size_t>(rows));
          for (auto& r : v) r.params.temperature = t, r.params.top_k = k, r.params.top_p = p, r.params.min_p = mp, r.uniform = 0.37;
          rill::Tensor dev = backend->alloc(rill::DType::U8, {rows * int64_t(sizeof(rill::SampleRow))});
          backend->write(dev, v.data(), dev.nbytes());
          return std::make_pair(v, dev);
        };
        const auto filtered = params(0.8f, 50, 0.95f, 0.f), full = params(1.f, 0, 1.f, 0.f);
        const auto nucleus = params(0.7f, 0, 0.9f, 0.05f);
        const double t_arg = time_events(stream, 3, repeats * 4, [&] { backend->argmax_rows(ids, logits); });
        auto dev_time = [&](const rill::Tensor& p) {
          return time_events(stream, 3, repeats * 4, [&] { backend->sample_rows(ids, logits, p, rill::Tensor{}); });
        };
        const double t_f = dev_time(filtered.second), t_full = dev_time(full.second), t_n = dev_time(nucleus.second);
        std::vector<double> host_t;
        std::vector<float> back(host.size());
        for (int r = 0; r < repeats; ++r) {
          const auto t0 = Clock::now();
          backend->read(back.data(), logits, back.size() * 4);
          for (int i = 0; i < rows; ++i)
            rill::sample_row(back.data() + size_t(i) * size_t(vocab), int(vocab), filtered.first[size_t(i)], nullptr);
          host_t.push_back(seconds(t0, Clock::now()));
        }
        const double t_host = median(host_t);
        js["rows_" + std::to_string(rows)] = {{"argmax_us", t_arg * 1e6}, {"top_k50_top_p95_us", t_f * 1e6},
                                              {"full_distribution_us", t_full * 1e6},
                                              {"top_p90_min_p05_us", t_n * 1e6},
                                              {"host_readback_and_sample_us", t_host * 1e6}};
        std::printf("sampling %2d x %lld: argmax %.0f us; device top-k/top-p %.0f us, full %.0f us, top-p/min-p %.0f us;"
                    " host read-back + sample %.0f us\n",
                    rows, (long long)vocab, t_arg * 1e6, t_f * 1e6, t_full * 1e6, t_n * 1e6, t_host * 1e6);
      }
      j["sampling"] = js;
    }
    if (!out.empty()) std::ofstream(out) << j.dump(2) << "\n";
  } catch (const std::exception& e) {
    std::fprintf(stderr, "gpu_bench: %s\n", e.what());
    return 1;
  }
  return 0;
}
