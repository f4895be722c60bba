// The grammar engine: GBNF parsing, the byte matcher against two independent references (std::regex for
// grammars without recursion, a memoized backtracking recognizer for recursive ones), token masks against checking
// every token, and the regex and JSON Schema compilers.
#include <gtest/gtest.h>

#include <map>
#include <optional>
#include <random>
#include <regex>
#include <set>
#include <thread>

#include "grammar/grammar.h"
#include "grammar/json_schema.h"
#include "grammar/matcher.h"
#include "grammar/regex.h"

using namespace rill::grammar;

namespace {

std::shared_ptr<const Vocabulary> vocab_of(std::vector<std::string> tokens, std::vector<int32_t> ends = {}) {
  return std::make_shared<Vocabulary>(std::move(tokens), std::move(ends));
}

std::shared_ptr<CompiledGrammar> compile(const std::string& text,
                                         std::shared_ptr<const Vocabulary> v = vocab_of({"a"})) {
  return std::make_shared<CompiledGrammar>(Grammar::parse(text), std::move(v));
}

// The reference recognizer: the end positions each rule can reach from each start, memoized (terminates because
// built grammars have no left recursion).
class Reference {
 public:
  Reference(const Grammar& g, const std::string& text) : g_(g), s_(text) {}
  bool accepts() { return rule_ends(g_.root, 0).count(s_.size()) > 0; }

 private:
  std::set<size_t> seq_ends(int32_t pos, size_t i) {
    const Element& e = g_.elems[size_t(pos)];
    if (e.kind == Element::End) return {i};
    std::set<size_t> out;
    if (e.kind == Element::Bytes) {
      if (i < s_.size() && g_.classes[size_t(e.arg)].test(uint8_t(s_[i]))) out = seq_ends(pos + 1, i + 1);
      return out;
    }
    for (size_t j : rule_ends(e.arg, i))
      for (size_t k : seq_ends(pos + 1, j)) out.insert(k);
    return out;
  }
  const std::set<size_t>& rule_ends(int r, size_t i) {
    auto key = std::make_pair(r, i);
    auto it = memo_.find(key);
    if (it != memo_.end()) return it->second;
    std::set<size_t> out;
    for (int32_t a : g_.alts[size_t(r)])
      for (size_t k : seq_ends(a, i)) out.insert(k);
    return memo_[key] = out;
  }
  const Grammar& g_;
  const std::string& s_;
  std::map<std::pair<int, size_t>, std::set<size_t>> memo_;
};

// A random expression over {a, b, c}, as GBNF and as an ECMAScript regex (no recursion).
struct RandomExpr {
  std::mt19937 rng;
  int pick(int n) { return int(rng() % unsigned(n)); }
  void gen(int depth, std::string* gbnf, std::string* re) {
    const int kind = depth > 2 ? pick(2) : pick(5);
    if (kind == 0) {
      const char c = char('a' + pick(3));
      *gbnf += std::string("\"") + c + "\"";
      *re += c;
    } else if (kind == 1) {
      const bool neg = pick(4) == 0;
      std::string cls = neg ? "^" : "";
      cls += pick(2) ? "a-b" : "bc";
      *gbnf += "[" + cls + "]";
      *re += neg ? "[" + cls + "]" : "[" + cls + "]";
    } else if (kind == 2 || kind == 3) {  // a sequence or alternatives in a group
      const int n = 1 + pick(3);
      *gbnf += "(";
      *re += "(?:";
      for (int i = 0; i < n; ++i) {
        if (i) {
          if (kind == 3) *gbnf += " | ", *re += "|";
          else *gbnf += " ";
        }
        gen(depth + 1, gbnf, re);
      }
      *gbnf += ")";
      *re += ")";
    } else {
      std::string g, r;
      gen(depth + 1, &g, &r);
      static const char* ops[] = {"*", "+", "?", "{2}", "{1,3}", "{0,2}", "{2,}"};
      const char* op = ops[pick(7)];
      *gbnf += "(" + g + ")" + op;
      *re += "(?:" + r + ")" + op;
    }
  }
};

std::string random_text(std::mt19937& rng, int max_len, const std::string& alphabet = "abc") {
  std::string s(rng() % unsigned(max_len + 1), 'a');
  for (char& c : s) c = alphabet[rng() % alphabet.size()];
  return s;
}

}  // namespace

TEST(Grammar, ParsesGbnf) {
  auto g = compile("root ::= \"hi\" name  # a comment\nname ::= [a-z]+ | \"world\"\n");
  EXPECT_TRUE(g->accepts("hiworld"));
  EXPECT_TRUE(g->accepts("hix"));
  EXPECT_FALSE(g->accepts("hi"));
  EXPECT_FALSE(g->accepts("hiX"));
  EXPECT_TRUE(g->accepts_prefix("h"));
  // A rule may continue on the next line with '|'.
  EXPECT_TRUE(compile("root ::= \"a\"\n  | \"b\"\n")->accepts("b"));
  // Escapes and UTF-8 classes.
  auto u = compile(R"(root ::= [^"\\] "\u00e9" [\x41-\x42])");
  EXPECT_TRUE(u->accepts("\xe2\x82\xac\xc3\xa9" "B"));  // U+20AC, é, B
  EXPECT_FALSE(u->accepts("\"\xc3\xa9" "B"));
  EXPECT_FALSE(u->accepts("\xed\xa0\x80\xc3\xa9" "B"));  // a surrogate is not a character
}

TEST(Grammar, ErrorsNameTheRuleOrPlace) {
  auto message = [](const std::string& text) {
    try {
      Grammar::parse(text);
    } catch (const GrammarError& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_NE(message("root ::= x").find("'x' is used but not defined"), std::string::npos);
  EXPECT_NE(message("root ::= root \"a\" | \"b\"").find("'root' is left-recursive"), std::string::npos);
  EXPECT_NE(message("root ::= a\na ::= \"\"* a \"x\"").find("left-recursive"), std::string::npos);
  EXPECT_NE(message("root ::= \"a\"\nroot ::= \"b\"").find("defined twice"), std::string::npos);
  EXPECT_NE(message("root ::= \"a\n").find("line 1"), std::string::npos);
  EXPECT_NE(message("root ::= \"a\"\nx ::= [b").find("line 2"), std::string::npos);
  EXPECT_NE(message("start ::= \"a\"").find("no rule 'root'"), std::string::npos);
}

TEST(Grammar, RepetitionRunsInConstantStackDepth) {
  auto g = compile("root ::= \"[\" [a-z]* \"]\"");
  ParseState s = g->initial();
  s = g->advance(s, "[");
  for (int i = 0; i < 100000; ++i) s = g->advance(s, 'q');
  ASSERT_FALSE(s.dead());
  for (const Stack& st : s.stacks) EXPECT_LE(st.size(), 3u);
  EXPECT_TRUE(g->advance(s, "]").complete);
}

// Random grammars without recursion against std::regex: the same language, decided byte by byte.
TEST(Grammar, FuzzAgainstRegex) {
  RandomExpr gen{std::mt19937(7)};
  std::mt19937 rng(11);
  int compared = 0;
  for (int round = 0; round < 400; ++round) {
    std::string gbnf, re;
    gen.gen(0, &gbnf, &re);
    std::shared_ptr<CompiledGrammar> g;
    try {
      g = compile("root ::= " + gbnf);
    } catch (const GrammarError&) {
      continue;  // e.g. ("")* is left-recursive by our rules; std::regex has no such notion
    }
    const std::regex r(re, std::regex::ECMAScript);
    for (int k = 0; k < 30; ++k) {
      const std::string text = random_text(rng, 8);
      ASSERT_EQ(g->accepts(text), std::regex_match(text, r)) << "grammar " << gbnf << " regex " << re << " text '" << text << "'";
      ++compared;
    }
  }
  EXPECT_GT(compared, 8000);
}

// Random recursive grammars against the backtracking reference.
TEST(Grammar, FuzzRecursiveAgainstReference) {
  std::mt19937 rng(3);
  int compared = 0;
  for (int round = 0; round < 300; ++round) {
    const int rules = 1 + int(rng() % 3);
    std::string text;
    for (int r = 0; r < rules; ++r) {
      text += (r ? "r" + std::to_string(r) : std::string("root")) + " ::= ";
      const int alts = 1 + int(rng() % 3);
      for (int a = 0; a < alts; ++a) {
        if (a) text += " | ";
        const int items = int(rng() % 4);
        if (items == 0) text += "\"\"";
        for (int i = 0; i < items; ++i) {
          const int kind = int(rng() % 4);
          if (kind == 0) text += std::string(" \"") + char('a' + rng() % 3) + "\"";
          else if (kind == 1) text += " [a-b]";
          else if (kind == 2) text += " [bc]?";
          else {
            const int target = int(rng() % unsigned(rules));
            text += " " + (target ? "r" + std::to_string(target) : std::string("root"));
          }
        }
      }
      text += "\n";
    }
    std::shared_ptr<CompiledGrammar> g;
    try {
      g = compile(text);
    } catch (const GrammarError&) {
      continue;  // left-recursive or unused rules undefined
    }
    for (int k = 0; k < 40; ++k) {
      const std::string s = random_text(rng, 7);
      Reference ref(g->grammar(), s);
      ASSERT_EQ(g->accepts(s), ref.accepts()) << text << "text '" << s << "'";
      ++compared;
    }
  }
  EXPECT_GT(compared, 2000);
}

// The precomputed masks (accepted / uncertain tokens per position, whole masks cached by state) against
// checking each token's bytes from the state, along random walks through random grammars.
TEST(Grammar, MasksEqualCheckingEveryToken) {
  std::mt19937 rng(5);
  std::vector<std::string> tokens{"", "a", "b", "c", "ab", "ba", "abc", "cc", "bca", "aaaa", "cab", "\xc3\xa9", "x"};
  for (int i = 0; i < 40; ++i) tokens.push_back(random_text(rng, 5));
  tokens.push_back("</s>");
  const int32_t end = int32_t(tokens.size()) - 1;
  auto vocab = std::make_shared<Vocabulary>(tokens, std::vector<int32_t>{end});
  RandomExpr gen{std::mt19937(9)};
  int checked = 0;
  for (int round = 0; round < 200; ++round) {
    std::string gbnf, re;
    gen.gen(0, &gbnf, &re);
    std::shared_ptr<CompiledGrammar> g;
    try {
      g = compile("root ::= " + gbnf + " tail\ntail ::= \"\" | \"c\" tail", vocab);
    } catch (const GrammarError&) {
      continue;
    }
    Matcher m(g);
    for (int step = 0; step < 12; ++step) {
      std::vector<uint32_t> mask(size_t(vocab->mask_words()));
      m.fill_mask(mask.data());
      std::vector<int32_t> allowed;
      ParseState state = g->initial();
      for (int32_t id = 0; id < vocab->size(); ++id) {
        const bool bit = (mask[size_t(id) / 32] >> (id % 32)) & 1;
        Matcher probe = m;
        const bool ok = probe.accept(id);
        ASSERT_EQ(bit, ok) << gbnf << " token '" << tokens[size_t(id)] << "' after " << step << " tokens";
        if (ok) allowed.push_back(id);
        ++checked;
      }
      if (allowed.empty()) break;
      ASSERT_TRUE(m.accept(allowed[rng() % allowed.size()]));
    }
  }
  EXPECT_GT(checked, 20000);
}

// One CompiledGrammar shared by threads that fill masks and take tokens at once (as the engine's grammar threads
// do, each for its own sequences) gives every thread the masks a grammar of its own gives.
TEST(Grammar, SharedBetweenThreads) {
  std::mt19937 words_rng(3);
  std::vector<std::string> tokens;
  for (int c = 1; c < 128; ++c) tokens.emplace_back(1, char(c));
  for (int i = 0; i < 3000; ++i) tokens.push_back(random_text(words_rng, 6, "abz@.\" {}:,0123456789"));
  auto vocab = vocab_of(tokens);
  const std::string text =
      "root ::= \"{\" ws \"\\\"mail\\\": \\\"\" local \"@\" label (\".\" label)* \"\\\", \\\"n\\\": \" [0-9]{1,3} \"}\" ws root?\n"
      "local ::= [a-z0-9]{1,20}\nlabel ::= [a-z]{1,10}\nws ::= [ ]*";
  auto shared = compile(text, vocab);
  constexpr int kThreads = 8, kSteps = 60;
  std::vector<std::string> failures(kThreads);
  std::vector<int> steps(kThreads, 0);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t)
    threads.emplace_back([&, t] {
      auto own = compile(text, vocab);
      Matcher a(shared), b(own);
      std::mt19937 rng(uint32_t(100 + t % 4));  // pairs of threads walk the same way: the same states at once
      std::vector<uint32_t> ma(size_t(vocab->mask_words())), mb(ma.size());
      for (int step = 0; step < kSteps; ++step) {
        a.fill_mask(ma.data());
        b.fill_mask(mb.data());
        if (ma != mb) {
          failures[size_t(t)] = "masks differ at step " + std::to_string(step);
          return;
        }
        std::vector<int32_t> allowed;
        for (int32_t id = 0; id < vocab->size(); ++id)
          if ((ma[size_t(id) / 32] >> (id % 32)) & 1) allowed.push_back(id);
        if (allowed.empty()) return;
        const int32_t pick = allowed[rng() % allowed.size()];
        if (!a.accept(pick) || !b.accept(pick)) {
          failures[size_t(t)] = "token refused at step " + std::to_string(step);
          return;
        }
        ++steps[size_t(t)];
      }
    });
  for (auto& th : threads) th.join();
  for (int t = 0; t < kThreads; ++t) {
    EXPECT_EQ(failures[size_t(t)], "") << "thread " << t;
    EXPECT_EQ(steps[size_t(t)], kSteps) << "thread " << t;
  }
}

TEST(Grammar, MatcherRollsBack) {
  auto g = compile("root ::= \"ab\" \"c\"*", vocab_of({"a", "b", "c", "</s>"}, {3}));
  Matcher m(g);
  ASSERT_TRUE(m.accept(0));
  ASSERT_FALSE(m.accept(0));
  ASSERT_FALSE(m.complete());
  ASSERT_TRUE(m.accept(1));
  ASSERT_TRUE(m.complete());
  ASSERT_TRUE(m.accept(2));
  ASSERT_TRUE(m.accept(3));
  EXPECT_TRUE(m.finished());
  m.rollback(3);
  EXPECT_FALSE(m.complete());
  EXPECT_FALSE(m.accept(2));
  EXPECT_TRUE(m.accept(1));
}

TEST(Regex, MatchesLikeEcmaScript) {
  const std::vector<std::string> patterns = {"^[a-z]+$", "^\\d{3}-\\d{4}$", "^(ab|cd)*e?$", "^[^0-9]{2,3}$",
                                             "^\\w+@\\w+\\.com$", "^a.c$", "^(?:x|y){1,2}z+$", "^[\\s\\S]?$"};
  std::mt19937 rng(1);
  for (const std::string& p : patterns) {
    GrammarBuilder b;
    const int r = regex_rule(b, p, RegexOptions{});
    b.define(b.rule("root"), {GrammarBuilder::Seq{GrammarBuilder::ref(r)}});
    CompiledGrammar g(b.build("root"), vocab_of({"a"}));
    const std::regex ref(p, std::regex::ECMAScript);
    for (int k = 0; k < 3000; ++k) {
      const std::string s = random_text(rng, 9, "abcdexyz0123-@. \n");
      ASSERT_EQ(g.accepts(s), std::regex_match(s, ref)) << p << " on '" << s << "'";
    }
  }
  GrammarBuilder b;
  EXPECT_THROW(regex_rule(b, "(?=a)", RegexOptions{}), GrammarError);
  EXPECT_THROW(regex_rule(b, "(a)\\1", RegexOptions{}), GrammarError);
}

TEST(Regex, JsonStringEscapesAndSearch) {
  GrammarBuilder b;
  const int r = regex_rule(b, "a\"b", RegexOptions{true, true});
  b.define(b.rule("root"), {GrammarBuilder::Seq{GrammarBuilder::ref(r)}});
  CompiledGrammar g(b.build("root"), vocab_of({"a"}));
  EXPECT_TRUE(g.accepts("a\\\"b"));
  EXPECT_TRUE(g.accepts("xxa\\\"byy"));  // unanchored: a search
  EXPECT_FALSE(g.accepts("a\"b"));       // a bare quote would end the JSON string
  EXPECT_TRUE(g.accepts("\\nza\\\"b"));   // a newline before it, escaped
}

TEST(JsonSchema, CompilesAndConstrains) {
  const auto schema = nlohmann::ordered_json::parse(R"({
    "type": "object",
    "properties": {
      "name": {"type": "string", "maxLength": 3},
      "age": {"type": "integer", "minimum": 18, "maximum": 130},
      "tags": {"type": "array", "items": {"enum": ["a", "b"]}, "maxItems": 2},
      "ok": {"type": "boolean"}
    },
    "required": ["name", "age"],
    "additionalProperties": false
  })");
  CompiledGrammar g(json_schema_grammar(schema), vocab_of({"a"}));
  EXPECT_TRUE(g.accepts(R"({"name": "Bob", "age": 42})"));
  EXPECT_TRUE(g.accepts(R"({"name":"","age":18,"tags":["a","b"],"ok":true})"));
  EXPECT_TRUE(g.accepts("{\n  \"name\": \"x\",\n  \"age\": 130,\n  \"ok\": false\n}"));
  EXPECT_FALSE(g.accepts(R"({"name" : "x", "age": 20})"));  // no space before a colon
  EXPECT_FALSE(g.accepts(R"({"name": "Bobby", "age": 42})"));           // maxLength
  EXPECT_FALSE(g.accepts(R"({"name": "Bob", "age": 17})"));              // minimum
  EXPECT_FALSE(g.accepts(R"({"name": "Bob", "age": 131})"));             // maximum
  EXPECT_FALSE(g.accepts(R"({"name": "Bob"})"));                         // required
  EXPECT_FALSE(g.accepts(R"({"name": "Bob", "age": 20, "x": 1})"));      // additionalProperties
  EXPECT_FALSE(g.accepts(R"({"name": "Bob", "age": 20, "tags": ["a", "b", "a"]})"));  // maxItems
  EXPECT_FALSE(g.accepts(R"({"age": 20, "name": "Bob"})"));              // the schema's order
}

TEST(JsonSchema, IntegerRangesAreExact) {
  for (auto [lo, hi] : std::vector<std::pair<int, int>>{{-120, 45}, {7, 7}, {0, 1000}, {-5, -1}, {99, 101}, {13, 9870}}) {
    const auto schema = nlohmann::ordered_json{{"type", "integer"}, {"minimum", lo}, {"maximum", hi}};
    CompiledGrammar g(json_schema_grammar(schema), vocab_of({"a"}));
    for (int v = -200; v <= 10000; ++v) ASSERT_EQ(g.accepts(std::to_string(v)), v >= lo && v <= hi) << lo << ".." << hi << ": " << v;
    EXPECT_FALSE(g.accepts("-0"));
    EXPECT_FALSE(g.accepts("007"));
  }
  // Draft 4: a boolean exclusiveMinimum makes minimum exclusive.
  const auto draft4 = nlohmann::ordered_json::parse(R"({"type": "integer", "minimum": 5, "exclusiveMinimum": true, "maximum": 8})");
  CompiledGrammar d4(json_schema_grammar(draft4), vocab_of({"a"}));
  for (int v = 0; v < 12; ++v) EXPECT_EQ(d4.accepts(std::to_string(v)), v > 5 && v <= 8) << v;
  // Number bounds: [0, 1], and (0, 5).
  CompiledGrammar unit(json_schema_grammar(nlohmann::ordered_json{{"type", "number"}, {"minimum", 0}, {"maximum", 1}}), vocab_of({"a"}));
  for (const char* ok : {"0", "0.5", "0.999", "1"}) EXPECT_TRUE(unit.accepts(ok)) << ok;
  for (const char* bad : {"1.5", "2", "-0.1", "1e0"}) EXPECT_FALSE(unit.accepts(bad)) << bad;
  CompiledGrammar open5(json_schema_grammar(nlohmann::ordered_json{{"type", "number"}, {"exclusiveMinimum", 0}, {"exclusiveMaximum", 5}}),
                        vocab_of({"a"}));
  for (const char* ok : {"0.01", "1", "4.99", "3.5"}) EXPECT_TRUE(open5.accepts(ok)) << ok;
  for (const char* bad : {"0", "0.0", "5", "5.0"}) EXPECT_FALSE(open5.accepts(bad)) << bad;
  // Integer bounds of either sign, either one missing, inclusive or not: a number the grammar takes lies within
  // them; one strictly inside them (or on an inclusive bound, written as an integer) is taken, but for -0.
  struct Range {
    std::optional<double> lo, hi;
    bool lo_ex = false, hi_ex = false;
  };
  const std::vector<Range> ranges = {{-90.0, 90.0},  {-180.0, 180.0, true, false}, {-1.0, 0.0, true, false},
                                     {-5.0, -2.0},   {-5.0, -2.0, false, true},    {std::nullopt, 10.0},
                                     {std::nullopt, -3.0, false, true}, {-7.0, std::nullopt}, {0.0, 0.0},
                                     {-1.0, 1.0, true, true}};
  std::vector<std::string> numbers;
  for (int i = -200; i <= 200; ++i)
    for (const char* frac : {"", ".5", ".25", ".0", ".05", ".999"}) {
      numbers.push_back(std::to_string(i) + frac);
      if (i == 0) numbers.push_back(std::string("-0") + frac);
    }
  for (const Range& r : ranges) {
    nlohmann::ordered_json s{{"type", "number"}};
    if (r.lo) s[r.lo_ex ? "exclusiveMinimum" : "minimum"] = *r.lo;
    if (r.hi) s[r.hi_ex ? "exclusiveMaximum" : "maximum"] = *r.hi;
    CompiledGrammar g(json_schema_grammar(s), vocab_of({"a"}));
    for (const std::string& n : numbers) {
      const double v = std::stod(n);
      const bool above = !r.lo || (r.lo_ex ? v > *r.lo : v >= *r.lo), below = !r.hi || (r.hi_ex ? v < *r.hi : v <= *r.hi);
      const bool inside = (!r.lo || v > *r.lo) && (!r.hi || v < *r.hi) && !(v == 0 && n[0] == '-');  // -0: not written
      const bool on_bound = n.find('.') == std::string::npos && n != "-0" && above && below;
      if (g.accepts(n)) ASSERT_TRUE(above && below) << s.dump() << " took " << n;
      else ASSERT_FALSE(inside || on_bound) << s.dump() << " refused " << n;
    }
  }
  const auto open = nlohmann::ordered_json{{"type", "integer"}, {"exclusiveMinimum", 10}};
  CompiledGrammar g(json_schema_grammar(open), vocab_of({"a"}));
  EXPECT_FALSE(g.accepts("10"));
  EXPECT_TRUE(g.accepts("11"));
  EXPECT_TRUE(g.accepts("123456789012"));
}

TEST(JsonSchema, RefsAndRecursion) {
  const auto schema = nlohmann::ordered_json::parse(R"({
    "$defs": {"node": {"type": "object", "properties": {"v": {"type": "integer"},
              "kids": {"type": "array", "items": {"$ref": "#/$defs/node"}}}, "required": ["v"]}},
    "$ref": "#/$defs/node"
  })");
  CompiledGrammar g(json_schema_grammar(schema), vocab_of({"a"}));
  EXPECT_TRUE(g.accepts(R"({"v": 1, "kids": [{"v": 2}, {"v": 3, "kids": [{"v": 4, "kids": []}]}]})"));
  EXPECT_FALSE(g.accepts(R"({"v": 1, "kids": [{"w": 2}]})"));
}

TEST(JsonSchema, UnsupportedKeywordsAreNamed) {
  auto keyword = [](const char* text) {
    try {
      json_schema_grammar(nlohmann::ordered_json::parse(text));
    } catch (const SchemaError& e) {
      return e.keyword() + " @ " + e.path();
    }
    return std::string("accepted");
  };
  EXPECT_EQ(keyword(R"({"not": {"type": "string"}})"), "not @ #");
  EXPECT_EQ(keyword(R"({"type": "object", "properties": {"a": {"type": "number", "multipleOf": 3}}})"),
            "multipleOf @ #/properties/a");
  EXPECT_EQ(keyword(R"({"type": "string", "format": "hostname"})"), "format @ #");
  EXPECT_EQ(keyword(R"({"type": "array", "uniqueItems": true})"), "uniqueItems @ #");
  EXPECT_EQ(keyword(R"j({"type": "string", "pattern": "(?=x)"})j"), "pattern @ #");
  EXPECT_EQ(keyword(R"({"$ref": "http://x/y"})"), "$ref @ #");
  // Without a "type" the keywords still count: they were dropped (any value allowed) for these.
  EXPECT_EQ(keyword(R"({"multipleOf": 2})"), "multipleOf @ #");
  EXPECT_EQ(keyword(R"({"uniqueItems": true})"), "uniqueItems @ #");
  EXPECT_EQ(keyword(R"({"maxProperties": 1})"), "maxProperties @ #");
  EXPECT_EQ(keyword(R"({"minProperties": 2})"), "minProperties @ #");
  EXPECT_EQ(keyword(R"({"unevaluatedProperties": {}})"), "unevaluatedProperties @ #");
}

TEST(JsonSchema, JsonObjectModeAcceptsAnyObject) {
  CompiledGrammar g(json_object_grammar(), vocab_of({"a"}));
  EXPECT_TRUE(g.accepts(R"({"a": [1, 2.5e3, "x\"y", null, {"b": {}}], "c": true})"));
  EXPECT_FALSE(g.accepts(R"([1])"));
  EXPECT_FALSE(g.accepts(R"({"a": 01})"));
  EXPECT_FALSE(g.accepts(R"({"a": "\x"})"));
}

// ---- The schema corpus with a real tokenizer ----

#include <fstream>

#include "test_util.h"
#include "tokenizer/hf_tokenizer.h"

namespace {

std::shared_ptr<const Vocabulary> real_vocab() {
  static std::shared_ptr<const Vocabulary> v = [] {
    auto tok = rill::HfTokenizer::load(rill::test::shared("data/tokenizers/qwen2-style/tokenizer.json"));
    return std::make_shared<Vocabulary>(tok->token_bytes(), std::vector<int32_t>{tok->token_to_id("<|im_end|>")});
  }();
  return v;
}

nlohmann::ordered_json corpus() {
  std::ifstream f(std::string(RILL_TEST_DATA_DIR) + "/json_schemas.json");
  return nlohmann::ordered_json::parse(f);
}

}  // namespace

// Every schema of the corpus compiles; random walks through its masks (biased towards closing tokens so that they
// end) produce JSON that parses; and at some steps (the first two, the 13th and the 41st) the mask equals checking
// every token of a real 16k-token byte-level BPE vocabulary. (The outputs are validated against the schemas with ajv in the e2e test.)
TEST(JsonSchema, CorpusWalksParse) {
  const auto schemas = corpus();
  ASSERT_GE(schemas.size(), 100u);
  auto vocab = real_vocab();
  std::vector<int32_t> closing;
  for (int32_t id = 0; id < vocab->size(); ++id)
    if (vocab->bytes(id).find_first_of("\"}],") != std::string::npos) closing.push_back(id);
  std::mt19937 rng(17);
  int finished = 0, walks = 0;
  for (const auto& entry : schemas) {
    const std::string name = entry["name"];
    std::shared_ptr<CompiledGrammar> g;
    try {
      g = std::make_shared<CompiledGrammar>(json_schema_grammar(entry["schema"]), vocab);
    } catch (const std::exception& e) {
      FAIL() << name << ": " << e.what();
    }
    for (int walk = 0; walk < 3; ++walk, ++walks) {
      Matcher m(g);
      std::string out;
      std::vector<uint32_t> mask(size_t(vocab->mask_words()));
      for (int step = 0; step < 400 && !m.finished() && !m.complete(); ++step) {
        m.fill_mask(mask.data());
        auto allowed = [&](int32_t id) { return (mask[size_t(id) / 32] >> (id % 32)) & 1; };
        if (walk == 0 && (step < 2 || step == 12 || step == 40))
          for (int32_t id = 0; id < vocab->size(); ++id) {
            Matcher probe = m;
            ASSERT_EQ(bool(allowed(id)), probe.accept(id)) << name << ": token " << id << " after '" << out << "'";
          }
        std::vector<int32_t> pool;
        if (rng() % 2)
          for (int32_t id : closing)
            if (allowed(id)) pool.push_back(id);
        if (pool.empty())
          for (int32_t id = 0; id < vocab->size(); ++id)
            if (allowed(id)) pool.push_back(id);
        ASSERT_FALSE(pool.empty()) << name << ": no token allowed after '" << out << "'";
        const int32_t t = pool[rng() % pool.size()];
        ASSERT_TRUE(m.accept(t));
        out += vocab->bytes(t);
      }
      if (!m.complete()) continue;
      ++finished;
      EXPECT_NO_THROW({ const auto parsed = nlohmann::json::parse(out); (void)parsed; }) << name << ": " << out;
    }
  }
  EXPECT_GE(finished, walks * 8 / 10) << "most walks should end within 400 tokens";
}
