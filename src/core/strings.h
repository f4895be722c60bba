// Small string helpers shared across modules.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace rill {

// s with every occurrence of `from` replaced by `to` (at most `count` when count >= 0); an empty `from`
// changes nothing.
std::string replace_all(std::string_view s, std::string_view from, std::string_view to, int64_t count = -1);

// A memory size: "2GiB", "512MiB", "64K", "1e9" or "1000000" (bytes; K/M/G are binary units), or "40%" of
// `available` bytes. nullopt when the text is not such a size or is not positive.
std::optional<size_t> parse_memory_size(std::string_view text, size_t available);

// Memory the system could give this process now (MemAvailable in /proc/meminfo; physical memory where that
// file is unreadable).
size_t available_system_memory();

}  // namespace rill
