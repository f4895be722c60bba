// rill perplexity: streams a text through the model under one or more KV policies and measures the negative
// log-likelihood of every next token: dense (the whole history), window (the latest tokens, no sinks), sink
// (attention sinks + a window of the latest tokens) and recompute (for each token, a fresh forward over the last sinks + window
// tokens, as a new prompt of them would be: the tokenizer's BOS first, then the latest tokens; the baseline of the
// StreamingLLM paper). Prints running and final perplexities and speeds, and writes
// per-token CSV and a PNG of log-perplexity against position (through gnuplot).
#include <chrono>
#include <algorithm>
#include <cmath>
#include <filesystem>
#include <cstdio>
#include <fstream>
#include <map>
#include <sstream>

#include "cli/commands.h"
#include "cli/model_loading.h"
#include "cli/options.h"
#include "core/error.h"
#include "kv/kv_cache.h"
#include "engine/scorer.h"

namespace rill::cli {

namespace {

struct PerplexityArgs {
  std::string model, tokenizer, text_file, policies = "dense,window,sink,recompute", csv, plot;
  int sinks = 4, window = 0, max_tokens = 0, chunk = 1, recompute_stride = 1, smooth = 256;
  DeviceArgs device;
};

struct PolicyRun {
  std::string name;
  std::vector<double> nll;  // per target position (NaN where not evaluated)
  double seconds = 0;
  int64_t evaluated = 0;
  int max_blocks = 0;
};

std::string fs_name(const std::string& p) {
  std::filesystem::path path = std::filesystem::path(p).lexically_normal();
  if (path.filename().empty()) path = path.parent_path();
  return path.filename().string();
}

double nll_of(const float* logits, size_t vocab, int32_t target) {
  const float mx = *std::max_element(logits, logits + vocab);
  double sum = 0;
  for (size_t i = 0; i < vocab; ++i) sum += std::exp(double(logits[i]) - mx);
  return std::log(sum) + mx - double(logits[target]);
}

double mean_finite(const std::vector<double>& v, const std::vector<double>* mask = nullptr) {
  double s = 0;
  int64_t n = 0;
  for (size_t i = 0; i < v.size(); ++i)
    if (std::isfinite(v[i]) && (!mask || std::isfinite((*mask)[i]))) s += v[i], ++n;
  return n ? s / double(n) : NAN;
}

int run_perplexity(const PerplexityArgs& a) {
  LoadedModel m = load_model(a.model, a.device, a.tokenizer);
  Model& model = *m.model;
  Backend& backend = *m.backend;
  const Tokenizer* tok = m.tokenizer.get();
  ModelRunner runner(model);
  RILL_CHECK(tok, a.model + ": perplexity needs a tokenizer (tokenizer.json beside the model, or --tokenizer)");
  std::ifstream in(a.text_file, std::ios::binary);
  RILL_CHECK(in, "--text-file: cannot read " + a.text_file);
  std::stringstream ss;
  ss << in.rdbuf();
  std::vector<int32_t> ids = tok->encode(ss.str(), true);
  if (a.max_tokens > 0 && int64_t(ids.size()) > a.max_tokens) ids.resize(size_t(a.max_tokens));
  RILL_CHECK(ids.size() >= 2, "--text-file: " + a.text_file + " holds fewer than 2 tokens");
  const int ctx = model.config().max_position_embeddings, bs = kDefaultBlockSize;
  const size_t vocab = size_t(model.config().vocab_size), targets = ids.size() - 1;

  KvPolicyArgs sink_args;
  sink_args.policy = "sink";
  sink_args.sinks = a.sinks;
  sink_args.window = a.window;
  const KvPolicy sink = sink_args.finish(model.config(), bs);
  KvPolicy window = sink;
  window.sinks = 0;
  const int span = sink.sinks + sink.window;  // tokens the sink-window policies and recompute see at most
  // The special tokens a fresh prompt starts with (BOS, for most tokenizers), when the text starts with them.
  const std::vector<int32_t> first = tok->encode("", true);
  const size_t prefix = first.size() < size_t(span) && first.size() <= ids.size() &&
                                std::equal(first.begin(), first.end(), ids.begin())
                            ? first.size()
                            : 0;
  std::fprintf(stderr, "rill: %zu tokens of %s; sinks %d, window %d (recompute: %sthe last %zu tokens); training context %d\n",
               ids.size(), a.text_file.c_str(), sink.sinks, sink.window, prefix ? "BOS and " : "", span - prefix, ctx);

  std::vector<PolicyRun> runs;
  std::vector<std::string> policy_names;
  {
    std::stringstream names(a.policies);
    std::string name;
    while (std::getline(names, name, ',')) {
      RILL_CHECK(name == "dense" || name == "window" || name == "sink" || name == "recompute",
                 "--policy: unknown policy '" + name + "' (expected dense, window, sink, recompute)");
      policy_names.push_back(name);
    }
  }
  for (const std::string& name : policy_names) {
    PolicyRun run;
    run.name = name;
    run.nll.assign(targets, NAN);
    std::vector<float> logits;
    const auto t0 = std::chrono::steady_clock::now();
    auto report = [&](size_t done) {
      if (done % 2000 < size_t(a.chunk) || done == targets)
        std::fprintf(stderr, "  %-9s %7zu / %zu tokens  ppl %.3f\n", name.c_str(), done, targets, std::exp(mean_finite(run.nll)));
    };
    if (name == "recompute") {
      KvCache kv(backend, model.config(), kv_blocks_for_sequence(KvPolicy{}, span, bs) + 1, bs);
      std::vector<int32_t> prompt;
      for (size_t t = 0; t < targets; t += size_t(a.recompute_stride)) {
        // The last `span` tokens as a fresh prompt: what a new request for them would be, so it starts with the
        // special tokens the tokenizer puts first (BOS), as the text did, and the rest are the latest tokens.
        const size_t head = t + 1 > size_t(span) ? prefix : 0;
        const size_t lo = t + 1 > size_t(span) - head ? t + 1 - (size_t(span) - head) : 0;
        prompt.assign(ids.begin(), ids.begin() + long(head));
        prompt.insert(prompt.end(), ids.begin() + long(std::max(lo, head)), ids.begin() + long(t) + 1);
        Scorer fresh(runner, kv, KvPolicy{}, 512);
        fresh.feed(prompt, Logits::Last, &logits);
        run.nll[t] = nll_of(logits.data(), vocab, ids[t + 1]);
        ++run.evaluated;
        run.max_blocks = std::max(run.max_blocks, fresh.blocks_held());
        report(t + 1);
      }
    } else {
      const KvPolicy p = name == "dense" ? KvPolicy{} : name == "sink" ? sink : window;
      KvCache kv(backend, model.config(), kv_blocks_for_sequence(p, int64_t(ids.size()), bs) + 1, bs);
      Scorer stream(runner, kv, p, std::max(1, a.chunk));
      for (size_t begin = 0; begin < targets; begin += size_t(a.chunk)) {
        const size_t end = std::min(targets, begin + size_t(a.chunk));
        stream.feed({ids.begin() + long(begin), ids.begin() + long(end)}, Logits::All, &logits);
        for (size_t t = begin; t < end; ++t) run.nll[t] = nll_of(logits.data() + (t - begin) * vocab, vocab, ids[t + 1]);
        run.evaluated += int64_t(end - begin);
        run.max_blocks = std::max(run.max_blocks, stream.blocks_held());
        report(end);
      }
    }
    run.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    runs.push_back(std::move(run));
  }

  // Summary: perplexity over all evaluated positions, and over the positions every policy evaluated (the
  // recompute stride's), so policies compare on the same tokens.
  const std::vector<double>* common = nullptr;
  for (const auto& r : runs)
    if (r.name == "recompute") common = &r.nll;
  const size_t kv_bytes_per_block = KvCache::bytes_per_token(model.config(), backend.kv_dtype()) * size_t(bs);
  std::printf("%-10s %9s %12s %14s %12s %12s %14s\n", "policy", "tokens", "perplexity", "ppl(common)", "tokens/s",
              "ms/token", "max KV MiB");
  for (const auto& r : runs) {
    std::printf("%-10s %9lld %12.3f %14.3f %12.1f %12.3f %14.2f\n", r.name.c_str(), (long long)r.evaluated,
                std::exp(mean_finite(r.nll)), std::exp(mean_finite(r.nll, common)), double(r.evaluated) / r.seconds,
                1000.0 * r.seconds / double(r.evaluated), double(r.max_blocks) * double(kv_bytes_per_block) / (1 << 20));
  }

  if (!a.csv.empty()) {
    std::ofstream out(a.csv);
    RILL_CHECK(out, "--csv: cannot write " + a.csv);
    out << "position,target";
    for (const auto& r : runs) out << ",nll_" << r.name;
    out << "\n";
    for (size_t t = 0; t < targets; ++t) {
      out << t + 1 << "," << ids[t + 1];
      for (const auto& r : runs) {
        out << ",";
        if (std::isfinite(r.nll[t])) out << r.nll[t];
      }
      out << "\n";
    }
  }
  if (!a.plot.empty()) {
    // Moving averages of the NLL (log-perplexity) over `smooth` evaluated tokens, one line per policy.
    const std::string dat = a.plot + ".dat", gp = a.plot + ".gp";
    {
      std::ofstream d(dat);
      for (size_t k = 0; k < runs.size(); ++k) {
        const auto& nll = runs[k].nll;
        std::vector<std::pair<size_t, double>> pts;
        for (size_t t = 0; t < targets; ++t)
          if (std::isfinite(nll[t])) pts.emplace_back(t + 1, nll[t]);
        const size_t w = std::max<size_t>(1, size_t(a.smooth) / size_t(runs[k].name == "recompute" ? a.recompute_stride : 1));
        double sum = 0;
        for (size_t i = 0; i < pts.size(); ++i) {
          sum += pts[i].second;
          if (i >= w) sum -= pts[i - w].second;
          if (i + 1 >= w || i + 1 == pts.size()) d << pts[i].first << " " << sum / double(std::min(w, i + 1)) << "\n";
        }
        d << "\n\n";
      }
      // Lower panel: perplexity so far, over the positions every policy was evaluated at (the text's own ups
      // and downs cancel between policies, so where one leaves another shows), from position `smooth` on.
      for (size_t k = 0; k < runs.size(); ++k) {
        double sum = 0;
        size_t n = 0;
        for (size_t t = 0; t < targets; ++t) {
          bool common = true;
          for (const auto& r : runs) common = common && std::isfinite(r.nll[t]);
          if (!common) continue;
          sum += runs[k].nll[t];
          ++n;
          if (t + 1 >= size_t(a.smooth)) d << t + 1 << " " << std::exp(sum / double(n)) << "\n";
        }
        d << "\n\n";
      }
    }
    std::ofstream g(gp);
    g << "set terminal pngcairo size 1200,1100 noenhanced\nset output '" << a.plot << "'\n"
      << "set multiplot layout 2,1 title '" << fs_name(a.model) << " on " << fs_name(a.text_file) << ": sinks "
      << sink.sinks << ", window " << sink.window << ", training context " << ctx << "'\n"
      << "set xlabel 'token position'\nset ylabel 'log perplexity (mean NLL over " << a.smooth << " tokens)'\n"
      << "set key top left\nset grid\nset yrange [0:*]\n"
      << "set arrow 1 from " << ctx << ", graph 0 to " << ctx << ", graph 1 nohead dt 2 lc rgb 'gray'\n"
      << "plot ";
    for (size_t k = 0; k < runs.size(); ++k)
      g << (k ? ", " : "") << "'" << dat << "' index " << k << " using 1:2 with lines lw 2 title '" << runs[k].name << "'";
    g << "\nset ylabel 'perplexity so far (positions every policy evaluated)'\nset logscale y\nset yrange [*:*]\nplot ";
    for (size_t k = 0; k < runs.size(); ++k)
      g << (k ? ", " : "") << "'" << dat << "' index " << runs.size() + k << " using 1:2 with lines lw 2 title '"
        << runs[k].name << "'";
    g << "\nunset multiplot\n";
    g.close();
    const int rc = std::system(("gnuplot '" + gp + "' 2>&1").c_str());
    if (rc != 0) std::fprintf(stderr, "rill: gnuplot failed (is it installed?); data in %s, script in %s\n", dat.c_str(), gp.c_str());
  }
  return 0;
}

}  // namespace

Run add_perplexity(CLI::App& app) {
  auto a = std::make_shared<PerplexityArgs>();
  add_model_option(app, a->model, "Model: a Hugging Face directory or a llama2.c .bin file");
  app.add_option("--tokenizer", a->tokenizer, "tokenizer.json or tokenizer.bin (default: beside the model)");
  app.add_option("--text-file", a->text_file, "Text to stream through the model")->required();
  app.add_option("--policy", a->policies,
                 "Comma-separated KV policies to compare: dense, window (the latest tokens, no sinks), sink (attention "
                 "sinks + a window of the latest tokens), recompute (for every token, a fresh forward over the last sinks + window "
                 "tokens as a new prompt: BOS first, if the tokenizer adds one, then the latest tokens)");
  app.add_option("--sinks", a->sinks, "Attention-sink tokens (sink policy)")->check(CLI::NonNegativeNumber);
  app.add_option("--window", a->window, "Latest tokens kept (0: 1024 or the model's context minus the sinks)")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--max-tokens", a->max_tokens, "Use the first N tokens of the text (0: all)")->check(CLI::NonNegativeNumber);
  app.add_option("--chunk", a->chunk, "Tokens per forward step for dense/window/sink (1: token by token, as a stream)")
      ->check(CLI::PositiveNumber);
  app.add_option("--recompute-stride", a->recompute_stride,
                 "Evaluate recompute at every Nth position only (it costs a whole window per token)")
      ->check(CLI::PositiveNumber);
  app.add_option("--csv", a->csv, "Write per-token NLL of every policy to this CSV file");
  app.add_option("--plot", a->plot, "Draw log-perplexity against position to this PNG (needs gnuplot)");
  app.add_option("--smooth", a->smooth, "Moving-average width of the plot, in tokens")->check(CLI::PositiveNumber);
  add_device_options(app, a->device);
  return [a] {
    a->model = model_or_default(a->model);
    return run_perplexity(*a);
  };
}

}  // namespace rill::cli
