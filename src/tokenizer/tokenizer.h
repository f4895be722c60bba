// Tokenizer: text <-> token ids. Implementations: HfTokenizer (tokenizer.json) and Llama2cTokenizer
// (llama2.c tokenizer.bin). IncrementalDecoder turns a stream of ids into text deltas for streaming.
// Tokenizers are immutable after loading and safe to share between threads.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/error.h"

namespace rill {

// Thrown by Tokenizer::encode_at_most: the text has more tokens than the caller can take.
class TooManyTokens : public Error {
 public:
  using Error::Error;
};

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;
  virtual int vocab_size() const = 0;
  // add_special: add what the tokenizer adds around a sequence (BOS, ...). parse_special: special tokens
  // written in the text become their ids (as chat templates need); when false they are plain text, so
  // user content cannot forge control tokens. Throws rill::Error on text that is not valid UTF-8.
  virtual std::vector<int32_t> encode(const std::string& text, bool add_special, bool parse_special = true) const = 0;
  // encode() for a caller that can take at most max_tokens ids: throws TooManyTokens once the text has more, having
  // done work in proportion to max_tokens rather than to the text where the tokenizer can stop early (tokenizer.json
  // can), so a 16 MiB prompt for a 4k-token context costs what 4k tokens cost.
  virtual std::vector<int32_t> encode_at_most(const std::string& text, bool add_special, size_t max_tokens,
                                              bool parse_special = true) const;
  // The text of ids; skip_special drops special tokens (BOS, EOS, chat markers).
  virtual std::string decode(const std::vector<int32_t>& ids, bool skip_special = false) const = 0;
  // The bytes each token stands for in the middle of a text (after another token: no prefix-space rules), "" for
  // special and control tokens, which stand for no text. Constrained decoding matches these against a grammar.
  virtual std::vector<std::string> token_bytes() const = 0;
  // True for tokens whose text depends on the tokens after them (byte-fallback <0xNN> pieces, which the
  // decoder turns into characters only as a complete run): streaming holds text back while one ends
  // the stream.
  virtual bool holds_back(int32_t id) const { return false; }
};

// Streaming detokenization: add() returns the text that the new token completes. The concatenated
// deltas (with finish()) equal decode() of all ids, and no delta ends inside a UTF-8 character.
// Decoding is done over a short window of recent tokens, so each step costs O(1), not O(length).
class IncrementalDecoder {
 public:
  // context: ids that precede the stream (e.g. the prompt's last tokens), so that leading-space rules
  // apply as they would in one full decode; their text is not emitted.
  IncrementalDecoder(const Tokenizer& tok, bool skip_special, const std::vector<int32_t>& context = {});
  std::string add(int32_t id);
  // Whatever is still held back (an incomplete character at the very end comes out as U+FFFD).
  std::string finish();

 private:
  std::string window(size_t from, size_t to) const;
  const Tokenizer& tok_;
  bool skip_special_;
  std::vector<int32_t> ids_;
  size_t prefix_ = 0, read_ = 0;
};

}  // namespace rill
