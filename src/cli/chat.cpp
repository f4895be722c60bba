// rill chat: a terminal conversation held in one streaming session (a KvStream): each turn feeds only what the
// chat template adds (the new user message and the generation prompt), then streams the answer, whose tokens
// stay in the session. Under the default sink KV policy the conversation never runs out of context.
// Commands: /reset starts over, /exit (or end of input) quits.
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <iostream>
#include <nlohmann/json.hpp>

#include "backend/backend.h"
#include "cli/commands.h"
#include "cli/model_loading.h"
#include "core/error.h"
#include "engine/kv_stream.h"
#include "engine/sampler.h"
#include "model/model.h"
#include "template/chat_template.h"

namespace rill::cli {

Run add_chat(CLI::App& app) {
  struct Args {
    std::string model, tokenizer, chat_template, system, device = "auto", dtype = "auto";
    int n = 512, threads = 0, context = 0;
    SamplingArgs sampling;
    KvPolicyArgs kv;
  };
  auto a = std::make_shared<Args>();
  a->sampling.params.temperature = 0.7f;
  add_model_option(app, a->model, "Model directory (with tokenizer.json and tokenizer_config.json)");
  app.add_option("--tokenizer", a->tokenizer, "tokenizer.json (default: beside the model)");
  app.add_option("--chat-template", a->chat_template, "Jinja template file to use instead of the model's");
  app.add_option("--system", a->system, "System prompt");
  app.add_option("-n,--max-tokens", a->n, "Most tokens per answer")->check(CLI::PositiveNumber);
  app.add_option("--context", a->context, "KV cache size in tokens (default: the model's maximum)")->check(CLI::PositiveNumber);
  add_device_option(app, a->device, a->dtype);
  app.add_option("--threads", a->threads, "CPU threads (0: all cores)")->check(CLI::NonNegativeNumber);
  add_sampling_options(app, a->sampling);
  a->kv.policy = "sink";
  add_kv_policy_options(app, a->kv);
  return [a] {
    a->model = model_or_default(a->model);
    const SamplingParams sampling = a->sampling.finish();
    Checkpoint ck = read_checkpoint(a->model);
    auto backend = make_backend(a->device, a->threads, a->dtype);
    Model model(ck, *backend);
    auto tok = open_tokenizer(a->model, a->tokenizer, &model.config());
    RILL_CHECK(tok, a->model + ": chat needs a tokenizer (tokenizer.json beside the model, or --tokenizer)");
    const ChatSetup chat = open_chat(a->model, a->chat_template);
    const ChatTemplate tmpl(chat.template_source);
    std::vector<int32_t> stops = model.config().eos_token_ids;
    if (!chat.eos_token.empty()) {
      const auto eos = tok->encode(chat.eos_token, false);
      if (eos.size() == 1) stops.push_back(eos[0]);
    }
    const KvPolicy policy = a->kv.finish(model.config(), 16);
    const int context = a->context > 0 ? a->context : model.config().max_position_embeddings;
    const int blocks = policy.rolling() ? SinkWindowState::max_blocks(policy, 16) : (context + 15) / 16;
    KvCache kv(*backend, model.config(), blocks, 16);

    nlohmann::ordered_json messages = nlohmann::ordered_json::array();
    if (!a->system.empty()) messages.push_back({{"role", "system"}, {"content", a->system}});
    auto render = [&](bool generation_prompt) {
      return tmpl.render({{"messages", messages}, {"tools", nullptr}, {"documents", nullptr},
                          {"add_generation_prompt", generation_prompt}, {"bos_token", chat.bos_token},
                          {"eos_token", chat.eos_token}});
    };
    std::unique_ptr<KvStream> session;
    std::string fed;  // the template text the session holds so far
    std::vector<float> logits;
    auto restart = [&] {
      session = std::make_unique<KvStream>(model, kv, policy, 512);
      fed.clear();
    };
    restart();
    const bool interactive = isatty(STDIN_FILENO);
    std::string line;
    for (;;) {
      if (interactive) std::fprintf(stderr, "> ");
      if (!std::getline(std::cin, line) || line == "/exit") break;
      if (line == "/reset") {
        messages.erase(messages.begin() + (a->system.empty() ? 0 : 1), messages.end());
        restart();
        continue;
      }
      if (line.empty()) continue;
      messages.push_back({{"role", "user"}, {"content", line}});
      const std::string text = render(true);
      // Feed what the template added since the last turn; a template whose renderings are not prefixes of one
      // another restarts the session from the whole conversation.
      if (text.compare(0, fed.size(), fed) != 0) restart();
      const auto delta = tok->encode(text.substr(fed.size()), false);
      if (!policy.rolling() && session->length() + int64_t(delta.size()) + a->n > context) {
        std::fprintf(stderr, "rill: the conversation (%lld tokens) plus an answer would exceed the context (%d); "
                     "/reset to start over, or use --kv-policy sink\n", (long long)(session->length() + delta.size()), context);
        messages.erase(messages.end() - 1);
        continue;
      }
      session->feed(delta, Logits::Last, &logits);
      fed = text;
      Sampler sampler(sampling);
      IncrementalDecoder detok(*tok, /*skip_special=*/true, delta);
      std::string answer;
      int32_t last = -1;
      for (int i = 0; i < a->n; ++i) {
        last = sampler.sample(logits.data(), model.config().vocab_size);
        session->feed({last}, Logits::Last, &logits);  // the answer stays in the session
        if (std::find(stops.begin(), stops.end(), last) != stops.end()) break;
        const std::string piece = detok.add(last);
        answer += piece;
        std::fwrite(piece.data(), 1, piece.size(), stdout);
        std::fflush(stdout);
      }
      const std::string rest = detok.finish();
      answer += rest;
      std::printf("%s\n", rest.c_str());
      std::fflush(stdout);
      messages.push_back({{"role", "assistant"}, {"content", answer}});
      // The template's text after the answer (e.g. "\n" after the end-of-turn token) goes in too.
      const std::string after = render(false);
      const std::string answered = fed + answer + (std::find(stops.begin(), stops.end(), last) != stops.end() ? chat.eos_token : "");
      if (after.compare(0, answered.size(), answered) == 0) {
        session->feed(tok->encode(after.substr(answered.size()), false), Logits::None, nullptr);
        fed = after;
      } else {
        fed = answered;  // the next turn's rendering will not extend it: the session restarts then
      }
    }
    return 0;
  };
}

}  // namespace rill::cli
