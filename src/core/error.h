// rill::Error: the one exception type rill throws for bad input or unsupported requests. The message
// always names what caused it (file, tensor, field or parameter), so a user can fix the input.
#pragma once

#include <stdexcept>
#include <string>

namespace rill {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what) : std::runtime_error(what) {}
};

// Throws rill::Error(message) when cond is false. The message is built only on failure.
#define RILL_CHECK(cond, message)           \
  do {                                      \
    if (!(cond)) throw ::rill::Error(message); \
  } while (0)

}  // namespace rill
