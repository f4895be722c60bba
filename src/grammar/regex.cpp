#include "grammar/regex.h"

#include <cctype>

#include "core/utf8.h"

namespace rill::grammar {

namespace {

using Ranges = GrammarBuilder::Ranges;
using Item = GrammarBuilder::Item;
using Seq = GrammarBuilder::Seq;

const Ranges kDigit{{'0', '9'}};
const Ranges kWord{{'0', '9'}, {'A', 'Z'}, {'_', '_'}, {'a', 'z'}};
const Ranges kSpace{{'\t', '\r'}, {' ', ' '}, {0xA0, 0xA0}, {0x1680, 0x1680}, {0x2000, 0x200A},
                    {0x2028, 0x2029}, {0x202F, 0x202F}, {0x205F, 0x205F}, {0x3000, 0x3000}, {0xFEFF, 0xFEFF}};

// The JSON escape of a character that a JSON string cannot hold as it is ("", "\\" or a control character).
std::string json_escape(uint32_t c) {
  switch (c) {
    case '"': return "\\\"";
    case '\\': return "\\\\";
    case '\n': return "\\n";
    case '\r': return "\\r";
    case '\t': return "\\t";
    case '\b': return "\\b";
    case '\f': return "\\f";
    default: {
      static const char* hex = "0123456789abcdef";
      return std::string("\\u00") + hex[(c >> 4) & 15] + hex[c & 15];
    }
  }
}

bool needs_escape(uint32_t c) { return c < 0x20 || c == '"' || c == '\\'; }

class RegexParser {
 public:
  RegexParser(GrammarBuilder& b, const std::string& s, const RegexOptions& o) : b_(b), s_(s), o_(o) {}

  int parse() {
    bool start = false, end = false;
    if (i_ < s_.size() && s_[i_] == '^') start = true, ++i_;
    std::vector<Seq> alts = alternatives(/*top=*/true, &end);
    if (i_ < s_.size()) fail("unbalanced ')'");
    Seq seq;
    const bool anywhere = o_.search;
    if (anywhere && !start) seq.push_back(any_star());
    if (alts.size() == 1) {
      seq.insert(seq.end(), alts[0].begin(), alts[0].end());
    } else {
      const int r = b_.fresh("re-alt");
      b_.define(r, std::move(alts));
      seq.push_back(GrammarBuilder::ref(r));
    }
    if (anywhere && !end) seq.push_back(any_star());
    const int r = b_.fresh("regex");
    b_.define(r, {seq});
    return r;
  }

 private:
  [[noreturn]] void fail(const std::string& what) const {
    throw GrammarError("pattern: " + what + " at offset " + std::to_string(i_) + " of '" + s_ + "'");
  }

  Item any_star() { return b_.repeat(set(Ranges{{0, 0x10FFFF}}, false), 0, -1, "re-any"); }

  // A character set as an item (JSON escapes added for the characters that need them).
  Item set(const Ranges& ranges, bool negated) {
    const Ranges cps = GrammarBuilder::code_points(ranges, negated);
    Ranges plain;
    std::vector<Seq> escapes;
    for (auto [lo, hi] : cps) {
      for (uint32_t c = lo; o_.json_string && c <= hi && c < 0x80; ++c)
        if (needs_escape(c)) escapes.push_back(GrammarBuilder::literal(json_escape(c)));
      if (!o_.json_string) {
        plain.emplace_back(lo, hi);
        continue;
      }
      // The plain part: the range without the characters that need escapes.
      uint32_t from = lo;
      for (uint32_t c = lo; c <= hi && c < 0x80; ++c)
        if (needs_escape(c)) {
          if (c > from) plain.emplace_back(from, c - 1);
          from = c + 1;
        }
      if (from <= hi) plain.emplace_back(from, hi);
    }
    Item plain_item;
    bool ascii = true;
    for (auto [lo, hi] : plain) ascii = ascii && hi < 0x80;
    if (ascii) {
      for (auto [lo, hi] : plain) plain_item.bytes.set_range(int(lo), int(hi));
    } else {
      plain_item = GrammarBuilder::ref(b_.char_class(plain, false));
    }
    if (escapes.empty()) return plain_item;
    if (!plain.empty()) escapes.insert(escapes.begin(), Seq{plain_item});
    const int r = b_.fresh("re-chars");
    b_.define(r, std::move(escapes));
    return GrammarBuilder::ref(r);
  }

  Seq literal(uint32_t c) {
    if (o_.json_string && needs_escape(c)) return GrammarBuilder::literal(json_escape(c));
    std::string bytes;
    utf8::append(bytes, c);
    return GrammarBuilder::literal(bytes);
  }

  std::vector<Seq> alternatives(bool top, bool* end) {
    std::vector<Seq> alts{sequence(top, end)};
    while (i_ < s_.size() && s_[i_] == '|') {
      ++i_;
      alts.push_back(sequence(top, end));
    }
    return alts;
  }

  Seq sequence(bool top, bool* end) {
    Seq seq;
    while (i_ < s_.size() && s_[i_] != '|' && s_[i_] != ')') {
      if (s_[i_] == '$') {
        ++i_;
        if (!top || (i_ < s_.size())) fail("'$' is supported only at the end of the pattern");
        *end = true;
        break;
      }
      if (s_[i_] == '^') fail("'^' is supported only at the start of the pattern");
      Seq atom_items = atom();
      quantify(&seq, std::move(atom_items));
    }
    return seq;
  }

  Seq atom() {
    const char c = s_[i_];
    if (c == '(') {
      ++i_;
      if (s_.compare(i_, 2, "?:") == 0) {
        i_ += 2;
      } else if (s_.compare(i_, 2, "?<") == 0 && s_.compare(i_, 3, "?<=") != 0 && s_.compare(i_, 3, "?<!") != 0) {
        const size_t close = s_.find('>', i_);
        if (close == std::string::npos) fail("unterminated group name");
        i_ = close + 1;
      } else if (i_ < s_.size() && s_[i_] == '?') {
        fail("lookarounds are not supported");
      }
      bool unused = false;
      std::vector<Seq> alts = alternatives(false, &unused);
      if (i_ >= s_.size() || s_[i_] != ')') fail("missing ')'");
      ++i_;
      const int r = b_.fresh("re-group");
      b_.define(r, std::move(alts));
      return Seq{GrammarBuilder::ref(r)};
    }
    if (c == '[') return Seq{char_set()};
    if (c == '.') {
      ++i_;
      return Seq{set(Ranges{{'\n', '\n'}, {'\r', '\r'}, {0x2028, 0x2029}}, true)};
    }
    if (c == '*' || c == '+' || c == '?') fail("nothing to repeat");
    if (c == '\\') {
      ++i_;
      Ranges r;
      bool neg = false;
      if (class_escape(&r, &neg)) return Seq{set(r, neg)};
      return literal(escape_char());
    }
    if (utf8::sequence_length(s_, i_) == 0) fail("the pattern is not valid UTF-8");
    return literal(utf8::next(s_, i_));
  }

  // \d \w \s and their negations (s_[i_] just after the backslash).
  bool class_escape(Ranges* r, bool* neg) {
    if (i_ >= s_.size()) fail("a '\\' at the end");
    const char c = s_[i_];
    const char lower = char(std::tolower(static_cast<unsigned char>(c)));
    if (lower != 'd' && lower != 'w' && lower != 's') return false;
    ++i_;
    *r = lower == 'd' ? kDigit : lower == 'w' ? kWord : kSpace;
    *neg = std::isupper(static_cast<unsigned char>(c));
    return true;
  }

  uint32_t hex(int n) {
    uint32_t v = 0;
    for (int k = 0; k < n; ++k, ++i_) {
      if (i_ >= s_.size() || !std::isxdigit(static_cast<unsigned char>(s_[i_]))) fail("expected a hex digit");
      const char c = s_[i_];
      v = v * 16 + uint32_t(std::isdigit(static_cast<unsigned char>(c)) ? c - '0' : std::tolower(c) - 'a' + 10);
    }
    return v;
  }

  // The character of an escape other than a class (s_[i_] just after the backslash).
  uint32_t escape_char(bool in_class = false) {
    if (i_ >= s_.size()) fail("a '\\' at the end");
    const char c = s_[i_++];
    switch (c) {
      case 'n': return '\n';
      case 'r': return '\r';
      case 't': return '\t';
      case 'f': return '\f';
      case 'v': return '\v';
      case '0': return 0;
      case 'x': return hex(2);
      case 'u':
        if (i_ < s_.size() && s_[i_] == '{') {
          ++i_;
          uint32_t v = 0;
          while (i_ < s_.size() && s_[i_] != '}') v = v * 16 + hex(1);
          if (i_ >= s_.size() || v > 0x10FFFF) fail("bad \\u{...} escape");
          ++i_;
          return v;
        }
        return hex(4);
      case 'b':
        if (in_class) return '\b';
        --i_;
        fail("word boundaries (\\b) are not supported");
      case 'B': --i_; fail("word boundaries (\\B) are not supported");
      default:
        if (std::isdigit(static_cast<unsigned char>(c))) {
          --i_;
          fail("back-references are not supported");
        }
        if (std::isalpha(static_cast<unsigned char>(c))) {
          --i_;
          fail(std::string("unknown escape '\\") + c + "'");
        }
        --i_;
        return utf8::next(s_, i_);
    }
  }

  Item char_set() {
    ++i_;  // [
    bool neg = false;
    if (i_ < s_.size() && s_[i_] == '^') neg = true, ++i_;
    Ranges ranges;
    bool first = true;
    while (i_ < s_.size() && (s_[i_] != ']' || (first && false))) {
      first = false;
      uint32_t lo;
      if (s_[i_] == '\\') {
        ++i_;
        Ranges r;
        bool n = false;
        if (class_escape(&r, &n)) {
          if (n) r = GrammarBuilder::code_points(r, true);
          ranges.insert(ranges.end(), r.begin(), r.end());
          continue;
        }
        lo = escape_char(true);
      } else {
        if (utf8::sequence_length(s_, i_) == 0) fail("the pattern is not valid UTF-8");
        lo = utf8::next(s_, i_);
      }
      uint32_t hi = lo;
      if (i_ + 1 < s_.size() && s_[i_] == '-' && s_[i_ + 1] != ']') {
        ++i_;
        if (s_[i_] == '\\') {
          ++i_;
          hi = escape_char(true);
        } else {
          hi = utf8::next(s_, i_);
        }
        if (hi < lo) fail("a character range goes backwards");
      }
      ranges.emplace_back(lo, hi);
    }
    if (i_ >= s_.size()) fail("missing ']'");
    ++i_;
    return set(ranges, neg);
  }

  void quantify(Seq* seq, Seq atom_items) {
    int lo = 1, hi = 1;
    if (i_ < s_.size()) {
      const char c = s_[i_];
      if (c == '*') lo = 0, hi = -1, ++i_;
      else if (c == '+') lo = 1, hi = -1, ++i_;
      else if (c == '?') lo = 0, hi = 1, ++i_;
      else if (c == '{' && i_ + 1 < s_.size() && std::isdigit(static_cast<unsigned char>(s_[i_ + 1]))) {
        ++i_;
        lo = number();
        hi = lo;
        if (i_ < s_.size() && s_[i_] == ',') {
          ++i_;
          hi = i_ < s_.size() && std::isdigit(static_cast<unsigned char>(s_[i_])) ? number() : -1;
        }
        if (i_ >= s_.size() || s_[i_] != '}') fail("missing '}'");
        ++i_;
        if (hi >= 0 && hi < lo) fail("a repetition's maximum is below its minimum");
      }
      if (!(lo == 1 && hi == 1) && i_ < s_.size() && s_[i_] == '?') ++i_;  // lazy: the same strings
    }
    if (lo == 1 && hi == 1) {
      seq->insert(seq->end(), atom_items.begin(), atom_items.end());
      return;
    }
    Item item;
    if (atom_items.size() == 1) {
      item = atom_items[0];
    } else {
      const int r = b_.fresh("re-item");
      b_.define(r, {atom_items});
      item = GrammarBuilder::ref(r);
    }
    seq->push_back(b_.repeat(item, lo, hi, "re-rep"));
  }

  int number() {
    const size_t start = i_;
    while (i_ < s_.size() && std::isdigit(static_cast<unsigned char>(s_[i_])) && i_ - start < 5) ++i_;
    const int v = std::stoi(s_.substr(start, i_ - start));
    if (v > 10000) fail("a repetition count above 10000");
    return v;
  }

  GrammarBuilder& b_;
  const std::string& s_;
  RegexOptions o_;
  size_t i_ = 0;
};

}  // namespace

int regex_rule(GrammarBuilder& b, const std::string& pattern, const RegexOptions& options) {
  return RegexParser(b, pattern, options).parse();
}

}  // namespace rill::grammar
