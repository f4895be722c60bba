// Grammar: a context-free grammar over bytes, the one form every constraint (JSON Schema, JSON mode, a GBNF text
// grammar, a tool call) is compiled to before decoding. Rules are alternatives of sequences; a sequence's elements
// are byte classes (256-bit sets) and references to rules. Text-level constructs (UTF-8 character classes,
// repetitions, groups) are lowered to these by GrammarBuilder, so the matcher (matcher.h) only ever steps one
// byte at a time. Grammars are immutable once built and shared between threads.
//
// The text form is llama.cpp's GBNF: `name ::= alternatives`, alternatives separated by `|`, items "literal",
// [character class] (with ^, ranges and escapes \n \r \t \\ \" \] \- \xHH \uHHHH \UHHHHHHHH), `.` (any character),
// rule names, ( groups ), and the postfixes * + ? {m} {m,} {m,n}; `#` starts a comment. The start rule is `root`.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "core/error.h"

namespace rill::grammar {

// A grammar that cannot be built: the message names the rule, or the line and column of the text.
class GrammarError : public Error {
 public:
  using Error::Error;
};

struct ByteSet {
  uint64_t bits[4] = {0, 0, 0, 0};
  bool test(uint8_t b) const { return (bits[b >> 6] >> (b & 63)) & 1; }
  void set(uint8_t b) { bits[b >> 6] |= uint64_t(1) << (b & 63); }
  void set_range(int lo, int hi) {
    for (int b = lo; b <= hi; ++b) set(uint8_t(b));
  }
  bool operator<(const ByteSet& o) const {
    for (int i = 0; i < 4; ++i)
      if (bits[i] != o.bits[i]) return bits[i] < o.bits[i];
    return false;
  }
  bool operator==(const ByteSet& o) const {
    for (int i = 0; i < 4; ++i)
      if (bits[i] != o.bits[i]) return false;
    return true;
  }
};

struct Element {
  enum Kind : uint8_t { Bytes, Ref, End };
  Kind kind = End;
  int32_t arg = 0;  // Bytes: index into Grammar::classes; Ref: the rule
};

// The built grammar, flattened: every alternative is a run of elements in `elems` closed by an End element, and a
// position in `elems` is where a parse goes on from.
struct Grammar {
  std::vector<Element> elems;
  std::vector<ByteSet> classes;
  std::vector<std::vector<int32_t>> alts;  // per rule: where each alternative starts in elems
  std::vector<std::string> names;          // per rule
  int root = 0;

  // Parses GBNF text (see the top of this file); GrammarError names the line and column or the rule.
  static Grammar parse(const std::string& text, const std::string& root = "root");
  // The grammar back as GBNF text (byte classes as \xHH ranges), for messages and tests.
  std::string to_text() const;
};

// Builds a Grammar rule by rule. A rule is made of alternatives, each a sequence of Items.
class GrammarBuilder {
 public:
  struct Item {
    bool is_rule = false;
    ByteSet bytes;  // when !is_rule
    int rule = 0;   // when is_rule
  };
  using Seq = std::vector<Item>;

  // The rule named `name`, created (undefined) when new.
  int rule(const std::string& name);
  // A new rule whose name starts with `base` (made unique).
  int fresh(const std::string& base);
  void define(int rule, std::vector<Seq> alternatives);
  bool defined(int rule) const { return defined_[size_t(rule)]; }
  const std::string& name(int rule) const { return names_[size_t(rule)]; }

  static Item ref(int rule) { return Item{true, {}, rule}; }
  static Item byte(uint8_t b) {
    Item i;
    i.bytes.set(b);
    return i;
  }
  // The bytes of `s`, one item each.
  static Seq literal(const std::string& s);
  using Ranges = std::vector<std::pair<uint32_t, uint32_t>>;
  // Code point ranges made sorted and disjoint, complemented when negated, without surrogates.
  static Ranges code_points(const Ranges& ranges, bool negated);
  // A rule matching one UTF-8 encoded code point in the ranges (or outside them when negated); surrogates never.
  int char_class(const std::vector<std::pair<uint32_t, uint32_t>>& ranges, bool negated);
  // Rules for repetitions of `item` (a single item: wrap a sequence in a rule first). max < 0: unbounded.
  Item repeat(const Item& item, int min, int max, const std::string& base);

  // Checks that every rule is defined and none is left-recursive (GrammarError names the rule), drops rules the
  // root cannot reach, and flattens.
  Grammar build(const std::string& root) const;

 private:
  // The rules with small reference-free rules written into their users (see the .cpp).
  std::vector<std::vector<Seq>> inline_leaves(const std::vector<int>& order) const;

  std::vector<std::string> names_;
  std::vector<std::vector<Seq>> rules_;
  std::vector<bool> defined_;
  std::map<std::string, int> by_name_;
  std::map<std::string, int> class_rules_;  // char_class() results by their ranges
};

}  // namespace rill::grammar
