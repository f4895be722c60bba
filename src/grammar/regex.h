// Regular expressions as grammar rules: the subset that JSON Schema "pattern" and guided_regex use in practice
// (ECMAScript syntax: literals, escapes \d \w \s \D \W \S \n \t \r \uHHHH \xHH, classes with ranges and negation,
// `.`, groups ( ) and (?: ), alternation, the quantifiers * + ? {m} {m,} {m,n} (lazy forms match the same set),
// and ^ $ anchors at the ends). Lookarounds and back-references cannot be a context-free grammar: a GrammarError
// names them.
#pragma once

#include <string>

#include "grammar/grammar.h"

namespace rill::grammar {

struct RegexOptions {
  // The match is the contents of a JSON string: '"', '\' and control characters are written as JSON escapes.
  bool json_string = false;
  // Without a ^ (or $), the match may have anything before (after) it, as JSON Schema's "pattern" searches.
  bool search = false;
};

// A rule matching exactly the strings of `pattern`; GrammarError says what is unsupported and where.
int regex_rule(GrammarBuilder& b, const std::string& pattern, const RegexOptions& options);

}  // namespace rill::grammar
