// The HTTP server end to end, in-process, over loopback: a tiny random model with a real tokenizer and chat
// template (the text is noise; the API is what is tested).
#include <arpa/inet.h>
#include <httplib.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <future>
#include <regex>
#include <thread>

#include "backend/backend.h"
#include "cli/model_loading.h"
#include "engine/engine.h"
#include "grammar/matcher.h"
#include "server/http_server.h"
#include "server/responses.h"
#include "server/structured.h"
#include "server_fixture.h"
#include "test_util.h"
#include "tokenizer/hf_tokenizer.h"

namespace rill::test {
namespace {

// While the model loads (rill serve binds first), /health answers 503 {"status": "loading"} and the API 503
// model_loading with Retry-After; once ready, 200 and answers (issue 29).
TEST(Server, HealthSaysLoadingUntilReady) {
  if (!have_fixtures()) GTEST_SKIP();
  Fixture f({}, {}, /*ready=*/false);
  auto c = f.client();
  auto health = c.Get("/health");
  ASSERT_TRUE(health);
  EXPECT_EQ(health->status, 503);
  EXPECT_EQ(json::parse(health->body), json({{"status", "loading"}}));
  EXPECT_EQ(health->get_header_value("Retry-After"), "1");
  int status = 0;
  const json req = {{"prompt", "Hello"}, {"max_tokens", 3}};
  json err = f.post("/v1/completions", req, &status);
  EXPECT_EQ(status, 503);
  EXPECT_EQ(err["error"]["type"], "model_loading") << err.dump();
  for (const char* path : {"/v1/models", "/metrics", "/v1/sessions"}) {
    auto r = c.Get(path);
    ASSERT_TRUE(r) << path;
    EXPECT_EQ(r->status, 503) << path;
  }
  auto spec = c.Get("/openapi.json");
  ASSERT_TRUE(spec);
  EXPECT_EQ(spec->status, 200);
  EXPECT_FALSE(f.server->is_ready());

  f.make_ready();
  EXPECT_TRUE(f.server->is_ready());
  health = c.Get("/health");
  ASSERT_TRUE(health);
  EXPECT_EQ(health->status, 200);
  const json done = f.post("/v1/completions", req, &status);
  EXPECT_EQ(status, 200) << done.dump();
  EXPECT_EQ(done["usage"]["completion_tokens"], 3);
  EXPECT_THROW(f.make_ready(), Error);
}

TEST(Server, CompletionsStreamedEqualsWhole) {
  if (!have_fixtures()) GTEST_SKIP();
  Fixture f;
  const json req = {{"model", "tiny"},
                    {"prompt", "Once upon a time"},
                    {"max_tokens", 12},
                    {"temperature", 0},
                    {"ignore_eos", true}};
  int status;
  const json whole = f.post("/v1/completions", req, &status);
  ASSERT_EQ(status, 200) << whole.dump();
  EXPECT_EQ(whole["object"], "text_completion");
  EXPECT_EQ(whole["choices"][0]["finish_reason"], "length");
  EXPECT_EQ(whole["usage"]["completion_tokens"], 12);
  EXPECT_EQ(whole["usage"]["prompt_tokens"], int(f.tok->encode("Once upon a time", true).size()));
  json sreq = req;
  sreq["stream"] = true;
  sreq["stream_options"] = {{"include_usage", true}};
  const auto events = f.stream("/v1/completions", sreq);
  ASSERT_GE(events.size(), 3u);
  EXPECT_EQ(events.back(), "[DONE]");
  std::string text;
  for (size_t i = 0; i + 1 < events.size(); ++i) {
    const json e = json::parse(events[i]);
    if (!e["choices"].empty()) text += e["choices"][0]["text"].get<std::string>();
  }
  EXPECT_EQ(text, whole["choices"][0]["text"].get<std::string>());
  EXPECT_EQ(json::parse(events[events.size() - 2])["usage"]["completion_tokens"], 12);
  EXPECT_EQ(f.blocks_used(), 0);
}

TEST(Server, ChatCompletionsAndStreaming) {
  if (!have_fixtures()) GTEST_SKIP();
  Fixture f;
  const json req = {{"model", "tiny"},
                    {"messages", {{{"role", "user"}, {"content", "Hi"}}}},
                    {"max_tokens", 6},
                    {"temperature", 0}};
  int status;
  const json whole = f.post("/v1/chat/completions", req, &status);
  ASSERT_EQ(status, 200) << whole.dump();
  EXPECT_EQ(whole["object"], "chat.completion");
  EXPECT_EQ(whole["choices"][0]["message"]["role"], "assistant");
  json sreq = req;
  sreq["stream"] = true;
  const auto events = f.stream("/v1/chat/completions", sreq);
  const json first = json::parse(events.front());
  EXPECT_EQ(first["object"], "chat.completion.chunk");
  EXPECT_EQ(first["choices"][0]["delta"]["role"], "assistant");
  std::string text, finish;
  for (size_t i = 0; i + 1 < events.size(); ++i) {
    const json e = json::parse(events[i]);
    const json& d = e["choices"][0]["delta"];
    if (d.contains("content")) text += d["content"].get<std::string>();
    if (!e["choices"][0]["finish_reason"].is_null()) finish = e["choices"][0]["finish_reason"];
  }
  EXPECT_EQ(text, whole["choices"][0]["message"]["content"].get<std::string>());
  EXPECT_EQ(finish, whole["choices"][0]["finish_reason"]);
}

// A stop string ends a completion at the token that completed it: usage counts the tokens up to it, not those the
// engine made before it saw the cancellation (one more, or a speculative step's several).
TEST(Server, UsageEndsAtTheStopString) {
  const std::string dir = shared("data/tokenizers/qwen2-style");
  if (!std::filesystem::exists(dir)) GTEST_SKIP();
  const auto tok = HfTokenizer::load(dir + "/tokenizer.json");
  openai::CompletionRequest req;
  req.prompts.resize(1);
  req.prompts[0].prompt = tok->encode("x", false);
  openai::Choice c(*tok, req.prompts[0].prompt, {"cd"});
  c.stream = std::make_shared<RequestStream>();
  ServerMetrics metrics;
  std::string text;
  for (const char* piece : {"a", "b", "c", "d", "e", "f"}) {
    Event e;
    e.token = tok->encode(piece, false).at(0);
    text += c.apply(e, metrics);
  }
  Event end;
  end.finish = FinishReason::Cancelled;
  end.completion_tokens = 6;
  end.prompt_tokens = int(req.prompts[0].prompt.size());
  text += c.apply(end, metrics);
  EXPECT_EQ(text, "ab");
  EXPECT_TRUE(c.stream->cancelled());
  openai::CompletionReply reply{req, "id", "m", 0};
  std::vector<openai::Choice> choices;
  choices.push_back(std::move(c));
  EXPECT_EQ(reply.total_usage(choices)["completion_tokens"], 4) << "a, b, c and the d that completed the stop";
}

TEST(Server, StopStringsAcrossTokenBoundaries) {
  if (!have_fixtures()) GTEST_SKIP();
  Fixture f;
  json req = {{"prompt", "The"}, {"max_tokens", 24}, {"temperature", 0}, {"ignore_eos", true}};
  const std::string full = f.post("/v1/completions", req)["choices"][0]["text"];
  ASSERT_GE(full.size(), 8u);
  // A stop string that starts inside one token and ends inside a later one.
  const std::string stop = full.substr(full.size() / 2, 3);
  req["stop"] = {stop};
  const json r = f.post("/v1/completions", req);
  const std::string text = r["choices"][0]["text"];
  EXPECT_EQ(text, full.substr(0, full.find(stop)));
  EXPECT_EQ(r["choices"][0]["finish_reason"], "stop");
  req["stream"] = true;
  std::string streamed;
  for (const auto& e : f.stream("/v1/completions", req))
    if (e != "[DONE]") streamed += json::parse(e)["choices"][0]["text"].get<std::string>();
  EXPECT_EQ(streamed, text);
  EXPECT_EQ(f.blocks_used(), 0);
}

TEST(Server, SeedsNLogprobsEchoAndPromptForms) {
  if (!have_fixtures()) GTEST_SKIP();
  Fixture f;
  json req = {{"prompt", "Hello"}, {"max_tokens", 8}, {"temperature", 0.9},
              {"seed", 42},        {"n", 2},          {"ignore_eos", true}};
  const json a = f.post("/v1/completions", req), b = f.post("/v1/completions", req);
  ASSERT_EQ(a["choices"].size(), 2u);
  EXPECT_EQ(a["choices"], b["choices"]) << "same seed, same text";
  EXPECT_NE(a["choices"][0]["text"], a["choices"][1]["text"]) << "n samples use different seeds";
  req["seed"] = 43;
  EXPECT_NE(f.post("/v1/completions", req)["choices"][0]["text"], a["choices"][0]["text"]);

  const json lp = f.post("/v1/completions",
                         {{"prompt", "Hello"}, {"max_tokens", 3}, {"logprobs", 2}, {"ignore_eos", true}});
  EXPECT_EQ(lp["choices"][0]["logprobs"]["tokens"].size(), 3u);
  EXPECT_EQ(lp["choices"][0]["logprobs"]["top_logprobs"][0].size(), 2u);
  EXPECT_LE(lp["choices"][0]["logprobs"]["token_logprobs"][0].get<double>(), 0.0);
  const json clp = f.post("/v1/chat/completions", {{"messages", {{{"role", "user"}, {"content", "x"}}}},
                                                   {"max_tokens", 2},
                                                   {"logprobs", true},
                                                   {"top_logprobs", 3}});
  EXPECT_EQ(clp["choices"][0]["logprobs"]["content"][0]["top_logprobs"].size(), 3u);

  const json echo =
      f.post("/v1/completions", {{"prompt", "Hello"}, {"max_tokens", 2}, {"echo", true}, {"temperature", 0}});
  EXPECT_EQ(echo["choices"][0]["text"].get<std::string>().rfind("Hello", 0), 0u);
  const json two = f.post("/v1/completions", {{"prompt", {"a", "b"}}, {"max_tokens", 2}});
  EXPECT_EQ(two["choices"].size(), 2u);
  const json ids = f.post("/v1/completions", {{"prompt", {1, 2, 3}}, {"max_tokens", 2}});
  EXPECT_EQ(ids["usage"]["prompt_tokens"], 3);
  EXPECT_EQ(f.post("/tokenize", {{"prompt", "Hello world"}})["count"],
            int(f.tok->encode("Hello world", true).size()));
  EXPECT_EQ(f.post("/detokenize", {{"tokens", f.tok->encode("Hello world", false)}})["prompt"],
            "Hello world");
}

TEST(Server, ErrorsAreOpenAiShaped) {
  if (!have_fixtures()) GTEST_SKIP();
  ServerConfig sc;
  sc.max_body_bytes = 4096;
  Fixture f({}, sc);
  struct Case {
    json body;
    int status;
    std::string param;
  };
  const std::vector<Case> cases = {
      {{{"prompt", "x"}, {"temperature", "hot"}}, 400, "temperature"},
      {{{"prompt", "x"}, {"temperature", 9}}, 400, "temperature"},
      {{{"prompt", "x"}, {"top_p", 0}}, 400, "top_p"},
      {{{"prompt", "x"}, {"n", 0}}, 400, "n"},
      {{{"prompt", "x"}, {"max_tokens", 100000}}, 400, "max_tokens"},
      {{{"prompt", {1, 99999999}}}, 400, "prompt"},
      {{{"prompt", 5}}, 400, "prompt"},
      {{{"max_tokens", 5}}, 400, "prompt"},
      {{{"prompt", "x"}, {"stop", {1}}}, 400, "stop"},
      {{{"prompt", "x"}, {"model", "other"}}, 404, "model"},
  };
  for (const auto& c : cases) {
    int status;
    const json r = f.post("/v1/completions", c.body, &status);
    EXPECT_EQ(status, c.status) << c.body.dump();
    EXPECT_EQ(r["error"]["param"], c.param) << r.dump();
    EXPECT_TRUE(r["error"]["message"].is_string());
  }
  int status;
  const json ctx = f.post("/v1/completions", {{"prompt", "x"}, {"max_tokens", 100000}}, &status);
  EXPECT_NE(ctx["error"]["message"].get<std::string>().find("maximum context length is 512"),
            std::string::npos);
  EXPECT_EQ(f.post("/v1/chat/completions", {{"messages", "hi"}}, &status)["error"]["param"], "messages");
  // Issue 26: 2^64-1 was reported as "got -1".
  const json huge = f.post("/v1/completions", {{"prompt", "x"}, {"max_tokens", UINT64_MAX}}, &status);
  EXPECT_EQ(status, 400);
  EXPECT_NE(huge["error"]["message"].get<std::string>().find("(got 18446744073709551615)"), std::string::npos)
      << huge.dump();
  auto c = f.client();
  auto bad = c.Post("/v1/completions", "{not json", "application/json");
  EXPECT_EQ(bad->status, 400);
  EXPECT_EQ(c.Get("/v1/nothing")->status, 404);
  auto big = c.Post("/v1/completions", std::string(10000, ' '), "application/json");
  EXPECT_EQ(big->status, 413);
  // Issue 26: the body limit did not hold for chunked uploads (100 MiB were read and tokenized; this one was
  // read whole and answered 400 for its JSON).
  size_t sent = 0;
  auto chunked = c.Post(
      "/v1/completions",
      [&](size_t, httplib::DataSink& sink) {
        const std::string piece = sent == 0 ? "{\"prompt\": \"" : std::string(1000, 'a');
        sent += piece.size();
        if (sent > (1u << 20)) {
          sink.done();
          return true;
        }
        return sink.write(piece.data(), piece.size());
      },
      "application/json");
  ASSERT_TRUE(chunked);
  EXPECT_EQ(chunked->status, 413) << chunked->body;
  EXPECT_EQ(json::parse(chunked->body)["error"]["code"], 413);
  // A chunked body within the limit is read.
  const std::string small = json({{"prompt", "x"}, {"max_tokens", 1}}).dump();
  auto chunked_ok = c.Post(
      "/v1/completions",
      [&](size_t, httplib::DataSink& sink) {
        sink.write(small.data(), small.size());
        sink.done();
        return true;
      },
      "application/json");
  ASSERT_TRUE(chunked_ok);
  EXPECT_EQ(chunked_ok->status, 200) << chunked_ok->body;
  // A multipart body is not JSON: a 4xx naming it, not a 500.
  auto multipart = c.Post("/v1/completions", httplib::MultipartFormDataItems{{"prompt", "x", "", ""}});
  ASSERT_TRUE(multipart);
  EXPECT_EQ(multipart->status, 415) << multipart->body;
  EXPECT_EQ(c.Get("/health")->status, 200);
  EXPECT_EQ(f.blocks_used(), 0);
  // tool_choice and parallel_tool_calls are checked without tools too (found by the OpenAPI conformance test:
  // tool_choice 12345 was answered 200).
  for (const json& tc :
       {json(12345), json("required"), json({{"type", "function"}, {"function", {{"name", "f"}}}})}) {
    const json r =
        f.post("/v1/chat/completions",
               {{"messages", {{{"role", "user"}, {"content", "x"}}}}, {"tool_choice", tc}}, &status);
    EXPECT_EQ(status, 400) << tc.dump();
    EXPECT_EQ(r["error"]["param"], "tool_choice") << r.dump();
  }
  f.post("/v1/chat/completions",
         {{"messages", {{{"role", "user"}, {"content", "x"}}}}, {"parallel_tool_calls", "yes"}}, &status);
  EXPECT_EQ(status, 400);
  // max_tokens beside max_completion_tokens is still checked (it was ignored, "wrong" answered 200).
  const json both = f.post("/v1/chat/completions",
                           {{"messages", {{{"role", "user"}, {"content", "x"}}}},
                            {"max_completion_tokens", 4},
                            {"max_tokens", "wrong"}},
                           &status);
  EXPECT_EQ(status, 400);
  EXPECT_EQ(both["error"]["param"], "max_tokens") << both.dump();
}

// Issue 26: curl -d (the README's examples) sends Content-Type application/x-www-form-urlencoded, and a body
// of such a type past 8 KiB was refused as "larger than 16777216 bytes" (the HTTP library's form limit).
TEST(Server, FormContentTypeBodiesAreJson) {
  if (!have_fixtures()) GTEST_SKIP();
  Fixture f;
  auto c = f.client();
  const std::string body = json({{"prompt", std::string(8500, 'x')}, {"max_tokens", 1}}).dump();
  auto r = c.Post("/v1/completions", body, "application/x-www-form-urlencoded");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200) << r->body;
  EXPECT_EQ(json::parse(r->body)["usage"]["completion_tokens"], 1);
}

// Issue 26: a body nested 100k levels deep crashed the server (nlohmann copies and dumps recurse per level).
// Bodies deeper than kMaxJsonDepth are a 400 on every route that reads one; the server stays up.
TEST(Server, DeeplyNestedBodiesAre400) {
  if (!have_fixtures()) GTEST_SKIP();
  Fixture f;
  auto c = f.client();
  const std::string deep = std::string(100000, '[') + std::string(100000, ']');
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"/v1/sessions", "{\"model\":" + deep + "}"},
      {"/v1/chat/completions",
       "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\", \"x\": " + deep + "}]}"},
      {"/v1/chat/completions",
       "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}], \"tools\": " + deep + "}"},
      {"/v1/completions", "{\"prompt\": \"x\", \"user\": " + deep + "}"},
      {"/tokenize", "{\"prompt\": " + deep + "}"},
  };
  for (const auto& [path, body] : cases) {
    auto r = c.Post(path.c_str(), body, "application/json");
    ASSERT_TRUE(r) << path << ": no response (the server died?)";
    EXPECT_EQ(r->status, 400) << path;
    EXPECT_NE(r->body.find("nested deeper than"), std::string::npos)
        << path << ": " << r->body.substr(0, 200);
  }
  // 128 levels are fine (a JSON Schema in tools nests a few dozen at most).
  std::string ok = "{\"prompt\": \"x\", \"max_tokens\": 1, \"user\": \"u\", \"metadata\": ";
  ok += std::string(126, '[') + std::string(126, ']') + "}";
  auto r = c.Post("/v1/completions", ok, "application/json");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200) << r->body;
  EXPECT_EQ(c.Get("/health")->status, 200);
}

// Issue 26: a non-streamed request (a completion, or a session generation) went on generating after its
// client left, up to max_tokens (with a sink policy, minutes); now the connection is watched while it runs.
TEST(Server, NonStreamedRequestsEndWhenTheirClientLeaves) {
  if (!have_fixtures()) GTEST_SKIP();
  Fixture f;
  const json sink = {{"type", "sink"}, {"sinks", 4}, {"window", 60}};
  const std::string id = f.post("/v1/sessions", {{"kv_policy", sink}})["id"];
  f.post("/v1/sessions/" + id + "/append", {{"text", "Once"}});
  const std::vector<std::pair<std::string, json>> calls = {
      {"/v1/completions",
       {{"prompt", "x"}, {"max_tokens", 200000}, {"ignore_eos", true}, {"kv_policy", sink}}},
      {"/v1/sessions/" + id + "/generate",
       {{"max_tokens", 200000}, {"ignore_eos", true}, {"stream", false}}}};
  for (const auto& [path, body] : calls) {
    // The client sends the request, waits a moment, and leaves.
    const int sock = ::socket(AF_INET, SOCK_STREAM, 0);
    ASSERT_GE(sock, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(uint16_t(f.server->port()));
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ASSERT_EQ(::connect(sock, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
    const std::string payload = body.dump();
    const std::string request = "POST " + path +
                                " HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: " +
                                std::to_string(payload.size()) + "\r\n\r\n" + payload;
    ASSERT_EQ(::send(sock, request.data(), request.size(), MSG_NOSIGNAL), ssize_t(request.size()));
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    ::close(sock);
    const auto left = std::chrono::steady_clock::now();
    while (f.engine->metrics().running > 0 &&
           std::chrono::steady_clock::now() - left < std::chrono::seconds(5))
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    EXPECT_EQ(f.engine->metrics().running, 0) << path << ": still generating 5 s after its client left";
    EXPECT_LT(f.engine->metrics().generated_tokens, 150000) << path;
  }
  EXPECT_EQ(f.client().Get("/health")->status, 200);
}

// Issue 26: under the sink policy max_tokens up to 2^30 was accepted, and a request generated for minutes
// after its client left. rill serve --max-tokens-limit bounds it, for requests and session generations alike.
TEST(Server, MaxTokensLimitBoundsSinkRequests) {
  if (!have_fixtures()) GTEST_SKIP();
  Fixture f;
  const json sink = {{"type", "sink"}, {"sinks", 4}, {"window", 60}};
  int status;
  json r =
      f.post("/v1/completions", {{"prompt", "x"}, {"max_tokens", 1 << 29}, {"kv_policy", sink}}, &status);
  EXPECT_EQ(status, 400);
  EXPECT_EQ(r["error"]["param"], "max_tokens");
  EXPECT_NE(r["error"]["message"].get<std::string>().find(std::to_string(openai::kDefaultMaxTokensLimit)),
            std::string::npos)
      << r.dump();
  r = f.post("/v1/chat/completions",
             {{"messages", {{{"role", "user"}, {"content", "hi"}}}},
              {"max_completion_tokens", 1 << 29},
              {"kv_policy", sink}},
             &status);
  EXPECT_EQ(status, 400);
  EXPECT_EQ(r["error"]["param"], "max_completion_tokens");
  const std::string id = f.post("/v1/sessions", {{"kv_policy", sink}})["id"];
  f.post("/v1/sessions/" + id + "/append", {{"text", "Once"}});
  r = f.post("/v1/sessions/" + id + "/generate", {{"max_tokens", 1 << 29}, {"stream", false}}, &status);
  EXPECT_EQ(status, 400);
  EXPECT_EQ(r["error"]["param"], "max_tokens");
  // Within the limit, past the context: served.
  r = f.post("/v1/completions",
             {{"prompt", "x"}, {"max_tokens", 700}, {"ignore_eos", true}, {"seed", 1}, {"kv_policy", sink}},
             &status);
  EXPECT_EQ(status, 200) << r.dump();
  EXPECT_EQ(r["usage"]["completion_tokens"], 700);
  EXPECT_EQ(f.client().Delete(("/v1/sessions/" + id).c_str())->status, 200);
  EXPECT_EQ(f.blocks_used(), 0);
}

// Issue 26: a 16 MiB prompt was tokenized in full (+0.67 GB, 5 s) before the context check. Under the dense
// policy tokenizing now stops past the context, and the 400 says so ("more than that": the full count is
// never known). The server's body limit is raised for this test.
TEST(Server, HugePromptsStopTokenizingAtTheContext) {
  if (!have_fixtures()) GTEST_SKIP();
  ServerConfig sc;
  sc.max_body_bytes = 64u << 20;
  Fixture f({}, sc);
  std::string text;
  while (text.size() < (16u << 20)) text += "The quick brown fox jumps over the lazy dog. ";
  int status;
  const json r = f.post("/v1/completions", {{"prompt", text}, {"max_tokens", 1}}, &status);
  EXPECT_EQ(status, 400);
  EXPECT_EQ(r["error"]["param"], "prompt");
  EXPECT_NE(r["error"]["message"].get<std::string>().find(
                "maximum context length is 512 tokens; the prompt has more than that"),
            std::string::npos)
      << r.dump().substr(0, 300);
  const json c =
      f.post("/v1/chat/completions", {{"messages", {{{"role", "user"}, {"content", text}}}}}, &status);
  EXPECT_EQ(status, 400);
  EXPECT_EQ(c["error"]["param"], "messages");
}

// A conversation longer than the model's context: 400 with the dense policy, answered under "kv_policy":
// sink.
TEST(Server, SinkPolicyServesPromptsBeyondTheContext) {
  if (!have_fixtures()) GTEST_SKIP();
  Fixture f;
  std::string history;
  for (int i = 0; i < 200; ++i) history += "word" + std::to_string(i) + " ";
  json req = {
      {"messages", {{{"role", "user"}, {"content", history}}}}, {"max_tokens", 40}, {"temperature", 0}};
  int status = 0;
  const json refused = f.post("/v1/chat/completions", req, &status);
  EXPECT_EQ(status, 400) << refused.dump();
  req["kv_policy"] = {{"type", "sink"}, {"sinks", 4}, {"window", 128}};
  const json r = f.post("/v1/chat/completions", req, &status);
  ASSERT_EQ(status, 200) << r.dump();
  EXPECT_GT(r["usage"]["prompt_tokens"].get<int>(), 512);
  EXPECT_EQ(r["usage"]["completion_tokens"], 40);
  // Streamed: the same answer.
  req["stream"] = true;
  std::string streamed;
  for (const auto& e : f.stream("/v1/chat/completions", req))
    if (e != "[DONE]") {
      const json c = json::parse(e);
      if (!c["choices"].empty() && c["choices"][0]["delta"].contains("content"))
        streamed += c["choices"][0]["delta"]["content"].get<std::string>();
    }
  EXPECT_EQ(streamed, r["choices"][0]["message"]["content"].get<std::string>());
  EXPECT_EQ(f.blocks_used(), 0);
  // Bad policies are 400s naming kv_policy.
  for (const json& bad :
       {json("sink"), json({{"type", "rolling"}}), json({{"type", "sink"}, {"window", 8}}),
        json({{"type", "sink"}, {"window", 4096}}), json({{"type", "sink"}, {"sinks", -1}})}) {
    const json e = f.post("/v1/completions", {{"prompt", "x"}, {"kv_policy", bad}}, &status);
    EXPECT_EQ(status, 400) << bad.dump();
    EXPECT_EQ(e["error"]["param"].get<std::string>().rfind("kv_policy", 0), 0u) << e.dump();
  }
}

// The session API: create, append text and messages, generate streamed and whole, status, errors, delete.
TEST(Server, StreamingSessions) {
  if (!have_fixtures()) GTEST_SKIP();
  Fixture f;
  int status = 0;
  const json created = f.post("/v1/sessions",
                              {{"kv_policy", {{"type", "sink"}, {"sinks", 4}, {"window", 64}}},
                               {"defaults", {{"temperature", 0}, {"max_tokens", 12}, {"ignore_eos", true}}}},
                              &status);
  ASSERT_EQ(status, 200) << created.dump();
  const std::string id = created["id"], base = "/v1/sessions/" + id;
  // Issue 26: ids were sequential ("sess-1"), so any client could name another's session. Now 128 random
  // bits, and a name with a wrong half is as unknown as one never made.
  EXPECT_TRUE(std::regex_match(id, std::regex("sess-[0-9a-f]{32}"))) << id;
  {
    const std::string other = f.post("/v1/sessions", json::object())["id"];
    EXPECT_NE(other.substr(5, 16), id.substr(5, 16));
    EXPECT_NE(other.substr(21), id.substr(21));
    std::string forged = id;
    forged.back() = forged.back() == '0' ? '1' : '0';  // right id, wrong secret
    int st;
    EXPECT_EQ(f.post("/v1/sessions/" + forged + "/append", {{"text", "x"}}, &st)["error"]["type"],
              "not_found_error");
    EXPECT_EQ(st, 404);
    EXPECT_EQ(f.client().Delete(("/v1/sessions/" + forged).c_str())->status, 404);
    EXPECT_EQ(f.client().Delete(("/v1/sessions/" + other).c_str())->status, 200);
  }
  EXPECT_EQ(created["kv_policy"]["type"], "sink");
  EXPECT_EQ(created["tokens"], 0);
  // Appends well past the model's context (512), in pieces, as a live stream would.
  int64_t appended = 0;
  for (int i = 0; i < 12; ++i) {
    std::string text;
    for (int k = 0; k < 60; ++k) text += " w" + std::to_string(i * 60 + k);
    const json a = f.post(base + "/append", {{"text", text}}, &status);
    ASSERT_EQ(status, 200) << a.dump();
    appended += a["appended_tokens"].get<int64_t>();
  }
  EXPECT_GT(appended, 512);
  const json whole = f.post(base + "/generate", {{"stream", false}}, &status);
  ASSERT_EQ(status, 200) << whole.dump();
  EXPECT_EQ(whole["usage"]["completion_tokens"], 12);
  EXPECT_EQ(whole["finish_reason"], "length");
  json st = f.post(
      base + "/append",
      {{"messages", {{{"role", "user"}, {"content", "hello"}}}}, {"add_generation_prompt", true}}, &status);
  ASSERT_EQ(status, 200) << st.dump();
  std::string streamed;
  bool finished = false;
  for (const auto& e : f.stream(base + "/generate", {{"max_tokens", 5}})) {
    if (e == "[DONE]") continue;
    const json c = json::parse(e);
    streamed += c["text"].get<std::string>();
    if (c.contains("finish_reason")) finished = c["usage"]["completion_tokens"] == 5;
  }
  EXPECT_TRUE(finished);
  auto c = f.client();
  auto got = c.Get(base.c_str());
  ASSERT_TRUE(got);
  const json info = json::parse(got->body);
  EXPECT_EQ(info["tokens"].get<int64_t>(), appended + 12 + st["appended_tokens"].get<int64_t>() - 0 + 5);
  EXPECT_LE(info["tokens_cached"].get<int64_t>(), 4 + 64);
  EXPECT_GT(info["kv_bytes"].get<int64_t>(), 0);
  auto list = c.Get("/v1/sessions");
  EXPECT_EQ(json::parse(list->body)["data"].size(), 1u);
  // Errors.
  EXPECT_EQ(f.post("/v1/sessions/sess-999/append", {{"text", "x"}}, &status)["error"]["type"],
            "not_found_error");
  EXPECT_EQ(status, 404);
  f.post(base + "/append", {{"text", "x"}, {"tokens", {1}}}, &status);
  EXPECT_EQ(status, 400);
  EXPECT_EQ(f.post(base + "/append", {{"tokens", {-1}}}, &status)["error"]["param"], "tokens");
  EXPECT_EQ(status, 400);
  EXPECT_EQ(f.post("/detokenize", {{"tokens", {1, 99999999}}}, &status)["error"]["param"], "tokens");
  EXPECT_EQ(status, 400);
  EXPECT_EQ(f.post("/detokenize", {{"tokens", "1 2"}}, &status)["error"]["param"], "tokens");
  EXPECT_EQ(status, 400);
  // Issue 26: a wrong type for add_special_tokens was a 500 with nlohmann's text.
  EXPECT_EQ(f.post("/tokenize", {{"prompt", "x"}, {"add_special_tokens", "no"}}, &status)["error"]["param"],
            "add_special_tokens");
  EXPECT_EQ(status, 400);
  f.post("/v1/sessions", {{"kv_policy", {{"type", "sink"}, {"window", 4}}}}, &status);
  EXPECT_EQ(status, 400);
  f.post(base + "/generate", {{"temperature", -1}}, &status);
  EXPECT_EQ(status, 400);
  // Constrained generations: a JSON Schema, then a GBNF grammar (the session's default ignore_eos does not
  // carry a generation past the grammar's end), and a schema the compiler refuses.
  const json schema = {
      {"type", "object"},
      {"properties", {{"ok", {{"type", "boolean"}}}, {"n", {{"type", "integer"}, {"maximum", 9}}}}},
      {"required", {"ok", "n"}},
      {"additionalProperties", false}};
  const json structured = f.post(
      base + "/generate",
      {{"stream", false},
       {"max_tokens", 60},
       {"temperature", 1},
       {"seed", 3},
       {"response_format", {{"type", "json_schema"}, {"json_schema", {{"name", "r"}, {"schema", schema}}}}}},
      &status);
  ASSERT_EQ(status, 200) << structured.dump();
  EXPECT_EQ(structured["finish_reason"], "stop") << structured.dump();
  const json parsed = json::parse(structured["text"].get<std::string>());
  EXPECT_TRUE(parsed["ok"].is_boolean()) << parsed.dump();
  EXPECT_LE(parsed["n"].get<int>(), 9) << parsed.dump();
  const json yes_no =
      f.post(base + "/generate", {{"stream", false}, {"grammar", "root ::= \"yes\" | \"no\""}}, &status);
  ASSERT_EQ(status, 200) << yes_no.dump();
  EXPECT_TRUE(yes_no["text"] == "yes" || yes_no["text"] == "no") << yes_no.dump();
  EXPECT_EQ(yes_no["finish_reason"], "stop");
  EXPECT_EQ(f.post(base + "/generate",
                   {{"response_format",
                     {{"type", "json_schema"}, {"json_schema", {{"schema", {{"multipleOf", 2}}}}}}}},
                   &status)["error"]["param"],
            "response_format");
  EXPECT_EQ(status, 400);
  auto del = c.Delete(base.c_str());
  ASSERT_TRUE(del);
  EXPECT_EQ(del->status, 200);
  EXPECT_EQ(c.Delete(base.c_str())->status, 404);
  EXPECT_EQ(f.blocks_used(), 0);
}

TEST(Server, ApiKey) {
  if (!have_fixtures()) GTEST_SKIP();
  ServerConfig sc;
  sc.api_keys = {"s3cret"};
  Fixture f({}, sc);
  int status;
  f.post("/v1/completions", {{"prompt", "x"}, {"max_tokens", 1}}, &status);
  EXPECT_EQ(status, 401);
  f.post("/v1/completions", {{"prompt", "x"}, {"max_tokens", 1}}, &status,
         {{"Authorization", "Bearer wrong"}});
  EXPECT_EQ(status, 401);
  f.post("/v1/completions", {{"prompt", "x"}, {"max_tokens", 1}}, &status,
         {{"Authorization", "Bearer s3cret"}});
  EXPECT_EQ(status, 200);
  EXPECT_EQ(f.client().Get("/health")->status, 200);
}

// Issue 26: any client could list, use and delete any session. With API keys a session belongs to the key
// that made it: to another key it does not exist. --max-sessions-per-key bounds one key's sessions (429).
TEST(Server, SessionsBelongToTheKeyThatMadeThem) {
  if (!have_fixtures()) GTEST_SKIP();
  ServerConfig sc;
  sc.api_keys = {"key-a", "key-b"};
  sc.max_sessions_per_key = 2;
  Fixture f({}, sc);
  const httplib::Headers a = {{"Authorization", "Bearer key-a"}}, b = {{"Authorization", "Bearer key-b"}};
  int status = 0;
  const std::string id = f.post("/v1/sessions", json::object(), &status, a)["id"];
  ASSERT_EQ(status, 200);
  const std::string path = "/v1/sessions/" + id;
  f.post(path + "/append", {{"text", "Once upon a time"}}, &status, a);
  EXPECT_EQ(status, 200);
  auto c = f.client();
  // Key b: not listed, not found, cannot append, generate or delete.
  auto listed = [&](const httplib::Headers& h) {
    return json::parse(c.Get("/v1/sessions", h)->body)["data"].size();
  };
  EXPECT_EQ(listed(a), 1u);
  EXPECT_EQ(listed(b), 0u);
  EXPECT_EQ(c.Get(path.c_str(), b)->status, 404);
  f.post(path + "/append", {{"text", "x"}}, &status, b);
  EXPECT_EQ(status, 404);
  f.post(path + "/generate", {{"max_tokens", 2}, {"stream", false}}, &status, b);
  EXPECT_EQ(status, 404);
  EXPECT_EQ(c.Delete(path.c_str(), b)->status, 404);
  EXPECT_EQ(c.Get(path.c_str(), a)->status, 200) << "still there for its owner";
  // The per-key limit: a's third session is refused, b's first is not.
  f.post("/v1/sessions", json::object(), &status, a);
  EXPECT_EQ(status, 200);
  const json third = f.post("/v1/sessions", json::object(), &status, a);
  EXPECT_EQ(status, 429) << third.dump();
  f.post("/v1/sessions", json::object(), &status, b);
  EXPECT_EQ(status, 200);
  EXPECT_EQ(c.Delete(path.c_str(), a)->status, 200);
  f.post("/v1/sessions", json::object(), &status, a);
  EXPECT_EQ(status, 200) << "a deleted one: room again";
}

// Issue 26: --request-timeout cancels a request that runs too long: a 504 for a whole answer, an error event
// and [DONE] for a stream; its blocks are freed.
TEST(Server, RequestTimeoutEndsLongRequests) {
  if (!have_fixtures()) GTEST_SKIP();
  ServerConfig sc;
  sc.request_timeout_s = 0.5;
  Fixture f({}, sc);
  const json sink = {{"type", "sink"}, {"sinks", 4}, {"window", 60}};
  const json body = {{"prompt", "x"}, {"max_tokens", 200000}, {"ignore_eos", true}, {"kv_policy", sink}};
  int status = 0;
  auto t0 = std::chrono::steady_clock::now();
  const json r = f.post("/v1/completions", body, &status);
  const double took = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_EQ(status, 504) << r.dump();
  EXPECT_EQ(r["error"]["type"], "request_timeout") << r.dump();
  EXPECT_LT(took, 3.0);
  json streamed = body;
  streamed["stream"] = true;
  const auto events = f.stream("/v1/completions", streamed);
  ASSERT_GE(events.size(), 2u);
  EXPECT_EQ(events.back(), "[DONE]");
  EXPECT_EQ(json::parse(events[events.size() - 2])["error"]["type"], "request_timeout");
  const std::string id = f.post("/v1/sessions", {{"kv_policy", sink}})["id"];
  f.post("/v1/sessions/" + id + "/append", {{"text", "Once"}});
  const json g = f.post("/v1/sessions/" + id + "/generate",
                        {{"max_tokens", 200000}, {"ignore_eos", true}, {"stream", false}}, &status);
  EXPECT_EQ(status, 504) << g.dump();
  f.client().Delete(("/v1/sessions/" + id).c_str());
  EXPECT_EQ(f.blocks_used(), 0);
}

TEST(Server, OverloadAnswers503WithRetryAfter) {
  if (!have_fixtures()) GTEST_SKIP();
  EngineConfig ec;
  ec.max_num_seqs = 1;
  ec.max_waiting = 1;
  Fixture f(ec);
  std::vector<std::future<httplib::Result>> pending;
  for (int i = 0; i < 8; ++i)
    pending.push_back(std::async(std::launch::async, [&] {
      auto c = f.client();
      return c.Post("/v1/completions",
                    json({{"prompt", "x"}, {"max_tokens", 200}, {"ignore_eos", true}}).dump(),
                    "application/json");
    }));
  int ok = 0, overloaded = 0;
  for (auto& p : pending) {
    auto r = p.get();
    ASSERT_TRUE(r);
    if (r->status == 200) ++ok;
    if (r->status == 503) {
      ++overloaded;
      EXPECT_EQ(r->get_header_value("Retry-After"), "1");
    }
  }
  EXPECT_GT(ok, 0);
  EXPECT_GT(overloaded, 0);
  EXPECT_EQ(f.blocks_used(), 0);
}

TEST(Server, DisconnectFreesBlocks) {
  if (!have_fixtures()) GTEST_SKIP();
  Fixture f;
  {
    auto c = f.client();
    int chunks = 0;
    httplib::Request req;
    req.method = "POST";
    req.path = "/v1/completions";
    req.headers = {{"Content-Type", "application/json"}};
    req.body = json({{"prompt", "x"}, {"max_tokens", 400}, {"stream", true}, {"ignore_eos", true}}).dump();
    req.content_receiver = [&](const char*, size_t, uint64_t, uint64_t) {
      return ++chunks < 3;
    };  // read a little, hang up
    httplib::Response res;
    httplib::Error err;
    c.send(req, res, err);
  }
  EXPECT_EQ(f.blocks_used(), 0);
  const EngineMetrics m = f.engine->metrics();
  EXPECT_LT(m.generated_tokens, 400) << "generation stopped when the client left";
}

// 64 concurrent streaming clients with mixed prompt lengths (some beyond the 64-token step budget): every
// request completes with exactly the text it gets alone, and every block comes back.
TEST(Server, SixtyFourConcurrentStreamsMatchSerialRuns) {
  if (!have_fixtures()) GTEST_SKIP();
  EngineConfig ec;
  ec.max_batch_tokens = 64;
  ec.max_num_seqs = 64;
  Fixture f(ec);
  std::vector<json> reqs;
  for (int i = 0; i < 64; ++i) {
    std::string prompt;
    for (int w = 0; w < 1 + (i * 37) % 120; ++w) prompt += " word" + std::to_string((i * 7 + w) % 50);
    reqs.push_back({{"prompt", prompt}, {"max_tokens", 4 + i % 9}, {"temperature", 0}, {"ignore_eos", true}});
  }
  std::vector<std::string> serial;
  for (const auto& r : reqs) serial.push_back(f.post("/v1/completions", r)["choices"][0]["text"]);
  std::vector<std::future<std::string>> concurrent;
  for (const auto& r : reqs)
    concurrent.push_back(std::async(std::launch::async, [&f, r] {
      json s = r;
      s["stream"] = true;
      std::string text;
      for (const auto& e : f.stream("/v1/completions", s))
        if (e != "[DONE]") text += json::parse(e)["choices"][0]["text"].get<std::string>();
      return text;
    }));
  for (size_t i = 0; i < reqs.size(); ++i) EXPECT_EQ(concurrent[i].get(), serial[i]) << "request " << i;
  EXPECT_EQ(f.blocks_used(), 0);
  const EngineMetrics m = f.engine->metrics();
  EXPECT_EQ(m.requests_finished, 128);
}

TEST(Server, PrefixReuseReportsCachedTokens) {
  if (!have_fixtures()) GTEST_SKIP();
  Fixture f;
  std::string system;
  for (int i = 0; i < 60; ++i) system += " rule" + std::to_string(i);
  auto ask = [&](const std::string& q) {
    return f.post(
        "/v1/chat/completions",
        {{"messages", {{{"role", "system"}, {"content", system}}, {{"role", "user"}, {"content", q}}}},
         {"max_tokens", 2}});
  };
  const json first = ask("first question");
  const json second = ask("second question");
  EXPECT_EQ(first["usage"]["prompt_tokens_details"]["cached_tokens"], 0);
  EXPECT_GE(second["usage"]["prompt_tokens_details"]["cached_tokens"].get<int>(), 64);
  EXPECT_GT(f.engine->metrics().prefix_hit_tokens, 0);
  const std::string metrics = f.client().Get("/metrics")->body;
  EXPECT_NE(metrics.find("rill_prefix_cache_hit_rate"), std::string::npos);
  EXPECT_NE(metrics.find("rill_time_to_first_token_seconds_bucket"), std::string::npos);
  // Issue 26: successes were counted as status="-1". Both answers above were 200s.
  EXPECT_EQ(metrics.find("status=\"-1\""), std::string::npos) << metrics;
  EXPECT_NE(metrics.find("rill_http_responses_total{status=\"200\"}"), std::string::npos) << metrics;
}

}  // namespace
}  // namespace rill::test
