#include "core/strings.h"

#include <unistd.h>

#include <charconv>
#include <cmath>
#include <fstream>

namespace rill {

std::string replace_all(std::string_view s, std::string_view from, std::string_view to, int64_t count) {
  if (from.empty()) return std::string(s);
  std::string out;
  size_t pos = 0, hit;
  while (count != 0 && (hit = s.find(from, pos)) != std::string_view::npos) {
    out.append(s, pos, hit - pos);
    out.append(to);
    pos = hit + from.size();
    if (count > 0) --count;
  }
  out.append(s.substr(pos));
  return out;
}

std::optional<size_t> parse_memory_size(std::string_view text, size_t available) {
  double v = 0;
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
  if (ec != std::errc() || end == text.data() || !std::isfinite(v) || v <= 0) return std::nullopt;
  const std::string_view unit(end, size_t(text.data() + text.size() - end));
  double bytes = 0;
  if (unit.empty() || unit == "B") bytes = v;
  else if (unit == "K" || unit == "KiB") bytes = v * 1024.0;
  else if (unit == "M" || unit == "MiB") bytes = v * 1024.0 * 1024;
  else if (unit == "G" || unit == "GiB") bytes = v * 1024.0 * 1024 * 1024;
  else if (unit == "%" && v <= 100) bytes = double(available) * v / 100;
  else return std::nullopt;
  if (bytes < 1 || bytes > 9e18) return std::nullopt;
  return size_t(bytes);
}

size_t available_system_memory() {
  std::ifstream in("/proc/meminfo");
  std::string key, unit;
  size_t value = 0;
  while (in >> key >> value >> unit) {
    if (key == "MemAvailable:") return value * 1024;
  }
  return size_t(sysconf(_SC_PHYS_PAGES)) * size_t(sysconf(_SC_PAGE_SIZE));
}

}  // namespace rill
