// Tokenizer: text <-> token ids. Implementations: Llama2cTokenizer (llama2.c tokenizer.bin) now; the
// Hugging Face tokenizer.json reader implements the same interface.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace rill {

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;
  virtual int vocab_size() const = 0;
  virtual std::vector<int32_t> encode(const std::string& text, bool add_bos) const = 0;
  // The bytes token `id` contributes after token `prev` (-1 at the start). Concatenating the pieces
  // of a sequence gives its full decode; a piece may hold part of a UTF-8 character.
  virtual std::string decode_piece(int32_t prev, int32_t id) const = 0;
  std::string decode(const std::vector<int32_t>& ids) const;
};

}  // namespace rill
