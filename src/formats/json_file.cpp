#include "formats/json_file.h"

#include <fstream>

#include "core/error.h"

namespace rill {

namespace {
template <typename Json>
Json read(const std::string& path) {
  std::ifstream in(path);
  RILL_CHECK(in, path + ": cannot open");
  try {
    return parse_json<Json>(in);
  } catch (const nlohmann::json::exception& e) {
    throw Error(path + ": not valid JSON: " + e.what());
  } catch (const Error& e) {
    throw Error(path + ": not valid JSON: " + e.what());
  }
}
}  // namespace

nlohmann::json read_json_file(const std::string& path) { return read<nlohmann::json>(path); }
nlohmann::ordered_json read_ordered_json_file(const std::string& path) { return read<nlohmann::ordered_json>(path); }

}  // namespace rill
