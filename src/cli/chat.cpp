// rill chat: a terminal conversation held in one streaming session of an Engine (as the server's /v1/sessions
// are): each turn appends only what the chat template adds (the new user message and the generation prompt),
// then streams the answer, whose tokens stay in the session. Under the default sink KV policy the conversation
// never runs out of context. Commands: /reset starts over, /exit (or end of input) quits.
#include <unistd.h>

#include <cstdio>
#include <iostream>
#include <limits>
#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "cli/model_loading.h"
#include "cli/options.h"
#include "core/error.h"
#include "engine/engine.h"
#include "template/chat_template.h"

namespace rill::cli {

namespace {

struct ChatArgs {
  std::string model, tokenizer, chat_template, system;
  int n = 512, context = 0;
  DeviceArgs device;
  SamplingArgs sampling;
  KvPolicyArgs kv;
  SpecArgs spec;
};

// Streams one answer to stdout and returns its text; `stopped` tells whether it ended with an end-of-turn token
// (which is not printed).
std::string stream_answer(RequestStream& stream, IncrementalDecoder& detok, bool* stopped) {
  std::string answer;
  int32_t held = -1;  // the latest token, printed once the next event shows it is not the end of the turn
  for (;;) {
    const Event e = *stream.next();
    if (held >= 0 && !(e.token < 0 && e.finish == FinishReason::Stop)) {
      const std::string piece = detok.add(held);
      answer += piece;
      std::fwrite(piece.data(), 1, piece.size(), stdout);
      std::fflush(stdout);
    }
    if (e.token >= 0) {
      held = e.token;
      continue;
    }
    RILL_CHECK(e.finish != FinishReason::Error, "generation failed: " + e.error);
    *stopped = e.finish == FinishReason::Stop;
    const std::string rest = detok.finish();
    std::printf("%s\n", rest.c_str());
    std::fflush(stdout);
    return answer + rest;
  }
}

int run_chat(const ChatArgs& a) {
  LoadedModel m = load_model(a.model, a.device, a.tokenizer);
  RILL_CHECK(m.tokenizer, a.model + ": chat needs a tokenizer (tokenizer.json beside the model, or --tokenizer)");
  const Tokenizer& tok = *m.tokenizer;
  const ChatSetup chat = open_chat(a.model, a.chat_template);
  const ChatTemplate tmpl(chat.template_source);
  EngineConfig ec;
  const KvPolicy policy = a.kv.finish(m.config(), ec.block_size);
  const int context = a.context > 0 ? a.context : m.config().max_position_embeddings;
  ec.num_blocks = kv_blocks_for_sequence(policy, context, ec.block_size);
  ec.max_model_len = context;
  ec.max_num_seqs = 1;
  ec.max_sessions = 1;
  ec.session_ttl_seconds = std::numeric_limits<double>::infinity();
  ec.warm_up = a.device.warm_up;
  std::unique_ptr<Model> draft;
  ec.spec = load_speculation(a.spec, a.model, *m.model, m.tokenizer.get(), &draft);
  if (ec.spec.method != SpecMethod::None) std::fprintf(stderr, "rill: %s\n", describe_speculation(ec.spec, a.spec).c_str());
  Engine engine(*m.model, ec);
  m.backend->save_tuning();

  Request answer_params;
  answer_params.sampling = a.sampling.finish();
  answer_params.max_tokens = a.n;
  answer_params.stop_ids = end_of_turn_ids(chat, tok);

  nlohmann::ordered_json messages = nlohmann::ordered_json::array();
  if (!a.system.empty()) messages.push_back({{"role", "system"}, {"content", a.system}});
  auto render = [&](bool generation_prompt) {
    return tmpl.render({{"messages", messages}, {"tools", nullptr}, {"documents", nullptr},
                        {"add_generation_prompt", generation_prompt}, {"bos_token", chat.bos_token},
                        {"eos_token", chat.eos_token}});
  };
  uint64_t session = engine.create_session(policy);
  std::string fed;  // the template text the session holds so far
  auto restart = [&] {
    engine.delete_session(session);
    session = engine.create_session(policy);
    fed.clear();
  };
  const bool interactive = isatty(STDIN_FILENO);
  std::string line;
  for (;;) {
    if (interactive) std::fprintf(stderr, "> ");
    if (!std::getline(std::cin, line) || line == "/exit") break;
    if (line == "/reset") {
      messages.erase(messages.begin() + (a.system.empty() ? 0 : 1), messages.end());
      restart();
      continue;
    }
    if (line.empty()) continue;
    messages.push_back({{"role", "user"}, {"content", line}});
    const std::string text = render(true);
    // Append what the template added since the last turn; a template whose renderings are not prefixes of one
    // another restarts the session from the whole conversation.
    if (text.compare(0, fed.size(), fed) != 0) restart();
    const auto delta = tok.encode(text.substr(fed.size()), false);
    const int64_t held = engine.session_status(session).tokens;
    if (!policy.is_sink_window() && held + int64_t(delta.size()) + a.n > context) {
      std::fprintf(stderr, "rill: the conversation (%lld tokens) plus an answer would exceed the context (%d); "
                   "/reset to start over, or use --kv-policy sink\n", (long long)(held + int64_t(delta.size())), context);
      messages.erase(messages.end() - 1);
      continue;
    }
    engine.append_session(session, delta);
    fed = text;
    IncrementalDecoder detok(tok, /*skip_special=*/true, delta);
    bool stopped = false;
    const std::string answer = stream_answer(*engine.generate_session(session, answer_params), detok, &stopped);
    messages.push_back({{"role", "assistant"}, {"content", answer}});
    // The template's text after the answer (e.g. "\n" after the end-of-turn token) goes in too.
    const std::string after = render(false);
    const std::string answered = fed + answer + (stopped ? chat.eos_token : "");
    if (after.compare(0, answered.size(), answered) == 0) {
      engine.append_session(session, tok.encode(after.substr(answered.size()), false));
      fed = after;
    } else {
      fed = answered;  // the next turn's rendering will not extend it: the session restarts then
    }
  }
  return 0;
}

}  // namespace

Run add_chat(CLI::App& app) {
  auto a = std::make_shared<ChatArgs>();
  a->sampling.params.temperature = 0.7f;
  add_model_option(app, a->model, "Model directory (with tokenizer.json and tokenizer_config.json)");
  app.add_option("--tokenizer", a->tokenizer, "tokenizer.json (default: beside the model)");
  app.add_option("--chat-template", a->chat_template, "Jinja template file to use instead of the model's");
  app.add_option("--system", a->system, "System prompt");
  app.add_option("-n,--max-tokens", a->n, "Most tokens per answer")->check(CLI::PositiveNumber);
  app.add_option("--context", a->context, "KV cache size in tokens (default: the model's maximum)")->check(CLI::PositiveNumber);
  add_device_options(app, a->device);
  add_warm_up_option(app, a->device);
  add_spec_options(app, a->spec);
  add_sampling_options(app, a->sampling);
  a->kv.policy = "sink";
  add_kv_policy_options(app, a->kv);
  return [a] {
    a->model = model_or_default(a->model);
    return run_chat(*a);
  };
}

}  // namespace rill::cli
