// rill chat: a terminal conversation. Each turn renders the whole conversation with the model's chat
// template and streams the answer. Commands: /reset starts over, /exit (or end of input) quits.
#include <unistd.h>

#include <cstdio>
#include <iostream>
#include <nlohmann/json.hpp>

#include "backend/backend.h"
#include "cli/commands.h"
#include "cli/model_loading.h"
#include "core/error.h"
#include "engine/generate.h"
#include "model/model.h"
#include "template/chat_template.h"

namespace rill::cli {

Run add_chat(CLI::App& app) {
  struct Args {
    std::string model, tokenizer, chat_template, system;
    int n = 512, threads = 0, context = 0;
    SamplingArgs sampling;
  };
  auto a = std::make_shared<Args>();
  a->sampling.params.temperature = 0.7f;
  add_model_option(app, a->model, "Model directory (with tokenizer.json and tokenizer_config.json)");
  app.add_option("--tokenizer", a->tokenizer, "tokenizer.json (default: beside the model)");
  app.add_option("--chat-template", a->chat_template, "Jinja template file to use instead of the model's");
  app.add_option("--system", a->system, "System prompt");
  app.add_option("-n,--max-tokens", a->n, "Most tokens per answer")->check(CLI::PositiveNumber);
  app.add_option("--context", a->context, "KV cache size in tokens (default: the model's maximum)")->check(CLI::PositiveNumber);
  app.add_option("--threads", a->threads, "CPU threads (0: all cores)")->check(CLI::NonNegativeNumber);
  add_sampling_options(app, a->sampling);
  return [a] {
    a->model = model_or_default(a->model);
    GenerateOptions opt;
    opt.sampling = a->sampling.finish();
    opt.max_new_tokens = a->n;
    Checkpoint ck = read_checkpoint(a->model);
    auto backend = make_cpu_backend(a->threads);
    Model model(ck, *backend);
    auto tok = open_tokenizer(a->model, a->tokenizer, &model.config());
    RILL_CHECK(tok, a->model + ": chat needs a tokenizer (tokenizer.json beside the model, or --tokenizer)");
    const ChatSetup chat = open_chat(a->model, a->chat_template);
    const ChatTemplate tmpl(chat.template_source);
    if (!chat.eos_token.empty()) {
      const auto eos = tok->encode(chat.eos_token, false);
      if (eos.size() == 1) opt.stop_ids.push_back(eos[0]);
    }
    const int context = a->context > 0 ? a->context : model.config().max_position_embeddings;
    KvCache kv(*backend, model.config(), (context + 15) / 16, 16);

    nlohmann::ordered_json messages = nlohmann::ordered_json::array();
    if (!a->system.empty()) messages.push_back({{"role", "system"}, {"content", a->system}});
    const bool interactive = isatty(STDIN_FILENO);
    std::string line;
    for (;;) {
      if (interactive) std::fprintf(stderr, "> ");
      if (!std::getline(std::cin, line) || line == "/exit") break;
      if (line == "/reset") {
        messages.erase(messages.begin() + (a->system.empty() ? 0 : 1), messages.end());
        continue;
      }
      if (line.empty()) continue;
      messages.push_back({{"role", "user"}, {"content", line}});
      const std::string prompt_text = tmpl.render({{"messages", messages},
                                                    {"tools", nullptr},
                                                    {"documents", nullptr},
                                                    {"add_generation_prompt", true},
                                                    {"bos_token", chat.bos_token},
                                                    {"eos_token", chat.eos_token}});
      const auto prompt = tok->encode(prompt_text, false);  // the template already holds BOS
      if (int(prompt.size()) + a->n > context) {
        std::fprintf(stderr, "rill: the conversation (%zu tokens) plus an answer would exceed the context (%d); "
                     "/reset to start over\n", prompt.size(), context);
        messages.erase(messages.end() - 1);
        continue;
      }
      IncrementalDecoder detok(*tok, /*skip_special=*/true, prompt);
      std::string answer;
      generate(model, kv, prompt, opt, [&](int32_t id) {
        const std::string delta = detok.add(id);
        answer += delta;
        std::fwrite(delta.data(), 1, delta.size(), stdout);
        std::fflush(stdout);
        return true;
      });
      const std::string rest = detok.finish();
      answer += rest;
      std::printf("%s\n", rest.c_str());
      std::fflush(stdout);
      messages.push_back({{"role", "assistant"}, {"content", answer}});
    }
    return 0;
  };
}

}  // namespace rill::cli
