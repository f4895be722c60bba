// rill serve: the OpenAI-compatible server.
#include <signal.h>

#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <optional>
#include <sstream>
#include <thread>

#include "cli/commands.h"
#include "cli/model_loading.h"
#include "cli/options.h"
#include "core/error.h"
#include "core/strings.h"
#include "engine/engine.h"
#include "kv/kv_cache.h"
#include "server/http_server.h"
#include "template/chat_template.h"

namespace rill::cli {

Run add_serve(CLI::App& app) {
  struct Args {
    std::string model, tokenizer, chat_template, host = "127.0.0.1", served_name, kv_memory;
    std::vector<std::string> api_keys;
    double gpu_memory_fraction = 0.9;
    int port = 8000, block_size = kDefaultBlockSize, max_batch_tokens = 512, max_num_seqs = 64,
        max_waiting = 1024;
    int max_model_len = 0, max_sessions = 64, max_tokens_limit = openai::kDefaultMaxTokensLimit;
    DeviceArgs device;
    double session_ttl = 600, shutdown_timeout = 30, header_timeout = 10, write_timeout = 30,
           request_timeout = 0;
    size_t max_connections = 16384, max_connections_per_address = 0, max_sessions_per_key = 0;
    KvPolicyArgs kv;
    SpecArgs spec;
    size_t max_body = 16u << 20;
  };
  auto a = std::make_shared<Args>();
  if (const char* keys = std::getenv("RILL_API_KEY")) {
    std::stringstream list(keys);
    for (std::string k; std::getline(list, k, ',');)
      if (!k.empty()) a->api_keys.push_back(k);
  }
  add_model_option(app, a->model, "Model: a Hugging Face directory (with tokenizer.json) or a llama2.c .bin");
  app.add_option("--tokenizer", a->tokenizer, "tokenizer.json / tokenizer.bin (default: beside the model)");
  app.add_option("--chat-template", a->chat_template, "Jinja template file to use instead of the model's");
  app.add_option("--host", a->host, "Address to listen on");
  app.add_option("--port", a->port, "Port to listen on (0: any free port)")->check(CLI::Range(0, 65535));
  app.add_option(
      "--api-key", a->api_keys,
      "Require 'Authorization: Bearer KEY' on /v1 routes; give it again for more keys (also RILL_API_KEY, "
      "keys separated by commas). A session belongs to the key that made it");
  app.add_option("--max-sessions-per-key", a->max_sessions_per_key,
                 "Sessions one API key may hold at once (429 beyond; 0: no limit but --max-sessions)");
  app.add_option("--served-model-name", a->served_name,
                 "Model name in the API (default: the model path's last part)");
  add_device_options(app, a->device);
  add_warm_up_option(app, a->device);
  add_spec_options(app, a->spec);
  app.add_option(
      "--kv-cache-memory", a->kv_memory,
      "Memory for the KV cache: a size (2GiB, 512MiB) or a share of the memory available at start (40%). "
      "Default: 2GiB on the CPU; on a GPU, what --gpu-memory-fraction leaves");
  app.add_option(
         "--gpu-memory-fraction", a->gpu_memory_fraction,
         "Share of the GPU's memory rill may use in all (weights, activations, KV cache); the KV cache gets "
         "what the rest leaves")
      ->check(CLI::Range(0.05, 1.0));
  app.add_option("--block-size", a->block_size, "Tokens per KV cache block")->check(CLI::Range(1, 1024));
  app.add_option("--max-batch-tokens", a->max_batch_tokens,
                 "Token budget of one engine step (decodes + prefill chunks)")
      ->check(CLI::PositiveNumber);
  app.add_option("--max-num-seqs", a->max_num_seqs, "Most requests generating at once")
      ->check(CLI::PositiveNumber);
  app.add_option("--max-waiting", a->max_waiting, "Most requests queued before the server answers 503")
      ->check(CLI::PositiveNumber);
  app.add_option("--max-model-len", a->max_model_len,
                 "Context limit for prompt + max_tokens (0: the model's)")
      ->check(CLI::NonNegativeNumber);
  add_kv_policy_options(app, a->kv);
  app.get_option("--kv-policy")
      ->description(
          "KV cache policy for requests without a \"kv_policy\" field: dense (the context is bounded), sink "
          "(attention sinks + a window of the latest tokens: no context limit, constant memory), window (no "
          "sinks). "
          "Sessions use sink unless created with another");
  app.add_option("--max-sessions", a->max_sessions,
                 "Streaming sessions open at once (/v1/sessions; 503 beyond)")
      ->check(CLI::PositiveNumber);
  app.add_option("--session-ttl", a->session_ttl, "Seconds an idle session lives before it is deleted")
      ->check(CLI::PositiveNumber);
  app.add_option("--max-body-bytes", a->max_body,
                 "Largest request body accepted, chunked or not (413 beyond)");
  app.add_option(
         "--max-tokens-limit", a->max_tokens_limit,
         "Largest max_tokens a request or session generation may ask for (400 beyond); under the sink and "
         "window policies nothing else bounds it")
      ->check(CLI::PositiveNumber);
  app.add_option("--shutdown-timeout", a->shutdown_timeout,
                 "Seconds running requests may go on after SIGTERM/SIGINT (new ones are refused, queued ones "
                 "get 503); "
                 "then they are cancelled, each ending with an error event, and the server exits")
      ->check(CLI::NonNegativeNumber);
  app.add_option(
         "--header-timeout", a->header_timeout,
         "Seconds a client has to send a request's headers (and an idle keep-alive connection lives); "
         "slow clients cost a socket, not a thread")
      ->check(CLI::PositiveNumber);
  app.add_option("--write-timeout", a->write_timeout,
                 "Seconds a client may go without reading its response before it is dropped (its request is "
                 "cancelled)")
      ->check(CLI::PositiveNumber);
  app.add_option(
         "--request-timeout", a->request_timeout,
         "Seconds a request may run before it is cancelled: a 504, or a stream ending with an error event "
         "(0: no limit)")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--max-connections", a->max_connections, "Open connections at most (503 beyond)")
      ->check(CLI::PositiveNumber);
  app.add_option("--max-connections-per-address", a->max_connections_per_address,
                 "Open connections from one client address at most (503 beyond; 0: no limit)");
  return [a] {
    a->model = model_or_default(a->model);
    // Signals are taken by one thread (below), not by whichever thread they land on.
    sigset_t signals;
    sigemptyset(&signals);
    sigaddset(&signals, SIGINT);
    sigaddset(&signals, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &signals, nullptr);
    std::signal(SIGPIPE, SIG_IGN);

    // The server listens at once and answers /health 503 {"status": "loading"} while the model loads and
    // warms up (on a thread of its own), then 200.
    ServerConfig sc;
    sc.host = a->host;
    sc.port = a->port;
    sc.api_keys = a->api_keys;
    sc.max_sessions_per_key = a->max_sessions_per_key;
    sc.max_body_bytes = a->max_body;
    sc.header_timeout_s = a->header_timeout;
    sc.write_timeout_s = a->write_timeout;
    sc.request_timeout_s = a->request_timeout;
    sc.max_connections = a->max_connections;
    sc.max_connections_per_address = a->max_connections_per_address;
    sc.threads = a->max_num_seqs + 16;
    HttpServer server(sc);
    server.bind();
    std::fprintf(
        stderr,
        "rill: listening on http://%s:%d while %s loads (GET /health answers 503 until it is ready)\n",
        a->host.c_str(), server.port(), a->model.c_str());
    const auto t_start = std::chrono::steady_clock::now();
    LoadedModel m;
    std::unique_ptr<Model> draft;  // --spec draft: outlives the engine (declared before it)
    std::unique_ptr<ChatTemplate> tmpl;
    std::unique_ptr<Engine> engine;
    std::atomic<Engine*> live_engine{nullptr};
    std::atomic<bool> loading{true};
    std::exception_ptr load_error;
    std::thread loader([&] {
      try {
        m = load_model(a->model, a->device, a->tokenizer);
        std::fprintf(stderr, "rill: loaded %s: %s\n", a->model.c_str(),
                     m.times.describe(m.model->weight_bytes()).c_str());
        Model& model = *m.model;
        Backend& backend = *m.backend;
        // A draft model's weights are on the device before the KV cache is sized, and its cache shares the room.
        const SpecConfig spec = load_speculation(a->spec, a->model, model, m.tokenizer.get(), &draft);
        if (spec.method != SpecMethod::None)
          std::fprintf(stderr, "rill: %s\n", describe_speculation(spec, a->spec).c_str());
        size_t free_bytes = 0, total_bytes = 0;
        const bool device_memory = backend.memory_info(&free_bytes, &total_bytes);
        std::optional<size_t> kv_bytes;
        if (!a->kv_memory.empty()) {
          kv_bytes = parse_memory_size(a->kv_memory, device_memory ? free_bytes : available_system_memory());
          RILL_CHECK(kv_bytes, "--kv-cache-memory: '" + a->kv_memory +
                                   "' is not a size (e.g. 2GiB, 512MiB, 1000000, 40%)");
        } else if (!device_memory) {
          kv_bytes = size_t(2) << 30;
        } else {
          // The weights are loaded: the KV cache gets what --gpu-memory-fraction allows beyond what is in use
          // now.
          kv_bytes = kv_bytes_on_device(model.config(), free_bytes, total_bytes, a->gpu_memory_fraction,
                                        a->max_batch_tokens, a->max_num_seqs);
          RILL_CHECK(*kv_bytes > 0, "--gpu-memory-fraction " + std::to_string(a->gpu_memory_fraction) +
                                        ": the model leaves no room for a KV cache (" +
                                        std::to_string((total_bytes - free_bytes) >> 20) + " MiB in use of " +
                                        std::to_string(total_bytes >> 20) + " MiB)");
        }
        RILL_CHECK(
            m.tokenizer,
            a->model + ": serving needs a tokenizer (tokenizer.json beside the model, or --tokenizer)");
        const Tokenizer& tok = *m.tokenizer;
        openai::ModelInfo info;
        try {
          const ChatSetup chat = open_chat(a->model, a->chat_template);
          tmpl = std::make_unique<ChatTemplate>(chat.template_source);
          info.bos_token = chat.bos_token;
          info.eos_token = chat.eos_token;
          info.stop_ids = end_of_turn_ids(chat, tok);
          info.tool_style = openai::tool_style_of(chat.template_source);
        } catch (const Error& e) {
          if (!a->chat_template.empty()) throw;
          std::fprintf(stderr, "rill: no chat template (%s): /v1/chat/completions is off\n", e.what());
        }
        EngineConfig ec;
        ec.block_size = a->block_size;
        if (spec.draft) {  // the draft's cache has as many blocks as the model's
          const double own = double(KvCache::bytes_per_token(model.config(), backend.kv_dtype()));
          const double theirs = double(KvCache::bytes_per_token(spec.draft->config(), backend.kv_dtype()));
          *kv_bytes = size_t(double(*kv_bytes) * own / (own + theirs));
        }
        ec.num_blocks =
            KvCache::blocks_for_bytes(model.config(), *kv_bytes, a->block_size, backend.kv_dtype());
        RILL_CHECK(ec.num_blocks > 0,
                   (a->kv_memory.empty() ? "the KV cache's " + std::to_string(*kv_bytes >> 20) + " MiB"
                                         : "--kv-cache-memory " + a->kv_memory) +
                       " holds no KV block for this model");
        ec.max_batch_tokens = a->max_batch_tokens;
        ec.max_num_seqs = a->max_num_seqs;
        ec.max_waiting = a->max_waiting;
        ec.max_model_len = a->max_model_len;
        ec.max_sessions = a->max_sessions;
        ec.session_ttl_seconds = a->session_ttl;
        ec.warm_up = a->device.warm_up;
        ec.spec = spec;
        engine = std::make_unique<Engine>(model, ec);
        if (ec.warm_up) {
          std::fprintf(stderr, "rill: %s\n", describe_warm_up(engine->warm_up_report(), backend).c_str());
          backend.save_tuning();
        }

        std::string name = a->served_name;
        if (name.empty()) {
          std::string p = a->model;
          while (p.size() > 1 && p.back() == '/') p.pop_back();
          name = p.substr(p.find_last_of('/') + 1);
        }
        info.name = name;
        info.tokenizer = &tok;
        info.chat_template = tmpl.get();
        info.max_model_len = engine->max_model_len();
        info.block_size = a->block_size;
        info.max_tokens_limit = a->max_tokens_limit;
        {
          // Constrained decoding: each token's bytes, over the model's vocabulary (ids past the tokenizer's
          // have none).
          std::vector<std::string> bytes = tok.token_bytes();
          bytes.resize(size_t(model.config().vocab_size));
          std::vector<int32_t> ends;
          for (int id : model.config().eos_token_ids)
            if (id >= 0 && id < model.config().vocab_size) ends.push_back(id);
          for (int32_t id : info.stop_ids)
            if (id >= 0 && id < model.config().vocab_size &&
                std::find(ends.begin(), ends.end(), id) == ends.end())
              ends.push_back(id);
          info.vocab = std::make_shared<grammar::Vocabulary>(std::move(bytes), std::move(ends));
          info.grammars = std::make_shared<openai::GrammarCache>();
        }
        {
          ModelConfig limits = model.config();
          limits.max_position_embeddings = engine->max_model_len();
          info.default_kv_policy = a->kv.finish(limits, a->block_size);
        }
        server.ready(*engine, info);
        live_engine = engine.get();
        std::fprintf(
            stderr, "rill: ready in %.2f s: serving '%s' on http://%s:%d (%d KV blocks of %d tokens, %s)\n",
            std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count(), name.c_str(),
            a->host.c_str(), server.port(), ec.num_blocks, ec.block_size, backend.name().c_str());
        loading = false;
      } catch (...) {
        load_error = std::current_exception();
        loading = false;
        server.stop();
      }
    });
    std::atomic<bool> served{false};
    std::thread waiter([&] {
      int sig = 0;
      sigwait(&signals, &sig);
      if (served) return;
      std::fprintf(
          stderr,
          "rill: %s: refusing new requests; running ones may finish, and the server exits, within %gs\n",
          sig == SIGINT ? "SIGINT" : "SIGTERM", a->shutdown_timeout);
      auto stop_engine = [&] {
        if (Engine* e = live_engine.load()) e->shutdown();
      };
      const size_t cancelled = server.shutdown(a->shutdown_timeout, stop_engine);
      stop_engine();
      if (cancelled > 0)
        std::fprintf(stderr, "rill: cancelled %zu requests at the shutdown deadline\n", cancelled);
    });
    server.serve();
    // If serve() ended for another reason, wake the waiter from sigwait() (the signal is blocked, so it only
    // ends the wait): not a way of killing the thread.
    served = true;
    pthread_kill(waiter.native_handle(), SIGTERM);  // NOLINT(bugprone-bad-signal-to-kill-thread)
    waiter.join();
    if (loading) {
      // Stopped while the weights are still on their way: nothing is served yet, so nothing is lost by not
      // waiting for them.
      std::fprintf(stderr, "rill: exiting before the model finished loading\n");
      std::fflush(stderr);
      std::_Exit(0);
    }
    loader.join();
    if (load_error) std::rethrow_exception(load_error);
    return 0;
  };
}

}  // namespace rill::cli
