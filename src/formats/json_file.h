// Parsing JSON from files and from clients, with errors that name the file and a bound on nesting.
#pragma once

#include <string>
#include <utility>

#include <nlohmann/json.hpp>

#include "core/error.h"

namespace rill {

// Deeper JSON than this is refused while parsing: nlohmann's copies, dumps and comparisons recurse once per
// level, so a body of 100k nested brackets would overflow the stack the first time it is copied. No config,
// tokenizer, header or request needs more than a few dozen levels.
inline constexpr int kMaxJsonDepth = 128;

// Json::parse(input) that throws rill::Error "nested deeper than N levels" at the first value deeper than
// max_depth, before building it. Other errors are nlohmann's parse_error, as from Json::parse.
template <typename Json, typename Input>
Json parse_json(Input&& input, int max_depth = kMaxJsonDepth) {
  return Json::parse(std::forward<Input>(input), [max_depth](int depth, typename Json::parse_event_t, Json&) {
    if (depth > max_depth) throw Error("nested deeper than " + std::to_string(max_depth) + " levels");
    return true;
  });
}

// Throws rill::Error "PATH: cannot open" or "PATH: not valid JSON: ...".
nlohmann::json read_json_file(const std::string& path);
nlohmann::ordered_json read_ordered_json_file(const std::string& path);

}  // namespace rill
