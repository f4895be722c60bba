// HfTokenizer: Hugging Face tokenizer.json, BPE models. Byte-level BPE (GPT-2, Llama-3, Qwen2,
// DeepSeek) with Split/ByteLevel pre-tokenizers through PCRE2, and SentencePiece-style BPE (Llama-2,
// Mistral) with Prepend/Replace normalizers, byte fallback and Replace/ByteFallback/Fuse/Strip
// decoders. Added tokens are matched in the text first (longest match wins), and only the text between
// them goes through normalizer, pre-tokenizer and BPE, as in `tokenizers`. Immutable after load, so
// safe to share between threads.
#pragma once

#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "tokenizer/tokenizer.h"

namespace rill {

struct AddedToken {
  std::string content;
  int32_t id = 0;
  bool special = false, lstrip = false, rstrip = false, single_word = false, normalized = false;
};

class HfTokenizer final : public Tokenizer {
 public:
  // Reads tokenizer.json (and tokenizer_config.json beside it, whose add_bos_token / add_eos_token decide
  // BOS/EOS for Llama-class tokenizers, as in transformers); throws rill::Error naming the file and field
  // for anything unsupported.
  static std::unique_ptr<HfTokenizer> load(const std::string& path);
  ~HfTokenizer() override;

  int vocab_size() const override;
  // add_special: apply the post-processor (BOS/EOS as its template says). Added tokens in the text are
  // recognized as Hugging Face does; with parse_special false, special ones are encoded as plain text
  // (transformers' split_special_tokens=True).
  std::vector<int32_t> encode(const std::string& text, bool add_special, bool parse_special = true) const override;
  // Stops at the first pre-tokenized piece that takes the ids past max_tokens.
  std::vector<int32_t> encode_at_most(const std::string& text, bool add_special, size_t max_tokens,
                                      bool parse_special = true) const override;
  // Through the decoder chain; skip_special drops special added tokens.
  std::string decode(const std::vector<int32_t>& ids, bool skip_special = false) const override;

  std::vector<std::string> token_bytes() const override;

  // The token string of an id (vocabulary or added token), or "" when out of range.
  const std::string& id_to_token(int32_t id) const;
  int32_t token_to_id(const std::string& token) const;  // -1 when absent
  bool is_special(int32_t id) const;
  bool holds_back(int32_t id) const override;

 private:
  struct Impl;
  explicit HfTokenizer(std::unique_ptr<Impl> impl);
  // encode() that throws TooManyTokens as soon as the ids pass max_tokens (SIZE_MAX: never).
  std::vector<int32_t> encode_bounded(const std::string& text, bool add_special, bool parse_special,
                                      size_t max_tokens) const;
  std::unique_ptr<Impl> impl_;
};

}  // namespace rill
