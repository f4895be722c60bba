// The tokenizer of llama2.c checkpoints (tokenizer.bin: max token length, then per token a float score,
// a length and the bytes). Encoding is llama2.c's: a dummy-prefix space, one token per UTF-8 character
// (bytes as <0xNN> tokens when absent), then repeated merges of the adjacent pair with the best score.
#pragma once

#include <string>
#include <unordered_map>
#include <vector>

#include "tokenizer/tokenizer.h"

namespace rill {

class Llama2cTokenizer final : public Tokenizer {
 public:
  // vocab_size <= 0: read every entry in the file.
  static std::unique_ptr<Llama2cTokenizer> load(const std::string& path, int vocab_size = 0);

  int vocab_size() const override { return int(pieces_.size()); }
  // The llama2.c format has no special-token strings, so parse_special changes nothing.
  std::vector<int32_t> encode(const std::string& text, bool add_bos, bool parse_special = true) const override;
  std::string decode(const std::vector<int32_t>& ids, bool skip_special = false) const override;
  std::vector<std::string> token_bytes() const override;
  // The bytes token `id` contributes after token `prev` (llama2.c's rule: no leading space after BOS).
  std::string decode_piece(int32_t prev, int32_t id) const;

 private:
  std::vector<std::string> pieces_;
  std::vector<float> scores_;
  std::unordered_map<std::string, int32_t> ids_;
  int32_t byte_token_[256];  // id of "<0xNN>", or -1
};

}  // namespace rill
