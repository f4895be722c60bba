#include "tokenizer/llama2c_tokenizer.h"

#include <cstdio>
#include <cstring>

#include "core/error.h"
#include "formats/mapped_file.h"
#include "core/utf8.h"

namespace rill {

std::string Llama2cTokenizer::decode(const std::vector<int32_t>& ids, bool) const {
  std::string out;
  int32_t prev = -1;
  for (int32_t id : ids) {
    out += decode_piece(prev, id);
    prev = id;
  }
  return utf8::lossy(out);  // byte pieces may not form whole characters
}

std::unique_ptr<Llama2cTokenizer> Llama2cTokenizer::load(const std::string& path, int vocab_size) {
  auto f = MappedFile::open(path);
  auto t = std::unique_ptr<Llama2cTokenizer>(new Llama2cTokenizer());
  size_t off = 4;  // max_token_length, unused
  RILL_CHECK(f->size() >= 4, path + ": truncated tokenizer.bin");
  while (off < f->size() && (vocab_size <= 0 || int(t->pieces_.size()) < vocab_size)) {
    RILL_CHECK(off + 8 <= f->size(), path + ": truncated tokenizer.bin at token " + std::to_string(t->pieces_.size()));
    float score;
    int32_t len;
    std::memcpy(&score, f->data() + off, 4);
    std::memcpy(&len, f->data() + off + 4, 4);
    off += 8;
    RILL_CHECK(len >= 0 && off + size_t(len) <= f->size(),
               path + ": bad length for token " + std::to_string(t->pieces_.size()) + " (truncated tokenizer.bin?)");
    t->pieces_.emplace_back(reinterpret_cast<const char*>(f->data() + off), size_t(len));
    t->scores_.push_back(score);
    off += size_t(len);
  }
  RILL_CHECK(vocab_size <= 0 || int(t->pieces_.size()) == vocab_size,
             path + ": has " + std::to_string(t->pieces_.size()) + " tokens but the model's vocabulary has " +
                 std::to_string(vocab_size));
  std::fill(std::begin(t->byte_token_), std::end(t->byte_token_), -1);
  for (size_t i = 0; i < t->pieces_.size(); ++i) {
    t->ids_.emplace(t->pieces_[i], int32_t(i));
    unsigned byte;
    if (t->pieces_[i].size() == 6 && std::sscanf(t->pieces_[i].c_str(), "<0x%02X>", &byte) == 1)
      t->byte_token_[byte] = int32_t(i);
  }
  return t;
}

std::vector<int32_t> Llama2cTokenizer::encode(const std::string& text, bool add_bos, bool) const {
  const size_t bad = utf8::first_invalid(text);
  RILL_CHECK(bad == std::string::npos, "input text is not valid UTF-8 (byte " + std::to_string(bad) + ")");
  std::vector<int32_t> out;
  if (add_bos) out.push_back(1);
  if (text.empty()) return out;
  std::vector<int32_t> toks;
  if (auto it = ids_.find(" "); it != ids_.end()) toks.push_back(it->second);  // dummy prefix
  for (size_t i = 0; i < text.size();) {
    // One UTF-8 character (a malformed lead byte counts as a character of its own).
    size_t len = 1;
    const unsigned char c = static_cast<unsigned char>(text[i]);
    if (c >= 0xC0) len = c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : 2;
    len = std::min(len, text.size() - i);
    for (size_t k = 1; k < len; ++k)
      if ((static_cast<unsigned char>(text[i + k]) & 0xC0) != 0x80) len = k;
    const std::string ch = text.substr(i, len);
    if (auto it = ids_.find(ch); it != ids_.end()) {
      toks.push_back(it->second);
    } else {
      for (unsigned char b : ch) {
        RILL_CHECK(byte_token_[b] >= 0, "tokenizer: no token for byte " + std::to_string(b));
        toks.push_back(byte_token_[b]);
      }
    }
    i += len;
  }
  for (;;) {
    float best = -1e10f;
    int best_id = -1;
    size_t best_at = 0;
    for (size_t i = 0; i + 1 < toks.size(); ++i) {
      auto it = ids_.find(pieces_[size_t(toks[i])] + pieces_[size_t(toks[i + 1])]);
      if (it != ids_.end() && scores_[size_t(it->second)] > best) {
        best = scores_[size_t(it->second)];
        best_id = it->second;
        best_at = i;
      }
    }
    if (best_id < 0) break;
    toks[best_at] = best_id;
    toks.erase(toks.begin() + long(best_at) + 1);
  }
  out.insert(out.end(), toks.begin(), toks.end());
  return out;
}

std::vector<std::string> Llama2cTokenizer::token_bytes() const {
  std::vector<std::string> out(pieces_.size());
  for (int32_t id = 0; id < vocab_size(); ++id) out[size_t(id)] = decode_piece(0, id);
  if (!out.empty() && pieces_[0] == "<unk>") out[0].clear();  // unknown: stands for no text
  return out;
}

std::string Llama2cTokenizer::decode_piece(int32_t prev, int32_t id) const {
  if (id < 0 || id >= vocab_size()) return "";  // an id past the tokenizer (padded embedding rows): no text
  if (id == 1 || id == 2) return "";  // BOS and EOS are control tokens: no text
  const std::string& p = pieces_[size_t(id)];
  unsigned byte;
  if (p.size() == 6 && std::sscanf(p.c_str(), "<0x%02X>", &byte) == 1) return std::string(1, char(byte));
  if (prev == 1 && !p.empty() && p[0] == ' ') return p.substr(1);  // no leading space after BOS
  return p;
}

}  // namespace rill
