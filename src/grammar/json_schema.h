// JSON Schema -> Grammar: the sentences of the grammar are JSON texts that the schema accepts (a subset of them:
// properties are written in the schema's order, and whitespace, after '{', '[', ',' and ':' and before '}' and ']',
// is at most one space or one newline with up to 20 spaces or tabs of indent, so a model cannot run on in it).
//
// Supported: type (one or a list), properties, required, additionalProperties (false, true or a schema; absent
// means none are written when properties are given), enum, const, items, prefixItems, minItems, maxItems, nested
// objects, anyOf, oneOf, allOf (of objects, merged), $ref to "#", "#/$defs/..." and "#/definitions/..." (recursive
// schemas too), minLength, maxLength, pattern (regex.h), format (date, time, date-time, uuid, email, ipv4),
// integer minimum/maximum/exclusiveMinimum/exclusiveMaximum, number bounds that are integers >= 0, and OpenAPI's
// nullable. Annotations (title, description, default, examples, $schema, $id, $comment, deprecated, readOnly,
// writeOnly) are ignored. Anything else is refused: SchemaError names the keyword and where it is.
#pragma once

#include <nlohmann/json.hpp>
#include <string>

#include "grammar/grammar.h"

namespace rill::grammar {

class SchemaError : public GrammarError {
 public:
  SchemaError(const std::string& keyword, const std::string& path, const std::string& why)
      : GrammarError("JSON Schema: " + why + " ('" + keyword + "' at " + path + ")"), keyword_(keyword), path_(path) {}
  const std::string& keyword() const { return keyword_; }
  const std::string& path() const { return path_; }

 private:
  std::string keyword_, path_;
};

// Text around the JSON: `before` value `after`, and with `repeat`, more of them after `separator` (a tool call's
// <tool_call> tags, say).
struct JsonFraming {
  std::string before, after, separator;
  bool repeat = false;
};

// The grammar of JSON texts valid under `schema` (an ordered_json, so properties keep the schema's order).
Grammar json_schema_grammar(const nlohmann::ordered_json& schema, const JsonFraming& framing = {});
// Any JSON object (response_format {"type": "json_object"}).
Grammar json_object_grammar();

}  // namespace rill::grammar
