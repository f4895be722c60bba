// Reading a JSON file with errors that name it.
#pragma once

#include <string>

#include <nlohmann/json.hpp>

namespace rill {

// Throws rill::Error "PATH: cannot open" or "PATH: not valid JSON: ...".
nlohmann::json read_json_file(const std::string& path);
nlohmann::ordered_json read_ordered_json_file(const std::string& path);

}  // namespace rill
