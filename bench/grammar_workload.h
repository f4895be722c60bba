// The constrained-decoding workload the benchmarks share: a JSON Schema of the shape structured-output requests
// have, and a synthetic vocabulary of any size (the 256 bytes, then strings of 2 to 8 characters drawn from letters,
// spaces, digits and JSON punctuation), for models that come without a tokenizer (gpu_bench's random weights).
#pragma once

#include <memory>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "grammar/json_schema.h"
#include "grammar/matcher.h"

namespace rill::bench {

inline std::vector<std::string> synthetic_vocabulary(int64_t size) {
  std::mt19937 rng(7);
  const std::string alphabet = "abcdefghijklmnopqrstuvwxyzabcdefghijklmnopqrstuvwxyz     ETAOINS0123456789,.:\"{}[]-_";
  std::vector<std::string> pieces(static_cast<size_t>(size));
  for (int64_t i = 0; i < size; ++i) {
    if (i < 256) {
      pieces[size_t(i)] = std::string(1, char(i));
      continue;
    }
    const size_t len = 2 + rng() % 7;
    for (size_t k = 0; k < len; ++k) pieces[size_t(i)] += alphabet[rng() % alphabet.size()];
  }
  return pieces;
}

// Objects of the schema one after another (a newline between them), so that a generation never ends early.
// bounded: the name has a maxLength (40), which the grammar counts out character by character.
inline std::shared_ptr<grammar::CompiledGrammar> person_stream_grammar(std::shared_ptr<const grammar::Vocabulary> vocab,
                                                                      bool bounded = false) {
  auto schema = nlohmann::ordered_json::parse(
      R"({"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer",
         "minimum": 0, "maximum": 150}, "email": {"type": "string", "format": "email"}, "tags": {"type": "array",
         "items": {"enum": ["red", "green", "blue"]}, "maxItems": 4}, "bio": {"type": "string"}},
         "required": ["name", "age", "email", "tags", "bio"], "additionalProperties": false})");
  if (bounded) schema["properties"]["name"]["maxLength"] = 40;
  grammar::JsonFraming framing;
  framing.separator = "\n";
  framing.repeat = true;
  auto g = std::make_shared<grammar::CompiledGrammar>(grammar::json_schema_grammar(schema, framing), std::move(vocab));
  g->precompute();
  return g;
}

}  // namespace rill::bench
