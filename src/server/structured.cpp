#include "server/structured.h"

#include <cctype>
#include <random>

#include "grammar/json_schema.h"
#include "server/openai.h"

namespace rill::openai {

namespace {

const std::string kCallOpen = "<tool_call>", kCallClose = "</tool_call>";

std::string call_id() {
  static thread_local std::mt19937_64 rng{std::random_device{}()};
  static const char* hex = "0123456789abcdef";
  std::string id = "call_";
  for (int i = 0; i < 24; ++i) id += hex[rng() % 16];
  return id;
}

bool all_space(const std::string& s) {
  for (unsigned char c : s)
    if (!std::isspace(c)) return false;
  return true;
}

// The longest suffix of s that begins `marker` (held back: the marker may be arriving).
size_t partial_suffix(const std::string& s, const std::string& marker) {
  for (size_t k = std::min(marker.size() - 1, s.size()); k > 0; --k)
    if (s.compare(s.size() - k, k, marker, 0, k) == 0) return k;
  return 0;
}

// The grammar that forces tool calls: each call one of `tools` (or only `only`), in the template's style.
grammar::Grammar forced_calls(const json& tools, const std::string& only, ToolStyle style, bool parallel) {
  const char* args = style == ToolStyle::Hermes ? "arguments" : "parameters";
  json any = json::array();
  for (const auto& t : tools) {
    const json& f = t["function"];
    const std::string name = f["name"].get<std::string>();
    if (!only.empty() && name != only) continue;
    json call = {{"type", "object"},
                 {"properties",
                  {{"name", {{"const", name}}},
                   {args, f.contains("parameters") ? f["parameters"] : json{{"type", "object"}}}}},
                 {"required", {"name", args}},
                 {"additionalProperties", false}};
    any.push_back(call);
  }
  const json schema = any.size() == 1 ? any[0] : json{{"anyOf", any}};
  grammar::JsonFraming framing;
  if (style == ToolStyle::Hermes) {
    framing.before = kCallOpen + "\n";
    framing.after = "\n" + kCallClose;
    framing.separator = "\n";
    framing.repeat = parallel;
  }
  return grammar::json_schema_grammar(schema, framing);
}

}  // namespace

std::shared_ptr<const grammar::CompiledGrammar> GrammarCache::get(
    const std::string& key, const std::function<grammar::Grammar()>& build,
    const std::shared_ptr<const grammar::Vocabulary>& vocab) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = index_.find(key);
    if (it != index_.end()) {
      lru_.splice(lru_.begin(), lru_, it->second);
      return it->second->second;
    }
  }
  auto g = std::make_shared<grammar::CompiledGrammar>(build(), vocab);
  g->precompute();  // here, on the request's thread, not in the engine loop
  std::lock_guard<std::mutex> lock(mu_);
  if (index_.count(key)) return index_[key]->second;
  lru_.emplace_front(key, g);
  index_[key] = lru_.begin();
  while (lru_.size() > capacity_) {
    index_.erase(lru_.back().first);
    lru_.pop_back();
  }
  return g;
}

ToolStyle tool_style_of(const std::string& template_source) {
  return template_source.find(kCallOpen) != std::string::npos ? ToolStyle::Hermes : ToolStyle::Json;
}

std::shared_ptr<const grammar::CompiledGrammar> parse_constraint(const json& b, bool chat, const ModelInfo& m,
                                                                 ToolRequest* tools) {
  std::string key, param;
  std::function<grammar::Grammar()> build;
  auto want = [&](const std::string& p) {
    if (!param.empty())
      throw bad_request("'" + p + "' and '" + param + "' cannot both constrain the output", p);
    param = p;
  };

  if (b.contains("response_format") && !b["response_format"].is_null()) {
    const json& rf = b["response_format"];
    if (!rf.is_object() || !rf.contains("type") || !rf["type"].is_string())
      throw bad_request("'response_format' must be an object with a 'type'", "response_format");
    const std::string type = rf["type"].get<std::string>();
    if (type == "json_object") {
      want("response_format");
      key = "json_object";
      build = [] { return grammar::json_object_grammar(); };
    } else if (type == "json_schema") {
      if (!rf.contains("json_schema") || !rf["json_schema"].is_object())
        throw bad_request("'response_format' of type json_schema needs a 'json_schema' object",
                          "response_format");
      const json& js = rf["json_schema"];
      if (!js.contains("schema") || !(js["schema"].is_object() || js["schema"].is_boolean()))
        throw bad_request("'response_format.json_schema.schema' must be a JSON Schema object",
                          "response_format");
      want("response_format");
      key = "schema:" + js["schema"].dump();
      build = [schema = js["schema"]] { return grammar::json_schema_grammar(schema); };
    } else if (type != "text") {
      throw bad_request("'response_format.type' must be 'text', 'json_object' or 'json_schema'",
                        "response_format");
    }
  }
  if (b.contains("grammar") && !b["grammar"].is_null()) {
    if (!b["grammar"].is_string()) throw bad_request("'grammar' must be a string (GBNF)", "grammar");
    want("grammar");
    const std::string text = b["grammar"].get<std::string>();
    key = "gbnf:" + text;
    build = [text] { return grammar::Grammar::parse(text); };
  }

  const bool has_tools = b.contains("tools") && !b["tools"].is_null();
  if (has_tools && !chat) throw bad_request("'tools' is for /v1/chat/completions", "tools");
  if (chat && has_tools) {
    const json& t = b["tools"];
    if (!t.is_array()) throw bad_request("'tools' must be a list", "tools");
    std::vector<std::string> names;
    for (size_t i = 0; i < t.size(); ++i) {
      const std::string p = "tools[" + std::to_string(i) + "]";
      if (!t[i].is_object() || t[i].value("type", "") != "function" || !t[i].contains("function") ||
          !t[i]["function"].is_object() || !t[i]["function"].contains("name") ||
          !t[i]["function"]["name"].is_string())
        throw bad_request("'" + p + "' must be {\"type\": \"function\", \"function\": {\"name\": ...}}", p);
      const json& f = t[i]["function"];
      if (f.contains("parameters") && !f["parameters"].is_object())
        throw bad_request("'" + p + ".function.parameters' must be a JSON Schema object", p);
      names.push_back(f["name"].get<std::string>());
    }
    std::string choice = t.empty() ? "none" : "auto", only;
    if (b.contains("tool_choice") && !b["tool_choice"].is_null()) {
      const json& tc = b["tool_choice"];
      if (tc.is_string()) {
        choice = tc.get<std::string>();
        if (choice != "none" && choice != "auto" && choice != "required")
          throw bad_request("'tool_choice' must be 'none', 'auto', 'required' or a function", "tool_choice");
      } else if (tc.is_object() && tc.contains("function") && tc["function"].is_object() &&
                 tc["function"].contains("name") && tc["function"]["name"].is_string()) {
        choice = "function";
        only = tc["function"]["name"].get<std::string>();
        if (std::find(names.begin(), names.end(), only) == names.end())
          throw bad_request("'tool_choice' names the function '" + only + "', which 'tools' does not have",
                            "tool_choice");
      } else {
        throw bad_request("'tool_choice' must be 'none', 'auto', 'required' or a function", "tool_choice");
      }
    }
    if ((choice == "required" || choice == "function") && t.empty())
      throw bad_request("'tool_choice' asks for a tool call but 'tools' is empty", "tool_choice");
    const bool parallel =
        b.contains("parallel_tool_calls") && !b["parallel_tool_calls"].is_null()
            ? (b["parallel_tool_calls"].is_boolean()
                   ? b["parallel_tool_calls"].get<bool>()
                   : throw bad_request("'parallel_tool_calls' must be a boolean", "parallel_tool_calls"))
            : true;
    tools->render = tools->parse = choice != "none";
    if (choice == "required" || choice == "function") {
      want("tool_choice");
      const ToolStyle style = m.tool_style;
      key = "tools:" + std::to_string(int(style)) + (parallel ? "p:" : "1:") + only + ":" + t.dump();
      build = [all = t, only, style, parallel] {
        return forced_calls(all, only, style, parallel && only.empty());
      };
    }
  }
  if (chat && !has_tools) {  // tool_choice without tools: only a choice of no call
    const json tc = b.value("tool_choice", json());
    if (!tc.is_null() && !(tc.is_string() && (tc == "none" || tc == "auto"))) {
      if (tc.is_string() && tc == "required")
        throw bad_request("'tool_choice' asks for a tool call but 'tools' is empty", "tool_choice");
      throw bad_request("'tool_choice' must be 'none' or 'auto' without 'tools'", "tool_choice");
    }
    const json pc = b.value("parallel_tool_calls", json());
    if (!pc.is_null() && !pc.is_boolean())
      throw bad_request("'parallel_tool_calls' must be a boolean", "parallel_tool_calls");
  }
  if (!build) return nullptr;
  if (!m.vocab || !m.grammars) throw bad_request("this server cannot constrain output", param);
  try {
    return m.grammars->get(key, build, m.vocab);
  } catch (const grammar::GrammarError& e) {
    throw bad_request(e.what(), param);
  }
}

// ---- ToolCallParser ----

bool ToolCallParser::add_call(const std::string& body) {
  json j;
  try {
    j = json::parse(body);
  } catch (const std::exception&) {
    return false;
  }
  std::vector<json> found;
  const json list = j.is_array() ? j : json::array({j});
  for (const auto& c : list) {
    if (!c.is_object() || !c.contains("name") || !c["name"].is_string()) return false;
    const json args = c.contains("arguments")    ? c["arguments"]
                      : c.contains("parameters") ? c["parameters"]
                                                 : json::object();
    found.push_back(
        {{"id", call_id()},
         {"type", "function"},
         {"function",
          {{"name", c["name"]}, {"arguments", args.is_string() ? args.get<std::string>() : args.dump()}}}});
  }
  if (found.empty()) return false;
  calls_.insert(calls_.end(), found.begin(), found.end());
  return true;
}

std::string ToolCallParser::feed(const std::string& text) {
  pending_ += text;
  std::string out;
  if (style_ == ToolStyle::Json) {
    if (json_mode_ < 0) {
      if (all_space(pending_)) return "";
      const size_t first = pending_.find_first_not_of(" \t\r\n");
      json_mode_ = pending_[first] == '{' || pending_[first] == '[' ? 1 : 0;
    }
    if (json_mode_ == 1) return "";
    out.swap(pending_);
    return out;
  }
  for (;;) {
    if (!inside_) {
      // Whitespace just before a call is not content: it is held until what follows it is known.
      const size_t at = pending_.find(kCallOpen);
      if (at == std::string::npos) {
        size_t hold = partial_suffix(pending_, kCallOpen);
        while (hold < pending_.size() &&
               std::isspace(static_cast<unsigned char>(pending_[pending_.size() - 1 - hold])))
          ++hold;
        out += pending_.substr(0, pending_.size() - hold);
        pending_.erase(0, pending_.size() - hold);
        break;
      }
      size_t end = at;
      while (end > 0 && std::isspace(static_cast<unsigned char>(pending_[end - 1]))) --end;
      out += pending_.substr(0, end);
      pending_.erase(0, at + kCallOpen.size());
      inside_ = true;
    } else {
      const size_t at = pending_.find(kCallClose);
      if (at == std::string::npos) break;
      const std::string body = pending_.substr(0, at);
      pending_.erase(0, at + kCallClose.size());
      inside_ = false;
      if (!add_call(body)) out += kCallOpen + body + kCallClose;
    }
  }
  return out;
}

std::string ToolCallParser::finish() {
  std::string rest;
  rest.swap(pending_);
  if (style_ == ToolStyle::Json) {
    if (json_mode_ == 1 && add_call(rest)) return "";
    return all_space(rest) && json_mode_ < 0 ? "" : rest;
  }
  if (inside_) {
    inside_ = false;
    if (add_call(rest)) return "";  // a call the model ended without its closing tag
    return kCallOpen + rest;
  }
  return !calls_.empty() && all_space(rest) ? "" : rest;  // whitespace after the last call
}

}  // namespace rill::openai
