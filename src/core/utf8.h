// UTF-8 helpers shared by the tokenizers and the chat-template interpreter.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace rill::utf8 {

// Length of the valid UTF-8 sequence starting at s[i], or 0 when it is invalid or truncated.
size_t sequence_length(std::string_view s, size_t i);
// Index of the first byte that is not valid UTF-8, or npos when all of s is valid.
size_t first_invalid(std::string_view s);
// Like Rust's String::from_utf8_lossy: each maximal invalid subsequence becomes U+FFFD.
std::string lossy(std::string_view s);
void append(std::string& out, uint32_t cp);
// Decodes the code point at s[i] (which must be valid) and advances i.
uint32_t next(std::string_view s, size_t& i);

}  // namespace rill::utf8
