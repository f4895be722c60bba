#include "server/json_body.h"

#include <cmath>
#include <cstdint>

#include "formats/json_file.h"

namespace rill::openai {

json ApiError::body() const {
  return {{"error",
           {{"message", what()},
            {"type", type},
            {"param", param.empty() ? json() : json(param)},
            {"code", status}}}};
}

ApiError bad_request(const std::string& message, const std::string& param) {
  return ApiError(400, "invalid_request_error", message, param);
}

json parse_body(const std::string& body) {
  json b;
  try {
    b = parse_json<json>(body.empty() ? std::string("{}") : body);
  } catch (const json::exception& e) {
    throw bad_request(std::string("the body is not valid JSON: ") + e.what());
  } catch (const Error& e) {  // nested too deep
    throw bad_request(std::string("the body is not valid JSON: ") + e.what());
  }
  if (!b.is_object()) throw bad_request("the request body must be a JSON object");
  return b;
}

std::string dump(const json& j) {
  return j.dump(-1, ' ', false, json::error_handler_t::replace);
}

double number(const json& b, const char* key, double fallback, double lo, double hi) {
  if (!b.contains(key) || b[key].is_null()) return fallback;
  if (!b[key].is_number()) throw bad_request(std::string("'") + key + "' must be a number", key);
  const double v = b[key].get<double>();
  if (!std::isfinite(v) || v < lo || v > hi)
    throw bad_request(std::string("'") + key + "' must be between " + json(lo).dump() + " and " +
                          json(hi).dump() + " (got " + json(v).dump() + ")",
                      key);
  return v;
}

int64_t integer(const json& b, const char* key, int64_t fallback, int64_t lo, int64_t hi) {
  if (!b.contains(key) || b[key].is_null()) return fallback;
  if (!b[key].is_number_integer()) throw bad_request(std::string("'") + key + "' must be an integer", key);
  // Above INT64_MAX only as an unsigned number, which get<int64_t>() would wrap to a negative one.
  const bool huge = b[key].is_number_unsigned() && b[key].get<uint64_t>() > uint64_t(INT64_MAX);
  const int64_t v = huge ? INT64_MAX : b[key].get<int64_t>();
  if (huge || v < lo || v > hi)
    throw bad_request(std::string("'") + key + "' must be between " + std::to_string(lo) + " and " +
                          std::to_string(hi) + " (got " + b[key].dump() + ")",
                      key);
  return v;
}

bool boolean(const json& b, const char* key, bool fallback) {
  if (!b.contains(key) || b[key].is_null()) return fallback;
  if (!b[key].is_boolean()) throw bad_request(std::string("'") + key + "' must be true or false", key);
  return b[key].get<bool>();
}

std::vector<int32_t> token_array(const json& a, int vocab_size, const std::string& param) {
  if (!a.is_array()) throw bad_request("'" + param + "' must be a list of token ids", param);
  std::vector<int32_t> ids;
  for (const auto& t : a) {
    if (!t.is_number_integer()) throw bad_request("'" + param + "' token arrays must hold integers", param);
    const int64_t v = t.get<int64_t>();
    if (v < 0 || v >= vocab_size)
      throw bad_request("'" + param + "' token " + std::to_string(v) + " is outside the vocabulary", param);
    ids.push_back(int32_t(v));
  }
  return ids;
}

}  // namespace rill::openai
