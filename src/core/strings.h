// Small string helpers shared across modules.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace rill {

// s with every occurrence of `from` replaced by `to` (at most `count` when count >= 0); an empty `from`
// changes nothing.
std::string replace_all(std::string_view s, std::string_view from, std::string_view to, int64_t count = -1);

}  // namespace rill
