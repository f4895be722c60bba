// The rill binary end to end: output formats, logit dumps, and clean failures (exit 1 with a message
// naming the cause, never a crash) on bad input.
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>

#include <array>
#include <chrono>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <thread>

#include "test_util.h"

namespace rill::test {
namespace {

struct Result {
  int status;
  std::string out;  // stdout and stderr together
};

// stdout and stderr together, or stdout alone when quiet_stderr.
Result run(const std::string& args, bool quiet_stderr = false) {
  const std::string cmd = std::string(RILL_BINARY) + " " + args + (quiet_stderr ? " 2>/dev/null" : " 2>&1");
  FILE* p = popen(cmd.c_str(), "r");
  std::string out;
  std::array<char, 4096> buf;
  size_t n;
  while ((n = fread(buf.data(), 1, buf.size(), p)) > 0) out.append(buf.data(), n);
  const int st = pclose(p);
  return {WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st), out};
}

const std::string kStories = "data/models/stories260K/stories260K.bin";

// A tiny random model in dir/m with the qwen2-style tokenizer and chat template (the output is noise).
std::string tiny_model_with_tokenizer(const TempDir& dir) {
  const std::string tok_dir = shared("data/tokenizers/qwen2-style");
  const std::string model = dir / "m";
  EXPECT_EQ(std::system((make_random_model_bin() + " --out " + model +
                         " --dim 16 --layers 1 --heads 2 --ffn 32 --vocab 16022 --dtype f32 > /dev/null").c_str()), 0);
  for (const char* f : {"tokenizer.json", "tokenizer_config.json"})
    std::filesystem::copy_file(tok_dir + "/" + f, model + "/" + f);
  return model;
}

TEST(Cli, GenerateJsonMatchesReference) {
  if (!std::filesystem::exists(shared(kStories))) GTEST_SKIP();
  const std::string args = "generate --model " + shared(kStories) + " --prompt-ids 1 -n 8 --temperature 0 --output json";
  const Result r = run(args, true);
  ASSERT_EQ(r.status, 0) << r.out;
  const auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["prompt_ids"], nlohmann::json({1}));
  EXPECT_EQ(j["ids"], nlohmann::json({461, 461, 401, 401, 401, 461, 378, 455}));
  EXPECT_NE(run(args).out.find("tok/s"), std::string::npos) << "timing line on stderr";
}

TEST(Cli, SeededSamplingIsReproducible) {
  if (!std::filesystem::exists(shared(kStories))) GTEST_SKIP();
  const std::string args = "generate --model " + shared(kStories) + " --prompt-ids 1,461 -n 30 --seed 5 --top-p 0.9 --output json";
  const Result a = run(args, true), b = run(args, true);
  ASSERT_EQ(a.status, 0) << a.out;
  EXPECT_EQ(a.out, b.out);
  EXPECT_NE(a.out, run("generate --model " + shared(kStories) + " --prompt-ids 1,461 -n 30 --seed 6 --top-p 0.9 --output json", true).out);
}

TEST(Cli, DumpLogits) {
  if (!std::filesystem::exists(shared(kStories))) GTEST_SKIP();
  TempDir dir;
  const Result r = run("generate --model " + shared(kStories) + " --prompt-ids 1,461,401 -n 0 --dump-logits " + (dir / "l.safetensors"));
  ASSERT_EQ(r.status, 0) << r.out;
  WeightMap m;
  read_safetensors(dir / "l.safetensors", &m);
  EXPECT_EQ(m.get("logits").shape, (Shape{3, 512}));
  EXPECT_EQ(m.get("logits").dtype, DType::F32);
}

TEST(Cli, InspectReportsDimensions) {
  if (!std::filesystem::exists(shared("fixtures/models/qwen3_moe"))) GTEST_SKIP();
  const Result r = run("inspect --model " + shared("fixtures/models/qwen3_moe") + " --json");
  ASSERT_EQ(r.status, 0) << r.out;
  const auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["arch"], "qwen3_moe");
  EXPECT_EQ(j["parameters"], 953088);  // MANIFEST.json's count
  EXPECT_EQ(j["parameters"], j["parameters_from_config"]);
  EXPECT_EQ(j["moe"]["experts"], 8);
}

TEST(Cli, BadInputFailsCleanly) {
  TempDir dir;
  std::ofstream(dir / "junk.bin") << "not a model";
  std::filesystem::create_directories(dir / "m");
  std::ofstream(dir / "m/config.json") << "{\"architectures\": [\"LlamaForCausalLM\"]";
  struct Case {
    std::string args, needle;
  };
  const std::vector<Case> cases = {
      {"generate --model " + (dir / "junk.bin") + " --prompt-ids 1", "junk.bin"},
      {"generate --model " + (dir / "m") + " --prompt-ids 1", "config.json"},
      {"generate --model /no/such/model --prompt-ids 1", "/no/such/model"},
      {"generate --model " + shared(kStories) + " --prompt-ids 1,x", "--prompt-ids"},
      {"generate --model " + shared(kStories) + " --prompt-ids 99999", "outside the vocabulary"},
      {"generate --model " + shared(kStories) + " --prompt hello", "tokenizer"},
      {"generate --model " + shared(kStories), "prompt"},
      {"generate --model " + shared(kStories) + " --prompt-ids 1 --top-p 2", "top-p"},
      {"inspect --model " + (dir / "m"), "config.json"},
      {"serve --model " + shared(kStories) + " --kv-cache-memory 2TB", "--kv-cache-memory"},
      {"serve --model " + shared(kStories) + " --kv-cache-memory 150%", "--kv-cache-memory"},
  };
  for (const auto& c : cases) {
    const Result r = run(c.args);
    EXPECT_TRUE(r.status == 1 || r.status == 105 || r.status == 106 || r.status == 109) << c.args << " -> " << r.status << ": " << r.out;
    EXPECT_NE(r.out.find(c.needle), std::string::npos) << c.args << ": " << r.out;
  }
}

TEST(Cli, TextPromptThroughTokenizer) {
  const std::string tok = shared("data/tokenizers/llama2-sentencepiece/tokenizer.bin");
  if (!std::filesystem::exists(tok)) GTEST_SKIP();
  TempDir dir;
  // A tiny random model with the Llama-2 vocabulary, so the real tokenizer.bin fits it.
  const std::string make = make_random_model_bin() + " --out " + (dir / "m") +
                           " --dim 16 --layers 1 --heads 2 --ffn 32 --vocab 32000 --dtype f32 > /dev/null";
  ASSERT_EQ(std::system(make.c_str()), 0);
  const Result r = run("generate --model " + (dir / "m") + " --tokenizer " + tok +
                           " --prompt 'Hello world' -n 3 --temperature 0 --ignore-eos --output json",
                       true);
  ASSERT_EQ(r.status, 0) << r.out;
  const auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["prompt_ids"], nlohmann::json({1, 15043, 3186}));
  EXPECT_EQ(j["ids"].size(), 3u);
  EXPECT_TRUE(j["text"].is_string());
}

TEST(Cli, TokenizeDetokenizeChatTemplate) {
  const std::string dir = shared("data/tokenizers/llama3-style");
  if (!std::filesystem::exists(dir)) GTEST_SKIP();
  Result r = run("tokenize --model " + dir + " --text 'Hello world' --output json", true);
  ASSERT_EQ(r.status, 0) << r.out;
  const auto ids = nlohmann::json::parse(r.out)["ids"];
  EXPECT_EQ(ids[0], 16000);  // <|begin_of_text|>
  r = run("tokenize --model " + dir + " --text 'Hello world' --no-special", true);
  EXPECT_EQ(r.out.find("16000"), std::string::npos) << r.out;
  std::string csv;
  for (const auto& id : ids) csv += (csv.empty() ? "" : ",") + std::to_string(id.get<int>());
  EXPECT_EQ(run("detokenize --model " + dir + " --ids " + csv, true).out, "<|begin_of_text|>Hello world");
  EXPECT_EQ(run("detokenize --model " + dir + " --ids " + csv + " --skip-special", true).out, "Hello world");

  TempDir tmp;
  std::ofstream(tmp / "m.json") << R"([{"role": "user", "content": "Hi"}])";
  r = run(
      "chat-template --model " + dir + " --messages-file " + (tmp / "m.json") + " --add-generation-prompt",
      true);
  EXPECT_EQ(r.out,
            "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|><|start_header_id|>"
            "assistant<|end_header_id|>\n\n");
  std::ofstream(tmp / "t.jinja") << "{% for m in messages %}[{{ m.content }}]{% endfor %}";
  r = run("chat-template --model " + dir + " --messages-file " + (tmp / "m.json") + " --chat-template " + (tmp / "t.jinja"), true);
  EXPECT_EQ(r.out, "[Hi]");
  // Bad input: clear errors.
  std::ofstream(tmp / "bad.json") << "[{";
  r = run("chat-template --model " + dir + " --messages-file " + (tmp / "bad.json"));
  EXPECT_EQ(r.status, 1);
  EXPECT_NE(r.out.find("bad.json"), std::string::npos) << r.out;
  std::ofstream(tmp / "bad.txt") << "ok \xff";
  r = run("tokenize --model " + dir + " --text-file " + (tmp / "bad.txt"));
  EXPECT_EQ(r.status, 1);
  EXPECT_NE(r.out.find("UTF-8"), std::string::npos) << r.out;
}

// A tiny random model paired with a real byte-level tokenizer and chat template: generate and chat run
// end to end through tokenizer.json (the output is noise; the plumbing is what is tested).
TEST(Cli, ChatAndGenerateWithHfTokenizer) {
  if (!std::filesystem::exists(shared("data/tokenizers/qwen2-style"))) GTEST_SKIP();
  TempDir dir;
  const std::string model = tiny_model_with_tokenizer(dir);
  Result r = run("generate --model " + model + " --prompt 'Hello there' -n 5 --temperature 0 --ignore-eos --output json", true);
  ASSERT_EQ(r.status, 0) << r.out;
  const auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["prompt_ids"].size(), 2u);
  EXPECT_EQ(j["ids"].size(), 5u);
  std::ofstream(dir / "in.txt") << "Hi\n/reset\nAgain\n/exit\n";
  r = run("chat --model " + model + " -n 4 --seed 1 < " + (dir / "in.txt"), true);
  EXPECT_EQ(r.status, 0) << r.out;
  EXPECT_EQ(std::count(r.out.begin(), r.out.end(), '\n'), 2) << "one line per answer: " << r.out;
}

// rill serve starts, answers, and on SIGTERM stops accepting, lets what runs go on until --shutdown-timeout,
// then cancels it (a stream ends with an error event and [DONE]) and exits 0 (issue 26 defect 7: no deadline).
TEST(Cli, ServeShutsDownCleanly) {
  if (!std::filesystem::exists(shared("data/tokenizers/qwen2-style"))) GTEST_SKIP();
  TempDir dir;
  const std::string model = tiny_model_with_tokenizer(dir);
  const Result tiny_kv = run("serve --model " + model + " --port 0 --kv-cache-memory 1B");
  EXPECT_EQ(tiny_kv.status, 1);
  EXPECT_NE(tiny_kv.out.find("holds no KV block"), std::string::npos) << tiny_kv.out;

  const std::string log = dir / "serve.log";
  std::vector<std::string> args = {RILL_BINARY, "serve", "--model", model, "--port", "0", "--kv-cache-memory", "64MiB",
                                   "--shutdown-timeout", "1"};
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 2, log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  pid_t pid;
  ASSERT_EQ(posix_spawn(&pid, RILL_BINARY, &actions, nullptr, argv.data(), environ), 0);
  posix_spawn_file_actions_destroy(&actions);
  std::string port;
  for (int i = 0; i < 200 && port.empty(); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(25));
    std::ifstream in(log);
    const std::string text(std::istreambuf_iterator<char>(in), {});
    const size_t at = text.find("http://127.0.0.1:");
    if (at != std::string::npos) port = text.substr(at + 17, text.find(' ', at) - at - 17);
  }
  ASSERT_FALSE(port.empty()) << "the server did not start";
  // It listens while it loads: /health is 503 until the model is loaded and warmed up, then 200.
  const std::string health = dir / "health";
  std::string code;
  for (int i = 0; i < 400 && code != "200"; ++i) {
    std::system(("curl -s -o /dev/null -w '%{http_code}' localhost:" + port + "/health > " + health).c_str());
    std::ifstream h(health);
    h >> code;
    if (code != "200") {
      EXPECT_EQ(code, "503");
      std::this_thread::sleep_for(std::chrono::milliseconds(25));
    }
  }
  EXPECT_EQ(code, "200");
  {
    std::ifstream in(log);
    const std::string text(std::istreambuf_iterator<char>(in), {});
    EXPECT_NE(text.find("rill: warm-up "), std::string::npos) << text;
    EXPECT_NE(text.find("rill: ready in "), std::string::npos) << text;
  }
  // A stream that would run for minutes, under way when the signal comes.
  const std::string streamed = dir / "stream";
  std::system(("curl -sN localhost:" + port + "/v1/completions -d '{\"prompt\":\"x\",\"max_tokens\":60000,\"stream\":true," +
               "\"ignore_eos\":true,\"kv_policy\":{\"type\":\"sink\",\"sinks\":4,\"window\":60}}' > " + streamed + " &")
                  .c_str());
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  const auto signalled = std::chrono::steady_clock::now();
  ASSERT_EQ(kill(pid, SIGTERM), 0);
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  const double took = std::chrono::duration<double>(std::chrono::steady_clock::now() - signalled).count();
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "status " << status;
  EXPECT_GT(took, 0.8) << "running requests may go on until shortly before the deadline";
  EXPECT_LT(took, 1.5) << "the deadline is 1 s";
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  std::ifstream in(streamed);
  const std::string text(std::istreambuf_iterator<char>(in), {});
  EXPECT_NE(text.find("\"text\""), std::string::npos) << "the stream was under way";
  EXPECT_NE(text.find("data: {\"error\":"), std::string::npos) << text.substr(text.size() > 400 ? text.size() - 400 : 0);
  EXPECT_EQ(text.size() >= 14 ? text.substr(text.size() - 14) : text, "data: [DONE]\n\n");
}

// Without --model, every command uses the embedded model models/rill-tiny.
TEST(Cli, DefaultModelIsRillTiny) {
  const std::string args = " --prompt \"Once upon a time\" -n 12 --temperature 0 --output json";
  const Result implicit = run("generate" + args, true);
  ASSERT_EQ(implicit.status, 0) << implicit.out;
  const Result explicit_model = run("generate --model " + models_dir() + "/rill-tiny" + args, true);
  EXPECT_EQ(implicit.out, explicit_model.out);
  const auto j = nlohmann::json::parse(implicit.out);
  EXPECT_EQ(j["ids"].size(), 12u);
  EXPECT_FALSE(j["text"].get<std::string>().empty());
  const Result info = run("inspect");
  EXPECT_NE(info.out.find("rill-tiny"), std::string::npos) << info.out;
  EXPECT_NE(run("generate --help").out.find("default: rill-tiny"), std::string::npos);
}

// rill chat keeps the conversation in a sink session: a chat several times longer than rill-tiny's 512-token
// context goes on; with the dense policy it stops at the context.
TEST(Cli, ChatOutlivesTheContext) {
  TempDir dir;
  {
    std::ofstream in(dir / "turns.txt");
    for (int i = 0; i < 24; ++i) in << "Tell me more about the king and the ship number " << i << ".\n";
  }
  const Result sink = run("chat -n 48 --temperature 0.8 --seed 1 < " + (dir / "turns.txt"));
  EXPECT_EQ(sink.status, 0) << sink.out;
  EXPECT_EQ(sink.out.find("exceed the context"), std::string::npos) << sink.out;
  const Result dense = run("chat -n 48 --temperature 0.8 --seed 1 --kv-policy dense < " + (dir / "turns.txt"));
  EXPECT_EQ(dense.status, 0) << dense.out;
  EXPECT_NE(dense.out.find("exceed the context"), std::string::npos) << dense.out;
}

TEST(Cli, PerplexityComparesPolicies) {
  const std::string text = shared("data/text/tinyshakespeare.txt");
  if (!std::filesystem::exists(text)) GTEST_SKIP();
  TempDir dir;
  const Result r = run("perplexity --text-file " + text + " --max-tokens 400 --window 64 --policy dense,window,sink,recompute "
                       "--recompute-stride 40 --chunk 3 --csv " + (dir / "ppl.csv"), true);
  ASSERT_EQ(r.status, 0) << r.out;
  for (const char* p : {"dense", "window", "sink", "recompute"}) EXPECT_NE(r.out.find(p), std::string::npos) << r.out;
  std::ifstream csv(dir / "ppl.csv");
  std::string header, row;
  std::getline(csv, header);
  EXPECT_EQ(header, "position,target,nll_dense,nll_window,nll_sink,nll_recompute");
  int rows = 0;
  while (std::getline(csv, row)) ++rows;
  EXPECT_EQ(rows, 399);
  const Result bad = run("perplexity --text-file " + text + " --policy dense,rolling");
  EXPECT_EQ(bad.status, 1);
  EXPECT_NE(bad.out.find("--policy"), std::string::npos) << bad.out;
}

// recompute's baseline is a fresh prompt of the last sinks + window tokens, as a new request for them would be:
// the tokenizer's BOS first (the text starts with it), then the latest tokens. Each checked value is the NLL
// that `generate --dump-logits` gives for that prompt.
TEST(Cli, PerplexityRecomputeIsAFreshPromptWithBos) {
  const std::string text = shared("data/text/tinyshakespeare.txt");
  if (!std::filesystem::exists(text)) GTEST_SKIP();
  TempDir dir;
  const int span = 33;  // --sinks 1 --window 32
  const Result r = run("perplexity --text-file " + text + " --max-tokens 100 --sinks 1 --window 32 --policy recompute "
                       "--recompute-stride 1 --device cpu --csv " + (dir / "ppl.csv"), true);
  ASSERT_EQ(r.status, 0) << r.out;
  std::vector<std::string> rows;
  {
    std::ifstream csv(dir / "ppl.csv");
    for (std::string row; std::getline(csv, row);) rows.push_back(row);
  }
  ASSERT_EQ(rows.size(), 100u);  // header + 99 targets
  const Result tokens = run("tokenize --text-file " + text, true);
  ASSERT_EQ(tokens.status, 0);
  std::vector<int32_t> ids;
  std::stringstream in(tokens.out);
  for (int32_t id; ids.size() < 100 && in >> id;) ids.push_back(id);
  ASSERT_EQ(ids.size(), 100u);
  for (int position : {20, 33, 57, 90}) {  // before the window fills, just after, and well past it
    std::vector<int32_t> prompt;
    if (position > span) prompt.push_back(ids[0]);
    for (int i = std::max(0, position - (span - int(prompt.size()))); i < position; ++i) prompt.push_back(ids[size_t(i)]);
    ASSERT_EQ(prompt.size(), size_t(std::min(position, span)));
    std::string list;
    for (int32_t id : prompt) list += (list.empty() ? "" : ",") + std::to_string(id);
    const Result g = run("generate --device cpu --prompt-ids " + list + " -n 0 --dump-logits " + (dir / "l.safetensors"));
    ASSERT_EQ(g.status, 0) << g.out;
    WeightMap m;
    read_safetensors(dir / "l.safetensors", &m);
    const Tensor& logits = m.get("logits");
    const int64_t vocab = logits.shape[1];
    const float* last = logits.ptr<float>() + (logits.shape[0] - 1) * vocab;
    double mx = last[0], sum = 0;
    for (int64_t v = 0; v < vocab; ++v) mx = std::max(mx, double(last[v]));
    for (int64_t v = 0; v < vocab; ++v) sum += std::exp(double(last[v]) - mx);
    const double want = mx + std::log(sum) - last[ids[size_t(position)]];
    const std::string& row = rows[size_t(position)];  // row p is position p (the header is row 0)
    ASSERT_EQ(row.substr(0, row.find(',')), std::to_string(position));
    EXPECT_NEAR(std::stod(row.substr(row.rfind(',') + 1)), want, 1e-4 * std::max(1.0, want)) << "position " << position;
  }
}

TEST(Cli, HelpListsEveryCommand) {
  const Result r = run("--help");
  EXPECT_EQ(r.status, 0);
  EXPECT_NE(r.out.find("generate"), std::string::npos);
  for (const char* cmd : {"serve", "generate", "chat", "perplexity", "inspect", "tokenize", "detokenize", "chat-template"})
    EXPECT_NE(r.out.find(cmd), std::string::npos) << cmd;
}

// A model whose embedding table is larger than its tokenizer (padded, as Qwen's 151936 rows for 151665 tokens):
// sampling never picks an id the tokenizer does not know, and a long hot sample runs to the end without an error.
TEST(Cli, PaddedVocabularyNeverSamplesUnknownIds) {
  TempDir dir;
  const std::string model = dir / "m";
  ASSERT_EQ(std::system((make_random_model_bin() + " --out " + model +
                         " --dim 32 --layers 1 --heads 2 --ffn 64 --vocab 9000 --dtype f32 --seed 5 > /dev/null").c_str()), 0);
  for (const char* f : {"tokenizer.json", "tokenizer_config.json"})
    std::filesystem::copy_file(models_dir() + "/rill-tiny/" + f, model + "/" + f);  // 8192 tokens
  const Result r = run("generate --device cpu --model " + model + " -p Hello -n 1000 --temperature 2 --ignore-eos " +
                       "--seed 3 --output json", true);
  ASSERT_EQ(r.status, 0) << r.out;
  const auto j = nlohmann::json::parse(r.out);
  const auto ids = j["ids"].get<std::vector<int32_t>>();
  ASSERT_EQ(ids.size(), 1000u);
  for (size_t i = 0; i < ids.size(); ++i) ASSERT_LT(ids[i], 8192) << "token " << i;
}

// The commands that run an engine warm it up at load, and each takes --no-warm-up to skip that (the docs say so).
TEST(Cli, EngineCommandsTakeNoWarmUp) {
  for (const char* cmd : {"serve", "generate", "chat"}) {
    const Result r = run(std::string(cmd) + " --help");
    EXPECT_EQ(r.status, 0) << cmd;
    EXPECT_NE(r.out.find("--no-warm-up"), std::string::npos) << cmd << " --help:\n" << r.out;
  }
}

// Speculative decoding from the command line (issue 22): --spec draft (rill-tiny-draft beside rill-tiny by
// default) and --spec ngram give the tokens --spec none gives, greedy and seeded, and report their acceptance;
// a draft that cannot serve the model is a clear error naming the option.
TEST(Cli, SpeculativeGenerateGivesTheSameTokens) {
  const std::string base = "generate --prompt \"The Lord is my shepherd\" -n 48 --ignore-eos --output json";
  for (const char* sampling : {" --temperature 0", " --temperature 0.8 --seed 3"}) {
    const Result plain = run(base + sampling, true);
    ASSERT_EQ(plain.status, 0) << plain.out;
    const std::string explicit_draft = " --draft-model " + models_dir() + "/rill-tiny-draft";
    for (const std::string& spec : {std::string(" --spec draft"), std::string(" --spec ngram --spec-tokens 3"), explicit_draft}) {
      const Result r = run(base + sampling + spec);
      ASSERT_EQ(r.status, 0) << spec << ": " << r.out;
      EXPECT_NE(r.out.find(plain.out.substr(0, plain.out.size() - 1)), std::string::npos) << spec << sampling;
      EXPECT_NE(r.out.find("speculative decoding: "), std::string::npos) << r.out;
    }
  }
  const Result stats = run(base + " --temperature 0 --spec draft");
  EXPECT_NE(stats.out.find("drafts accepted"), std::string::npos) << stats.out;
  // A draft with another vocabulary, and no draft at all beside a model.
  const TempDir dir;
  const std::string other = tiny_model_with_tokenizer(dir);
  const Result mismatch = run(base + " --draft-model " + other);
  EXPECT_EQ(mismatch.status, 1);
  EXPECT_NE(mismatch.out.find("--draft-model " + other + ": its tokenizer has 16022 tokens; the model's has 8192"),
            std::string::npos)
      << mismatch.out;
  const Result none = run("generate -m " + other + " --prompt hi -n 2 --spec draft");
  EXPECT_EQ(none.status, 1);
  EXPECT_NE(none.out.find("--spec draft: no --draft-model given, and there is no " + other + "-draft"), std::string::npos)
      << none.out;
  for (const char* cmd : {"serve", "generate", "chat"})
    EXPECT_NE(run(std::string(cmd) + " --help").out.find("--spec-tokens"), std::string::npos) << cmd;
}

}  // namespace
}  // namespace rill::test
