#include <algorithm>
#include <string>

#include "tokenizer/tokenizer.h"
#include "core/utf8.h"

namespace rill {

std::vector<int32_t> Tokenizer::encode_at_most(const std::string& text, bool add_special, size_t max_tokens,
                                               bool parse_special) const {
  std::vector<int32_t> ids = encode(text, add_special, parse_special);
  if (ids.size() > max_tokens)
    throw TooManyTokens("the text has " + std::to_string(ids.size()) + " tokens, more than " +
                        std::to_string(max_tokens));
  return ids;
}

namespace {
bool ends_with_replacement(const std::string& s) {
  return s.size() >= 3 && s.compare(s.size() - 3, 3, "\xEF\xBF\xBD") == 0;
}
}  // namespace

IncrementalDecoder::IncrementalDecoder(const Tokenizer& tok, bool skip_special, const std::vector<int32_t>& context)
    : tok_(tok), skip_special_(skip_special) {
  // A few tokens of context are enough for every decoder's cross-token rule.
  constexpr size_t kContext = 6;
  ids_.assign(context.end() - long(std::min(context.size(), kContext)), context.end());
  read_ = ids_.size();
  // The context may end inside a character (its last tokens hold part of one): then those tokens count as
  // new, so the character comes out whole once the stream completes it.
  while (read_ > 0 && ends_with_replacement(window(0, read_))) --read_;
}

std::string IncrementalDecoder::window(size_t from, size_t to) const {
  return tok_.decode(std::vector<int32_t>(ids_.begin() + long(from), ids_.begin() + long(to)), skip_special_);
}

std::string IncrementalDecoder::add(int32_t id) {
  ids_.push_back(id);
  if (tok_.holds_back(id)) return "";
  const std::string before = window(prefix_, read_);
  const std::string now = window(prefix_, ids_.size());
  // Wait while the text is incomplete, or while it still rewrites what was already sent.
  if (now.size() <= before.size() || ends_with_replacement(now) || now.compare(0, before.size(), before) != 0) return "";
  prefix_ = read_;
  read_ = ids_.size();
  return now.substr(before.size());
}

std::string IncrementalDecoder::finish() {
  const std::string before = window(prefix_, read_);
  const std::string now = window(prefix_, ids_.size());
  prefix_ = read_ = ids_.size();
  // Only an extension of what was sent can be sent; a cut is made whole (never a partial character).
  if (now.size() <= before.size() || now.compare(0, before.size(), before) != 0) return "";
  return utf8::lossy(now.substr(before.size()));
}

}  // namespace rill
