#include "core/strings.h"

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

}  // namespace rill
