// The server's structured-output pieces without sockets: tool calls parsed out of streamed text in both styles,
// the grammar cache, and what parse_constraint accepts and refuses.
#include <gtest/gtest.h>

#include "server/openai.h"
#include "server/structured.h"

namespace rill::openai {
namespace {

// Feeds `text` in pieces of `step` bytes; returns the content and the calls.
std::pair<std::string, std::vector<json>> parse(ToolStyle style, const std::string& text, size_t step) {
  ToolCallParser p(style);
  std::string content;
  for (size_t i = 0; i < text.size(); i += step) content += p.feed(text.substr(i, step));
  content += p.finish();
  return {content, p.calls()};
}

TEST(ToolCallParser, HermesCallsInAnyChunking) {
  const std::string text =
      "Let me check.<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>\n"
      "<tool_call>{\"name\": \"get_time\", \"arguments\": {}}</tool_call>";
  for (size_t step : {size_t(1), size_t(3), size_t(7), text.size()}) {
    auto [content, calls] = parse(ToolStyle::Hermes, text, step);
    EXPECT_EQ(content, "Let me check.") << step;
    ASSERT_EQ(calls.size(), 2u) << step;
    EXPECT_EQ(calls[0]["function"]["name"], "get_weather");
    EXPECT_EQ(calls[0]["function"]["arguments"], "{\"city\":\"Paris\"}");
    EXPECT_EQ(calls[0]["type"], "function");
    EXPECT_EQ(calls[0]["id"].get<std::string>().rfind("call_", 0), 0u);
    EXPECT_NE(calls[0]["id"], calls[1]["id"]);
    EXPECT_EQ(calls[1]["function"]["arguments"], "{}");
  }
}

TEST(ToolCallParser, HermesTextThatIsNotACallStaysContent) {
  // A marker prefix that turns out to be text, a block that is not JSON, and a call left open at the end.
  EXPECT_EQ(parse(ToolStyle::Hermes, "a <tool_c b", 1).first, "a <tool_c b");
  auto [content, calls] = parse(ToolStyle::Hermes, "<tool_call>not json</tool_call>", 2);
  EXPECT_EQ(content, "<tool_call>not json</tool_call>");
  EXPECT_TRUE(calls.empty());
  auto open = parse(ToolStyle::Hermes, "<tool_call>{\"name\": \"f\", \"arguments\": {\"x\": 1}}", 4);
  EXPECT_EQ(open.first, "");
  ASSERT_EQ(open.second.size(), 1u);  // the model ended without its closing tag
  EXPECT_EQ(parse(ToolStyle::Hermes, "<tool_call>{\"nam", 4).first, "<tool_call>{\"nam");
  // Whitespace is content unless a call follows it, however the text arrives.
  for (size_t step : {size_t(1), size_t(100)}) EXPECT_EQ(parse(ToolStyle::Hermes, "a b \n", step).first, "a b \n");
}

TEST(ToolCallParser, JsonStyleWholeAnswer) {
  auto [content, calls] = parse(ToolStyle::Json, "  {\"name\": \"f\", \"parameters\": {\"a\": [1, 2]}}", 3);
  EXPECT_EQ(content, "");
  ASSERT_EQ(calls.size(), 1u);
  EXPECT_EQ(calls[0]["function"]["arguments"], "{\"a\":[1,2]}");
  EXPECT_EQ(parse(ToolStyle::Json, "Hello {\"name\": \"f\"}", 2).first, "Hello {\"name\": \"f\"}");
  EXPECT_EQ(parse(ToolStyle::Json, "{\"not\": \"a call\"}", 5).first, "{\"not\": \"a call\"}");
  EXPECT_EQ(parse(ToolStyle::Json, "[{\"name\": \"f\"}, {\"name\": \"g\"}]", 5).second.size(), 2u);
}

TEST(GrammarCache, CompilesOncePerKeyAndEvictsTheOldest) {
  auto vocab = std::make_shared<grammar::Vocabulary>(std::vector<std::string>{"a", "b"}, std::vector<int32_t>{});
  GrammarCache cache(2);
  int builds = 0;
  auto get = [&](const std::string& text) {
    return cache.get(text, [&] { ++builds; return grammar::Grammar::parse(text); }, vocab);
  };
  auto a = get("root ::= \"a\"");
  EXPECT_EQ(get("root ::= \"a\""), a);
  EXPECT_EQ(builds, 1);
  get("root ::= \"b\"");
  get("root ::= \"a\"");             // a is now the most recent
  get("root ::= \"ab\"");            // evicts b
  EXPECT_EQ(builds, 3);
  get("root ::= \"a\"");
  EXPECT_EQ(builds, 3);
  get("root ::= \"b\"");
  EXPECT_EQ(builds, 4);
  EXPECT_THROW(get("root ::= x"), grammar::GrammarError);
}

TEST(ParseConstraint, NamesTheParameter) {
  ModelInfo m;
  m.vocab = std::make_shared<grammar::Vocabulary>(std::vector<std::string>{"a", "{", "}"}, std::vector<int32_t>{});
  m.grammars = std::make_shared<GrammarCache>();
  ToolRequest tools;
  auto param = [&](const char* body, bool chat = true) {
    try {
      parse_constraint(json::parse(body), chat, m, &tools);
    } catch (const ApiError& e) {
      return e.param;
    }
    return std::string("accepted");
  };
  EXPECT_EQ(param(R"({"response_format": {"type": "json_object"}})"), "accepted");
  EXPECT_EQ(param(R"({"response_format": {"type": "text"}})"), "accepted");
  EXPECT_EQ(param(R"({"response_format": {"type": "xml"}})"), "response_format");
  EXPECT_EQ(param(R"({"response_format": {"type": "json_schema", "json_schema": {"schema": {"not": {}}}}})"), "response_format");
  EXPECT_EQ(param(R"({"grammar": "root ::= \"a\"", "response_format": {"type": "json_object"}})"), "grammar");
  EXPECT_EQ(param(R"({"grammar": 5})"), "grammar");
  EXPECT_EQ(param(R"({"tools": [{"type": "function", "function": {"name": "f"}}]})", false), "tools");
  EXPECT_EQ(param(R"({"tools": [{"type": "function"}]})"), "tools[0]");
  EXPECT_EQ(param(R"({"tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": "sometimes"})"), "tool_choice");
  EXPECT_EQ(param(R"({"tools": [], "tool_choice": "required"})"), "tool_choice");
  EXPECT_EQ(param(R"({"tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": "none"})"), "accepted");
  EXPECT_FALSE(tools.render);
  EXPECT_EQ(param(R"({"tools": [{"type": "function", "function": {"name": "f"}}]})"), "accepted");
  EXPECT_TRUE(tools.render && tools.parse);
  EXPECT_EQ(param(R"({"tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": "required",
                      "response_format": {"type": "json_object"}})"), "tool_choice");
}

}  // namespace
}  // namespace rill::openai
