#include "cli/model_loading.h"

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>

#include "core/error.h"
#include "formats/checkpoint.h"
#include "template/chat_template.h"
#include "tokenizer/hf_tokenizer.h"
#include "tokenizer/llama2c_tokenizer.h"

namespace rill::cli {
namespace fs = std::filesystem;

std::string model_dir(const std::string& model_path) {
  return fs::is_directory(model_path) ? model_path : fs::path(model_path).parent_path().string();
}

ChatSetup open_chat(const std::string& model_path, const std::string& override_path) {
  ChatSetup s;
  const fs::path cfg = fs::path(model_dir(model_path)) / "tokenizer_config.json";
  if (fs::exists(cfg)) {
    const ChatConfig c = read_chat_config(cfg.string());
    s.template_source = c.chat_template;
    s.bos_token = c.bos_token;
    s.eos_token = c.eos_token;
  }
  if (!override_path.empty()) {
    std::ifstream in(override_path);
    RILL_CHECK(in, override_path + ": cannot open chat template");
    s.template_source.assign(std::istreambuf_iterator<char>(in), {});
  }
  RILL_CHECK(!s.template_source.empty(),
             model_path + ": no chat template (tokenizer_config.json has none); pass --chat-template FILE");
  return s;
}

std::vector<int32_t> end_of_turn_ids(const ChatSetup& chat, const Tokenizer& tokenizer) {
  if (chat.eos_token.empty()) return {};
  const auto ids = tokenizer.encode(chat.eos_token, false);
  return ids.size() == 1 ? ids : std::vector<int32_t>{};
}

std::unique_ptr<Tokenizer> open_tokenizer(const std::string& model_path, const std::string& explicit_path,
                                          const ModelConfig* config) {
  std::string path = explicit_path;
  if (path.empty() || fs::is_directory(path)) {
    const fs::path dir = !path.empty() ? fs::path(path)
                         : fs::is_directory(model_path) ? fs::path(model_path)
                                                        : fs::path(model_path).parent_path();
    path.clear();
    for (const char* name : {"tokenizer.json", "tokenizer.bin"})
      if (fs::exists(dir / name)) {
        path = (dir / name).string();
        break;
      }
    if (path.empty() && !explicit_path.empty()) throw Error(explicit_path + ": no tokenizer.json or tokenizer.bin there");
  }
  if (path.empty()) return nullptr;
  RILL_CHECK(fs::exists(path), path + ": no such tokenizer file");
  if (fs::path(path).extension() == ".bin") return Llama2cTokenizer::load(path, config ? config->vocab_size : 0);
  auto tok = HfTokenizer::load(path);
  RILL_CHECK(!config || tok->vocab_size() <= config->vocab_size,
             path + ": the tokenizer has " + std::to_string(tok->vocab_size()) + " tokens but the model only " +
                 std::to_string(config->vocab_size));
  return tok;
}

std::string LoadTimes::describe(size_t weight_bytes) const {
  char buf[256];
  const double gb = double(weight_bytes) / 1e9;
  if (mapped)
    std::snprintf(buf, sizeof buf, "checkpoint %.2f s, device %.2f s, weights %.2f s (%.2f GB mapped), tokenizer %.2f s",
                  checkpoint, device, weights, gb, tokenizer);
  else
    std::snprintf(buf, sizeof buf,
                  "checkpoint %.2f s, device %.2f s, weights %.2f s (%.2f GB, %.2f GB/s), tokenizer %.2f s",
                  checkpoint, device, weights, gb, weights > 0 ? gb / weights : 0.0, tokenizer);
  return buf;
}

std::string describe_warm_up(const WarmUpReport& w, Backend& backend) {
  char buf[160];
  std::snprintf(buf, sizeof buf, "warm-up %.2f s (%d steps: prompt chunks %.2f s, decode %.2f s, %d graphs)",
                w.seconds, w.steps, w.prompt_seconds, w.decode_seconds, w.graphs);
  std::string s = buf;
  const std::string tuning = backend.tuning_summary();
  if (!tuning.empty()) s += "; " + tuning;
  return s;
}

LoadedModel load_model(const std::string& path, const DeviceArgs& device, const std::string& tokenizer_path) {
  LoadedModel m;
  using clock = std::chrono::steady_clock;
  auto t = clock::now();
  auto lap = [&t] {
    const auto now = clock::now();
    const double s = std::chrono::duration<double>(now - t).count();
    t = now;
    return s;
  };
  const Checkpoint ck = read_checkpoint(path);
  m.times.checkpoint = lap();
  m.backend = make_backend(device.device, device.threads, device.dtype);
  if (!device.tuning_cache.empty()) m.backend->set_tuning_cache(device.tuning_cache);
  m.times.device = lap();
  m.model = std::make_unique<Model>(ck, *m.backend);
  m.backend->synchronize();
  m.times.weights = lap();
  m.times.mapped = m.backend->device() == Device::CPU;
  m.tokenizer = open_tokenizer(path, tokenizer_path, &m.model->config());
  // Padding rows past the tokenizer (as in Qwen2.5's 151936 for 151665 tokens) are never sampled.
  if (m.tokenizer && m.tokenizer->vocab_size() < m.model->config().vocab_size)
    m.model->limit_vocab(m.tokenizer->vocab_size());
  m.times.tokenizer = lap();
  return m;
}

SpecConfig load_speculation(const SpecArgs& args, const std::string& model_path, Model& target,
                            const Tokenizer* target_tokenizer, std::unique_ptr<Model>* draft) {
  SpecConfig spec;
  spec.method = parse_spec_method(args.draft_model.empty() || args.method != "none" ? args.method : "draft");
  spec.max_batch = args.max_batch;
  // Default K: 4, or fewer where K + 1 tokens x the query heads per KV head would outgrow the GPU decode attention
  // kernel's 16-row tile (Llama-3-8B's 4: K 3), past which a verification costs several decode steps.
  const int group = std::max(1, target.config().num_heads / std::max(1, target.config().num_kv_heads));
  spec.tokens = args.tokens > 0 ? args.tokens : std::clamp(16 / group - 1, 1, 4);
  if (spec.method == SpecMethod::Draft) {
    std::string dir = args.draft_model;
    if (dir.empty()) {
      std::string base = model_path;
      while (base.size() > 1 && base.back() == '/') base.pop_back();
      dir = base + "-draft";
      RILL_CHECK(std::filesystem::exists(dir + "/config.json"),
                 "--spec draft: no --draft-model given, and there is no " + dir + " beside the model");
    }
    // The draft must speak the model's tokens: the same tokenizer (when both have one), and then an embedding
    // table at least that large (a padded one is limited as the model's is).
    const std::unique_ptr<Tokenizer> draft_tok = open_tokenizer(dir, "", nullptr);
    if (target_tokenizer && draft_tok) {
      RILL_CHECK(draft_tok->vocab_size() == target_tokenizer->vocab_size(),
                 "--draft-model " + dir + ": its tokenizer has " + std::to_string(draft_tok->vocab_size()) +
                     " tokens; the model's has " + std::to_string(target_tokenizer->vocab_size()) +
                     " (a draft must share the model's tokenizer)");
      const std::vector<std::string> a = draft_tok->token_bytes(), b = target_tokenizer->token_bytes();
      const auto diff = std::mismatch(a.begin(), a.end(), b.begin(), b.end());
      RILL_CHECK(diff.first == a.end(), "--draft-model " + dir + ": its tokenizer differs from the model's at token " +
                                            std::to_string(diff.first - a.begin()) +
                                            " (a draft must share the model's tokenizer)");
    }
    *draft = std::make_unique<Model>(read_checkpoint(dir), target.backend());
    const int vocab = target.config().vocab_size;
    if (draft_tok && (*draft)->config().vocab_size > vocab && draft_tok->vocab_size() <= vocab)
      (*draft)->limit_vocab(vocab);  // padded past the tokenizer
    spec.draft = draft->get();
  }
  spec.validate(target.config().vocab_size);
  return spec;
}

std::string describe_spec_metrics(const EngineMetrics& m) {
  if (m.spec_steps == 0) return "";
  char buf[400];
  std::snprintf(buf, sizeof buf,
                "speculation: %lld of %lld drafts accepted (%.0f%%), %.2f tokens per verification; %.3f s "
                "proposing, %.3f s in %lld steps (%lld replayed graphs; the draft's %lld)",
                (long long)m.spec_accepted, (long long)m.spec_proposed,
                m.spec_proposed ? 100.0 * double(m.spec_accepted) / double(m.spec_proposed) : 0.0,
                double(m.spec_emitted) / double(m.spec_steps), m.propose_seconds, m.run_seconds, (long long)m.steps,
                (long long)m.graph_replays, (long long)m.draft_graph_replays);
  return buf;
}

std::string describe_speculation(const SpecConfig& spec, const SpecArgs& args) {
  if (spec.method == SpecMethod::None) return "";
  std::string s = std::string("speculative decoding: ") + spec_method_name(spec.method) + ", up to " +
                  std::to_string(spec.tokens) + " draft tokens per step at batches up to " +
                  std::to_string(spec.max_batch);
  if (spec.draft)
    s += ", draft model " + (args.draft_model.empty() ? std::string("beside the model") : args.draft_model) + " (" +
         std::to_string(spec.draft->weight_bytes() >> 20) + " MiB)";
  return s;
}

}  // namespace rill::cli
