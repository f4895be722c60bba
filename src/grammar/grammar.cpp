#include "grammar/grammar.h"

#include <algorithm>
#include <cstdio>
#include <functional>

#include "core/utf8.h"

namespace rill::grammar {

// ---- GrammarBuilder ----

int GrammarBuilder::rule(const std::string& name) {
  auto it = by_name_.find(name);
  if (it != by_name_.end()) return it->second;
  const int r = int(names_.size());
  names_.push_back(name);
  rules_.emplace_back();
  defined_.push_back(false);
  by_name_[name] = r;
  return r;
}

int GrammarBuilder::fresh(const std::string& base) {
  for (int i = int(names_.size());; ++i) {
    const std::string name = base + "-" + std::to_string(i);
    if (!by_name_.count(name)) return rule(name);
  }
}

void GrammarBuilder::define(int r, std::vector<Seq> alternatives) {
  rules_[size_t(r)] = std::move(alternatives);
  defined_[size_t(r)] = true;
}

GrammarBuilder::Seq GrammarBuilder::literal(const std::string& s) {
  Seq seq;
  for (unsigned char c : s) seq.push_back(byte(c));
  return seq;
}

namespace {

// Splits the code points [lo, hi] (one UTF-8 length, no surrogates) into runs whose encodings are byte-range
// sequences (each byte position an independent range), as a regex engine's UTF-8 compiler does.
void utf8_sequences(uint32_t lo, uint32_t hi, std::vector<std::vector<std::pair<int, int>>>* out) {
  static constexpr uint32_t kMax[] = {0x7F, 0x7FF, 0xFFFF, 0x10FFFF};
  for (int n = 0; n < 3; ++n)  // keep one encoded length per range
    if (lo <= kMax[n] && hi > kMax[n]) {
      utf8_sequences(lo, kMax[n], out);
      utf8_sequences(kMax[n] + 1, hi, out);
      return;
    }
  if (hi < 0x80) {
    out->push_back({{int(lo), int(hi)}});
    return;
  }
  const int len = hi <= 0x7FF ? 2 : hi <= 0xFFFF ? 3 : 4;
  for (int i = 1; i < len; ++i) {
    const uint32_t m = (uint32_t(1) << (6 * i)) - 1;
    if ((lo & ~m) != (hi & ~m)) {
      if ((lo & m) != 0) {
        utf8_sequences(lo, lo | m, out);
        utf8_sequences((lo | m) + 1, hi, out);
        return;
      }
      if ((hi & m) != m) {
        utf8_sequences(lo, (hi & ~m) - 1, out);
        utf8_sequences(hi & ~m, hi, out);
        return;
      }
    }
  }
  std::string a, b;
  utf8::append(a, lo);
  utf8::append(b, hi);
  std::vector<std::pair<int, int>> seq;
  for (size_t k = 0; k < a.size(); ++k) seq.emplace_back(uint8_t(a[k]), uint8_t(b[k]));
  out->push_back(std::move(seq));
}

}  // namespace

GrammarBuilder::Ranges GrammarBuilder::code_points(const Ranges& ranges, bool negated) {
  Ranges r;
  for (auto [lo, hi] : ranges)
    if (lo <= hi) r.emplace_back(lo, std::min<uint32_t>(hi, 0x10FFFF));
  std::sort(r.begin(), r.end());
  Ranges merged;
  for (auto x : r) {
    if (!merged.empty() && x.first <= merged.back().second + 1) merged.back().second = std::max(merged.back().second, x.second);
    else merged.push_back(x);
  }
  if (negated) {
    Ranges inv;
    uint32_t next = 0;
    for (auto [lo, hi] : merged) {
      if (lo > next) inv.emplace_back(next, lo - 1);
      next = hi + 1;
    }
    if (next <= 0x10FFFF) inv.emplace_back(next, 0x10FFFF);
    merged = std::move(inv);
  }
  Ranges valid;
  for (auto [lo, hi] : merged) {
    if (lo < 0xD800 && hi >= 0xD800) {
      valid.emplace_back(lo, 0xD7FF);
      if (hi > 0xDFFF) valid.emplace_back(0xE000, hi);
    } else if (lo >= 0xD800 && lo <= 0xDFFF) {
      if (hi > 0xDFFF) valid.emplace_back(0xE000, hi);
    } else {
      valid.emplace_back(lo, hi);
    }
  }
  return valid;
}

int GrammarBuilder::char_class(const Ranges& ranges, bool negated) {
  const Ranges valid = code_points(ranges, negated);
  std::string key;
  for (auto [lo, hi] : valid) key += std::to_string(lo) + "-" + std::to_string(hi) + ",";
  auto it = class_rules_.find(key);
  if (it != class_rules_.end()) return it->second;

  std::vector<std::vector<std::pair<int, int>>> seqs;
  for (auto [lo, hi] : valid) utf8_sequences(lo, hi, &seqs);
  // Sequences of one byte share a single class; longer ones are alternatives of their own.
  std::vector<Seq> alts;
  Item single;
  bool any_single = false;
  for (const auto& s : seqs) {
    if (s.size() == 1) {
      single.bytes.set_range(s[0].first, s[0].second);
      any_single = true;
      continue;
    }
    Seq seq;
    for (auto [a, b] : s) {
      Item i;
      i.bytes.set_range(a, b);
      seq.push_back(i);
    }
    alts.push_back(std::move(seq));
  }
  if (any_single) alts.insert(alts.begin(), Seq{single});
  const int rr = fresh("char");
  define(rr, std::move(alts));  // no alternatives at all: a class that matches nothing
  class_rules_[key] = rr;
  return rr;
}

GrammarBuilder::Item GrammarBuilder::repeat(const Item& item, int min, int max, const std::string& base) {
  // x{min,max} = x ... x (min times) then the rest: unbounded `star ::= x star | ""`, or bounded nested options
  // `opt_k ::= x opt_(k-1) | ""`, which never leave two ways to split the same text.
  const int r = fresh(base);
  Seq seq(size_t(min), item);
  if (max < 0) {
    const int star = fresh(base + "-star");
    define(star, {Seq{item, ref(star)}, Seq{}});
    seq.push_back(ref(star));
  } else if (max > min) {
    int tail = -1;
    for (int k = 0; k < max - min; ++k) {
      const int opt = fresh(base + "-opt");
      Seq more{item};
      if (tail >= 0) more.push_back(ref(tail));
      define(opt, {more, Seq{}});
      tail = opt;
    }
    seq.push_back(ref(tail));
  }
  define(r, {seq});
  return ref(r);
}

// Token sets are computed per grammar position, from the rule on top of the stack alone (matcher.h); a token that
// runs past the end of that rule is checked against the whole stack at every mask that needs it. So a repetition
// of a one-character rule (a JSON string's `char*`) left every token longer than one byte to that check. Here small
// rules without references are written into the rules that use them, when that makes the user a small rule without
// references too (a character class into json-char), or when the user is a repetition (`star ::= x star | ""`): then
// the repetition's own positions consume the characters, and only tokens that leave it (that close the string)
// are left to the check. Bounded repetitions (nested options) are left as they are: written out, each level would
// be a position of its own to compute.
std::vector<std::vector<GrammarBuilder::Seq>> GrammarBuilder::inline_leaves(const std::vector<int>& order) const {
  constexpr size_t kLeafAlternatives = 16, kRepetitionAlternatives = 64;
  std::vector<std::vector<Seq>> rules = rules_;
  auto leaf = [&](int q) {
    if (rules[size_t(q)].size() > kLeafAlternatives) return false;
    for (const Seq& s : rules[size_t(q)])
      for (const Item& i : s)
        if (i.is_rule) return false;
    return true;
  };
  for (bool changed = true; changed;) {
    changed = false;
    for (int r : order) {
      bool refs = false, repetition = false, only_leaves = true;
      for (const Seq& s : rules[size_t(r)]) {
        for (const Item& i : s) {
          if (!i.is_rule) continue;
          refs = true;
          if (i.rule != r && !leaf(i.rule)) only_leaves = false;
        }
        repetition = repetition || (!s.empty() && s.back().is_rule && s.back().rule == r);
      }
      if (!refs || (!repetition && !only_leaves)) continue;
      // Every reference to a leaf written out, one alternative per choice.
      std::vector<Seq> out = rules[size_t(r)];
      const size_t limit = repetition ? kRepetitionAlternatives : kLeafAlternatives;
      bool grew = true, inlined = false;
      while (grew && out.size() <= limit) {
        grew = false;
        std::vector<Seq> next;
        for (const Seq& s : out) {
          size_t k = 0;
          while (k < s.size() && !(s[k].is_rule && s[k].rule != r && leaf(s[k].rule))) ++k;
          if (k == s.size()) {
            next.push_back(s);
            continue;
          }
          for (const Seq& body : rules[size_t(s[k].rule)]) {
            Seq t(s.begin(), s.begin() + int64_t(k));
            t.insert(t.end(), body.begin(), body.end());
            t.insert(t.end(), s.begin() + int64_t(k) + 1, s.end());
            next.push_back(std::move(t));
          }
          grew = inlined = true;
        }
        out = std::move(next);
      }
      if (!inlined || grew || out.size() > limit) continue;  // nothing to write out, or it would not stay small
      rules[size_t(r)] = std::move(out);
      changed = true;
    }
  }
  return rules;
}

Grammar GrammarBuilder::build(const std::string& root_name) const {
  auto root_it = by_name_.find(root_name);
  if (root_it == by_name_.end() || !defined_[size_t(root_it->second)])
    throw GrammarError("grammar: there is no rule '" + root_name + "' to start from");
  // Reachable rules, each defined.
  const int n = int(names_.size());
  std::vector<int> order, index(size_t(n), -1);
  std::vector<int> todo{root_it->second};
  index[size_t(root_it->second)] = 0;
  order.push_back(root_it->second);
  while (!todo.empty()) {
    const int r = todo.back();
    todo.pop_back();
    if (!defined_[size_t(r)]) throw GrammarError("grammar: rule '" + names_[size_t(r)] + "' is used but not defined");
    for (const Seq& s : rules_[size_t(r)])
      for (const Item& i : s)
        if (i.is_rule && index[size_t(i.rule)] < 0) {
          index[size_t(i.rule)] = int(order.size());
          order.push_back(i.rule);
          todo.push_back(i.rule);
        }
  }
  // Nullable rules, then left recursion: a rule that reaches itself before consuming a byte.
  std::vector<bool> nullable(size_t(n), false);
  for (bool changed = true; changed;) {
    changed = false;
    for (int r : order) {
      if (nullable[size_t(r)]) continue;
      for (const Seq& s : rules_[size_t(r)]) {
        bool all = true;
        for (const Item& i : s) all = all && i.is_rule && nullable[size_t(i.rule)];
        if (all) {
          nullable[size_t(r)] = changed = true;
          break;
        }
      }
    }
  }
  std::vector<int> state(size_t(n), 0);  // 0 unvisited, 1 on the path, 2 done
  std::function<void(int)> visit = [&](int r) {
    state[size_t(r)] = 1;
    for (const Seq& s : rules_[size_t(r)])
      for (const Item& i : s) {
        if (!i.is_rule) break;
        if (state[size_t(i.rule)] == 1)
          throw GrammarError("grammar: rule '" + names_[size_t(i.rule)] +
                             "' is left-recursive (it can reach itself before matching any text)");
        if (state[size_t(i.rule)] == 0) visit(i.rule);
        if (!nullable[size_t(i.rule)]) break;
      }
    state[size_t(r)] = 2;
  };
  for (int r : order)
    if (state[size_t(r)] == 0) visit(r);

  const std::vector<std::vector<Seq>> rules = inline_leaves(order);
  // The rules still reachable, renumbered.
  order.assign(1, root_it->second);
  std::fill(index.begin(), index.end(), -1);
  index[size_t(root_it->second)] = 0;
  for (size_t k = 0; k < order.size(); ++k)
    for (const Seq& s : rules[size_t(order[k])])
      for (const Item& i : s)
        if (i.is_rule && index[size_t(i.rule)] < 0) {
          index[size_t(i.rule)] = int(order.size());
          order.push_back(i.rule);
        }

  Grammar g;
  g.root = 0;
  std::map<ByteSet, int> class_ids;
  for (int r : order) {
    g.names.push_back(names_[size_t(r)]);
    std::vector<int32_t> starts;
    for (const Seq& s : rules[size_t(r)]) {
      starts.push_back(int32_t(g.elems.size()));
      for (const Item& i : s) {
        Element e;
        if (i.is_rule) {
          e.kind = Element::Ref;
          e.arg = index[size_t(i.rule)];
        } else {
          auto [it, added] = class_ids.emplace(i.bytes, int(g.classes.size()));
          if (added) g.classes.push_back(i.bytes);
          e.kind = Element::Bytes;
          e.arg = it->second;
        }
        g.elems.push_back(e);
      }
      g.elems.push_back(Element{Element::End, 0});
    }
    g.alts.push_back(std::move(starts));
  }
  return g;
}

// ---- GBNF text ----

namespace {

class Parser {
 public:
  Parser(const std::string& text, GrammarBuilder& b) : s_(text), b_(b) {}

  void parse() {
    skip(true);
    while (i_ < s_.size()) {
      const std::string name = word();
      if (name.empty()) fail("expected a rule name");
      skip(false);
      if (s_.compare(i_, 3, "::=") != 0) fail("expected '::=' after '" + name + "'");
      i_ += 3;
      skip(true);
      const int r = b_.rule(name);
      if (b_.defined(r)) fail("rule '" + name + "' is defined twice");
      b_.define(r, alternatives(false));
      if (i_ < s_.size() && s_[i_] != '\n' && s_[i_] != '\r') fail("unexpected character");
      skip(true);
    }
  }

 private:
  [[noreturn]] void fail(const std::string& what) const {
    int line = 1, col = 1;
    for (size_t k = 0; k < i_ && k < s_.size(); ++k) {
      if (s_[k] == '\n') ++line, col = 1;
      else ++col;
    }
    throw GrammarError("grammar: " + what + " at line " + std::to_string(line) + ", column " + std::to_string(col));
  }

  // Skips spaces, tabs and comments; newlines too when `newlines` (inside a group, between rules).
  void skip(bool newlines) {
    while (i_ < s_.size()) {
      const char c = s_[i_];
      if (c == ' ' || c == '\t' || (newlines && (c == '\n' || c == '\r'))) {
        ++i_;
      } else if (c == '#') {
        while (i_ < s_.size() && s_[i_] != '\n') ++i_;
      } else {
        break;
      }
    }
  }

  static bool word_char(char c) { return std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_'; }

  std::string word() {
    const size_t start = i_;
    while (i_ < s_.size() && word_char(s_[i_])) ++i_;
    return s_.substr(start, i_ - start);
  }

  // After a newline outside a group: does the rule go on (a line starting with '|')?
  bool continues() {
    size_t k = i_;
    while (k < s_.size() && (s_[k] == ' ' || s_[k] == '\t' || s_[k] == '\n' || s_[k] == '\r')) ++k;
    if (k < s_.size() && s_[k] == '|') {
      i_ = k;
      return true;
    }
    return false;
  }

  std::vector<GrammarBuilder::Seq> alternatives(bool nested) {
    std::vector<GrammarBuilder::Seq> alts{sequence(nested)};
    for (;;) {
      if (i_ < s_.size() && s_[i_] == '|') {
        ++i_;
        skip(true);
        alts.push_back(sequence(nested));
      } else if (!nested && continues()) {
        continue;
      } else {
        return alts;
      }
    }
  }

  GrammarBuilder::Seq sequence(bool nested) {
    GrammarBuilder::Seq seq;
    for (;;) {
      if (i_ >= s_.size()) return seq;
      const char c = s_[i_];
      size_t first = seq.size();
      if (c == '"') {
        ++i_;
        std::string lit;
        while (i_ < s_.size() && s_[i_] != '"') {
          if (s_[i_] == '\n') fail("unterminated string");
          utf8::append(lit, escaped_char());
        }
        if (i_ >= s_.size()) fail("unterminated string");
        ++i_;
        for (auto& it : GrammarBuilder::literal(lit)) seq.push_back(it);
        if (lit.empty()) first = seq.size();
        if (lit.size() != 1 && peek_postfix()) {  // a postfix applies to the whole literal
          const int r = b_.fresh("lit");
          b_.define(r, {GrammarBuilder::Seq(seq.begin() + int64_t(first), seq.end())});
          seq.resize(first);
          seq.push_back(GrammarBuilder::ref(r));
        }
      } else if (c == '[') {
        ++i_;
        bool neg = false;
        if (i_ < s_.size() && s_[i_] == '^') neg = true, ++i_;
        std::vector<std::pair<uint32_t, uint32_t>> ranges;
        while (i_ < s_.size() && s_[i_] != ']') {
          const uint32_t lo = escaped_char();
          uint32_t hi = lo;
          if (i_ + 1 < s_.size() && s_[i_] == '-' && s_[i_ + 1] != ']') {
            ++i_;
            hi = escaped_char();
          }
          if (hi < lo) fail("a character range goes backwards");
          ranges.emplace_back(lo, hi);
        }
        if (i_ >= s_.size()) fail("unterminated character class");
        ++i_;
        seq.push_back(char_item(ranges, neg));
      } else if (c == '.') {
        ++i_;
        seq.push_back(char_item({}, true));
      } else if (c == '(') {
        ++i_;
        skip(true);
        auto alts = alternatives(true);
        if (i_ >= s_.size() || s_[i_] != ')') fail("expected ')'");
        ++i_;
        if (alts.size() == 1 && alts[0].size() == 1) {
          seq.push_back(alts[0][0]);
        } else {
          const int r = b_.fresh("group");
          b_.define(r, std::move(alts));
          seq.push_back(GrammarBuilder::ref(r));
        }
      } else if (word_char(c)) {
        const size_t save = i_;
        const std::string name = word();
        // A name followed by '::=' starts the next rule.
        size_t k = i_;
        while (k < s_.size() && (s_[k] == ' ' || s_[k] == '\t')) ++k;
        if (s_.compare(k, 3, "::=") == 0) {
          i_ = save;
          if (nested) fail("expected ')' before the next rule");
          return seq;
        }
        seq.push_back(GrammarBuilder::ref(b_.rule(name)));
      } else {
        return seq;
      }
      postfix(seq);
      skip(nested);
    }
  }

  bool peek_postfix() const {
    return i_ < s_.size() && (s_[i_] == '*' || s_[i_] == '+' || s_[i_] == '?' || s_[i_] == '{');
  }

  void postfix(GrammarBuilder::Seq& seq) {
    while (peek_postfix()) {
      if (seq.empty()) fail("a repetition needs something to repeat");
      const GrammarBuilder::Item last = seq.back();
      int lo = 0, hi = -1;
      const char c = s_[i_++];
      if (c == '+') lo = 1;
      else if (c == '?') hi = 1;
      else if (c == '{') {
        skip(false);
        lo = number();
        skip(false);
        if (i_ < s_.size() && s_[i_] == ',') {
          ++i_;
          skip(false);
          hi = i_ < s_.size() && std::isdigit(static_cast<unsigned char>(s_[i_])) ? number() : -1;
        } else {
          hi = lo;
        }
        skip(false);
        if (i_ >= s_.size() || s_[i_] != '}') fail("expected '}'");
        ++i_;
        if (hi >= 0 && hi < lo) fail("a repetition's maximum is below its minimum");
        if (lo > 10000 || hi > 10000) fail("a repetition count above 10000");
      }
      seq.back() = b_.repeat(last, lo, hi, "rep");
    }
  }

  int number() {
    const size_t start = i_;
    while (i_ < s_.size() && std::isdigit(static_cast<unsigned char>(s_[i_])) && i_ - start < 6) ++i_;
    if (i_ == start) fail("expected a number");
    return std::stoi(s_.substr(start, i_ - start));
  }

  GrammarBuilder::Item char_item(const std::vector<std::pair<uint32_t, uint32_t>>& ranges, bool neg) {
    bool ascii = !neg;
    for (auto [lo, hi] : ranges) ascii = ascii && hi < 0x80;
    if (ascii) {
      GrammarBuilder::Item it;
      for (auto [lo, hi] : ranges) it.bytes.set_range(int(lo), int(hi));
      return it;
    }
    return GrammarBuilder::ref(b_.char_class(ranges, neg));
  }

  uint32_t hex(int digits) {
    uint32_t v = 0;
    for (int k = 0; k < digits; ++k, ++i_) {
      if (i_ >= s_.size() || !std::isxdigit(static_cast<unsigned char>(s_[i_]))) fail("expected a hex digit");
      const char c = s_[i_];
      v = v * 16 + uint32_t(std::isdigit(static_cast<unsigned char>(c)) ? c - '0' : (std::tolower(c) - 'a' + 10));
    }
    if (v > 0x10FFFF) fail("a code point above U+10FFFF");
    return v;
  }

  // One character of a literal or class, escapes decoded.
  uint32_t escaped_char() {
    if (s_[i_] != '\\') {
      if (utf8::sequence_length(s_, i_) == 0) fail("the grammar is not valid UTF-8");
      return utf8::next(s_, i_);
    }
    ++i_;
    if (i_ >= s_.size()) fail("an escape at the end of the grammar");
    const char c = s_[i_++];
    switch (c) {
      case 'n': return '\n';
      case 'r': return '\r';
      case 't': return '\t';
      case 'x': return hex(2);
      case 'u': return hex(4);
      case 'U': return hex(8);
      case '\\': case '"': case '[': case ']': case '-': case '/': case '^': case '.': return uint32_t(c);
      default: --i_; fail(std::string("unknown escape '\\") + c + "'");
    }
  }

  const std::string& s_;
  GrammarBuilder& b_;
  size_t i_ = 0;
};

std::string class_text(const ByteSet& s) {
  std::string out = "[";
  char buf[8];
  for (int b = 0; b < 256;) {
    if (!s.test(uint8_t(b))) {
      ++b;
      continue;
    }
    int e = b;
    while (e + 1 < 256 && s.test(uint8_t(e + 1))) ++e;
    std::snprintf(buf, sizeof buf, "\\x%02X", b);
    out += buf;
    if (e > b) {
      std::snprintf(buf, sizeof buf, "-\\x%02X", e);
      out += buf;
    }
    b = e + 1;
  }
  return out + "]";
}

}  // namespace

Grammar Grammar::parse(const std::string& text, const std::string& root) {
  GrammarBuilder b;
  Parser(text, b).parse();
  return b.build(root);
}

std::string Grammar::to_text() const {
  std::string out;
  for (size_t r = 0; r < alts.size(); ++r) {
    out += names[r] + " ::=";
    for (size_t a = 0; a < alts[r].size(); ++a) {
      if (a) out += " |";
      for (int32_t p = alts[r][a]; elems[size_t(p)].kind != Element::End; ++p) {
        const Element& e = elems[size_t(p)];
        out += " " + (e.kind == Element::Ref ? names[size_t(e.arg)] : class_text(classes[size_t(e.arg)]));
      }
      if (elems[size_t(alts[r][a])].kind == Element::End) out += " \"\"";
    }
    out += "\n";
  }
  return out;
}

}  // namespace rill::grammar
