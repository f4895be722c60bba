// JSON request bodies and replies: parsing a body, reading its typed fields (absent or null gives the
// fallback; a wrong type or range is a 400 naming the field), the OpenAI-style error every failure becomes,
// and serialising replies. No sockets and no engine here.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/error.h"

namespace rill::openai {

using json = nlohmann::ordered_json;

// An error with its HTTP status and OpenAI error type; `param` names the offending field when there is one.
class ApiError : public Error {
 public:
  ApiError(int status, std::string type, std::string message, std::string param = "")
      : Error(message), status(status), type(std::move(type)), param(std::move(param)) {}
  int status;
  std::string type;
  std::string param;
  json body() const;  // {"error": {"message", "type", "param", "code"}}
};
ApiError bad_request(const std::string& message, const std::string& param = "");

// A request body: a JSON object (an empty body is {}); 400 otherwise.
json parse_body(const std::string& body);
// Serialises, replacing invalid UTF-8 rather than throwing: text comes from token bytes.
std::string dump(const json& j);

double number(const json& b, const char* key, double fallback, double lo, double hi);
int64_t integer(const json& b, const char* key, int64_t fallback, int64_t lo, int64_t hi);
bool boolean(const json& b, const char* key, bool fallback);
// A list of token ids below `vocab_size`; 400 naming `param` otherwise.
std::vector<int32_t> token_array(const json& a, int vocab_size, const std::string& param);

}  // namespace rill::openai
