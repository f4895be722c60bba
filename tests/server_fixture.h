// A tiny random model with a real tokenizer and chat template behind rill's HTTP server, in-process on a free
// loopback port, with helpers to call it (server_test, server_soak_test).
#pragma once

#include <csignal>

#include <httplib.h>

#include <chrono>
#include <filesystem>
#include <memory>
#include <sstream>
#include <thread>

#include "backend/backend.h"
#include "cli/model_loading.h"
#include "engine/engine.h"
#include "grammar/matcher.h"
#include "server/http_server.h"
#include "server/structured.h"
#include "test_util.h"
#include "tokenizer/hf_tokenizer.h"

namespace rill::test {

using json = nlohmann::ordered_json;

struct Fixture {
  TempDir dir;
  std::unique_ptr<Backend> backend;
  std::unique_ptr<Model> model;
  std::unique_ptr<Tokenizer> tok;
  std::unique_ptr<ChatTemplate> tmpl;
  std::unique_ptr<Engine> engine;
  std::unique_ptr<HttpServer> server;
  std::thread thread;
  openai::ModelInfo info;

  // ready = false: the server starts as `rill serve` does while it loads the model, and ready() ends that.
  explicit Fixture(EngineConfig ec = {}, ServerConfig sc = {}, bool ready = true) {
    // The tests' HTTP clients write bodies the server refuses and closes on (a 413 mid-upload): a write after that
    // must be an error for the client, not a SIGPIPE that kills the test process (seen in CI: ErrorsAreOpenAiShaped).
    std::signal(SIGPIPE, SIG_IGN);
    const std::string tok_dir = shared("data/tokenizers/qwen2-style");
    const std::string m = dir / "m";
    if (std::system(
            (make_random_model_bin() + " --out " + m +
             " --dim 32 --layers 2 --heads 4 --ffn 64 --vocab 16022 --dtype f32 --context 512 > /dev/null")
                .c_str()) != 0)
      throw std::runtime_error("make_random_model failed");
    for (const char* f : {"tokenizer.json", "tokenizer_config.json"})
      std::filesystem::copy_file(tok_dir + "/" + f, m + "/" + f);
    backend = make_cpu_backend(2);
    model = std::make_unique<Model>(read_checkpoint(m), *backend);
    tok = HfTokenizer::load(m + "/tokenizer.json");
    const auto chat = cli::open_chat(m, "");
    tmpl = std::make_unique<ChatTemplate>(chat.template_source);
    if (ec.num_blocks == 0) ec.num_blocks = 512;
    engine = std::make_unique<Engine>(*model, ec);
    info.name = "tiny";
    info.tokenizer = tok.get();
    info.chat_template = tmpl.get();
    info.bos_token = chat.bos_token;
    info.eos_token = chat.eos_token;
    info.max_model_len = engine->max_model_len();
    std::vector<std::string> bytes = tok->token_bytes();  // constrained decoding, as `rill serve` sets it up
    bytes.resize(size_t(model->config().vocab_size));
    info.vocab = std::make_shared<grammar::Vocabulary>(std::move(bytes), model->config().eos_token_ids);
    info.grammars = std::make_shared<openai::GrammarCache>();
    sc.port = 0;
    if (ready) {
      server = std::make_unique<HttpServer>(*engine, info, sc);
    } else {
      sc.threads = ec.max_num_seqs + 16;
      server = std::make_unique<HttpServer>(sc);
    }
    server->bind();
    thread = std::thread([this] { server->serve(); });
  }
  void make_ready() { server->ready(*engine, info); }
  ~Fixture() {
    engine->shutdown();
    server->stop();
    thread.join();
  }
  httplib::Client client() {
    httplib::Client c("127.0.0.1", server->port());
    c.set_read_timeout(60, 0);
    return c;
  }
  json post(const std::string& path, const json& body, int* status = nullptr, httplib::Headers headers = {}) {
    auto c = client();
    auto r = c.Post(path.c_str(), headers, body.dump(), "application/json");
    if (!r) throw std::runtime_error("no response");
    if (status) *status = r->status;
    return json::parse(r->body);
  }
  // The data: payloads of an SSE response.
  std::vector<std::string> stream(const std::string& path, const json& body) {
    auto c = client();
    std::string raw;
    auto r = c.Post(path.c_str(), body.dump(), "application/json");
    if (!r) throw std::runtime_error("no response: " + httplib::to_string(r.error()));
    std::vector<std::string> events;
    std::istringstream in(r->body);
    std::string line;
    while (std::getline(in, line))
      if (line.rfind("data: ", 0) == 0) events.push_back(line.substr(6));
    return events;
  }
  int blocks_used() {
    for (int i = 0; i < 400; ++i) {
      const EngineMetrics m = engine->metrics();
      if (m.running == 0 && m.waiting == 0) return m.blocks_total - m.blocks_free;
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    return -1;
  }
};

inline bool have_fixtures() {
  return std::filesystem::exists(shared("data/tokenizers/qwen2-style"));
}

}  // namespace rill::test
