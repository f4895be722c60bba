#include "tokenizer/hf_tokenizer.h"

#include <cstdint>
#include <memory>

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <utf8proc.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <mutex>
#include <nlohmann/json.hpp>
#include <queue>

#include "core/error.h"
#include "core/strings.h"
#include "core/utf8.h"
#include "formats/json_file.h"

namespace rill {
using nlohmann::json;

namespace {

// GPT-2's reversible byte <-> printable-code-point map used by ByteLevel (pre-tokenizer and decoder).
struct ByteMap {
  std::string byte_to_char[256];  // UTF-8 of the code point standing for each byte
  std::unordered_map<uint32_t, uint8_t> char_to_byte;
  ByteMap() {
    int extra = 0;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
      const uint32_t cp = printable ? uint32_t(b) : uint32_t(256 + extra++);
      utf8::append(byte_to_char[b], cp);
      char_to_byte[cp] = uint8_t(b);
    }
  }
};
const ByteMap& byte_map() {
  static const ByteMap m;
  return m;
}

const char* kGpt2Pattern = R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

// A compiled PCRE2 pattern (UTF + Unicode properties, JIT when available).
class Regex {
 public:
  Regex(const std::string& pattern, const std::string& where) {
    int err;
    PCRE2_SIZE off;
    code_ = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(), PCRE2_UTF | PCRE2_UCP,
                          &err, &off, nullptr);
    if (!code_) {
      PCRE2_UCHAR msg[256];
      pcre2_get_error_message(err, msg, sizeof msg);
      throw Error(where + ": regex does not compile at offset " + std::to_string(off) + ": " +
                  reinterpret_cast<char*>(msg));
    }
    jit_ = pcre2_jit_compile(code_, PCRE2_JIT_COMPLETE) == 0;
  }
  ~Regex() { pcre2_code_free(code_); }
  Regex(const Regex&) = delete;

  // Calls on_match(begin, end) for each non-overlapping match in s; on_match may throw (encode_at_most stops
  // so).
  template <typename F>
  void for_each_match(std::string_view s, F on_match) const {
    const std::unique_ptr<pcre2_match_data, decltype(&pcre2_match_data_free)> owner(
        pcre2_match_data_create_from_pattern(code_, nullptr), &pcre2_match_data_free);
    pcre2_match_data* md = owner.get();
    size_t pos = 0;
    while (pos <= s.size()) {
      const int rc =
          jit_ ? pcre2_jit_match(code_, reinterpret_cast<PCRE2_SPTR>(s.data()), s.size(), pos, 0, md, nullptr)
               : pcre2_match(code_, reinterpret_cast<PCRE2_SPTR>(s.data()), s.size(), pos, 0, md, nullptr);
      if (rc < 0) break;
      const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md);
      if (ov[1] == ov[0]) {  // empty match: step over one character
        if (ov[0] >= s.size()) break;
        pos = ov[0] + std::max<size_t>(1, utf8::sequence_length(s, ov[0]));
        continue;
      }
      on_match(ov[0], ov[1]);
      pos = ov[1];
    }
  }

 private:
  pcre2_code* code_ = nullptr;
  bool jit_ = false;
};

enum class SplitBehavior { Removed, Isolated, MergedWithPrevious, MergedWithNext, Contiguous };

struct NormalizerStep {
  enum Kind { Prepend, Replace, NFC, NFKC, Lowercase } kind;
  std::string a, b;
};

struct PreTokenizerStep {
  enum Kind { Split, ByteLevel, Metaspace, Digits } kind;
  std::shared_ptr<Regex> regex;
  SplitBehavior behavior = SplitBehavior::Isolated;
  bool invert = false;
  bool add_prefix_space = false, use_regex = true;
  std::string replacement = "\xE2\x96\x81";  // ▁
  std::string prepend_scheme = "always";
  bool split = true;
  bool individual_digits = false;
};

struct DecoderStep {
  enum Kind { ByteLevel, Replace, ByteFallback, Fuse, Strip, Metaspace } kind;
  std::string a, b;
  int start = 0, stop = 0;
  bool add_prefix_space = true;
};

// Open-addressing map (left id, right id) -> (rank, merged id): BPE's innermost lookup.
class MergeTable {
 public:
  void reserve(size_t n) {
    size_t cap = 16;
    while (cap < n * 2) cap <<= 1;
    slots_.assign(cap, Slot{kEmpty, 0, 0});
    mask_ = cap - 1;
  }
  void insert(uint64_t key, int32_t rank, int32_t merged) {
    for (size_t i = hash(key) & mask_;; i = (i + 1) & mask_)
      if (slots_[i].key == kEmpty || slots_[i].key == key) {
        if (slots_[i].key == kEmpty) slots_[i] = {key, rank, merged};  // the first (lowest-rank) merge wins
        return;
      }
  }
  // Returns false when there is no such merge.
  bool find(uint64_t key, int32_t* rank, int32_t* merged) const {
    for (size_t i = hash(key) & mask_;; i = (i + 1) & mask_) {
      if (slots_[i].key == key) {
        *rank = slots_[i].rank;
        *merged = slots_[i].merged;
        return true;
      }
      if (slots_[i].key == kEmpty) return false;
    }
  }

 private:
  static constexpr uint64_t kEmpty = ~uint64_t(0);
  static size_t hash(uint64_t k) { return size_t((k * 0x9E3779B97F4A7C15ull) >> 20); }
  struct Slot {
    uint64_t key;
    int32_t rank, merged;
  };
  std::vector<Slot> slots_;
  size_t mask_ = 0;
};

}  // namespace

struct HfTokenizer::Impl {
  std::string path;
  std::vector<std::string> id_to_tok;
  std::unordered_map<std::string, int32_t> tok_to_id;
  MergeTable merges;
  std::vector<int32_t> char_id;  // code point -> id of the one-character token, or -1
  bool byte_fallback = false, fuse_unk = false, ignore_merges = false;
  int32_t unk = -1;
  int32_t byte_ids[256];
  std::vector<AddedToken> added;
  std::vector<char> special;
  std::vector<std::vector<size_t>> added_by_first_byte = std::vector<std::vector<size_t>>(256);
  std::vector<NormalizerStep> normalizer;
  std::vector<PreTokenizerStep> pre;
  bool byte_level_input = false;
  std::vector<int32_t> post_prefix, post_suffix;
  std::vector<DecoderStep> decoder;
  bool has_decoder = false;
  std::vector<char> byte_piece;  // ids of <0xNN> tokens when the decoder has ByteFallback
  // Without a pre-tokenizer the whole text is one BPE word. When no token contains "c▁" (c not ▁), no
  // merge can span the boundary before such a ▁, so splitting there gives identical ids, far faster.
  bool split_at_metaspace = false;
  mutable std::mutex cache_mu;
  mutable std::unordered_map<std::string, std::vector<int32_t>> cache;

  static uint64_t key(int32_t a, int32_t b) { return (uint64_t(uint32_t(a)) << 32) | uint32_t(b); }

  void parse_model(const json& m);
  void parse_normalizer(const json& n);
  void parse_pre_tokenizer(const json& p);
  void parse_post_processor(const json& p);
  void parse_decoder(const json& d);

  std::string normalize(std::string s) const;
  // Runs pre-tokenizer steps [step, end) on `text` and calls sink(piece) for every final piece, without
  // materializing the intermediate lists. `first`: the piece starts the input (Metaspace "first").
  void pre_tokenize(size_t step, std::string_view text, bool first,
                    const std::function<void(std::string_view)>& sink) const;
  void bpe(std::string_view word, std::vector<int32_t>& out) const;
  void bpe_uncached(std::string_view word, std::vector<int32_t>& out) const;
  std::string where(const std::string& field) const { return path + ": " + field; }
};

namespace {

std::string str_field(const json& j, const char* key, const std::string& where) {
  RILL_CHECK(j.contains(key) && j[key].is_string(), where + ": missing string field '" + key + "'");
  return j[key].get<std::string>();
}

// The type of tokenizer.json component `c` (named `what` in errors), or "" when nothing is left to do: c is
// null, or a Sequence, whose parts (listed under `parts`) went to `parse` one by one.
template <class Parse>
std::string component_type(const json& c, const std::string& what, const char* parts, Parse parse) {
  if (c.is_null()) return "";
  const std::string type = str_field(c, "type", what);
  if (type != "Sequence") return type;
  RILL_CHECK(c.contains(parts) && c[parts].is_array(), what + ": a Sequence needs a list '" + parts + "'");
  for (const auto& part : c[parts]) parse(part);
  return "";
}

std::string pattern_of(const json& p, const std::string& where) {
  RILL_CHECK(p.is_object() && ((p.contains("String") && p.at("String").is_string()) ||
                               (p.contains("Regex") && p.at("Regex").is_string())),
             where + ": pattern must be {String|Regex}");
  return p.contains("String") ? p.at("String").get<std::string>() : p.at("Regex").get<std::string>();
}

// Escapes a literal for use inside a PCRE2 pattern.
std::string regex_escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (std::strchr("\\^$.|?*+()[]{}", c)) out += '\\';
    out += c;
  }
  return out;
}

}  // namespace

void HfTokenizer::Impl::parse_model(const json& m) {
  RILL_CHECK(m.is_object(), where("model") + " is not an object");
  const std::string type = m.value("type", "BPE");
  RILL_CHECK(type == "BPE", where("model.type") + " '" + type + "' is not supported (supported: BPE)");
  RILL_CHECK(m.contains("vocab") && m.at("vocab").is_object(), where("model.vocab") + " missing");
  for (auto& [tok, id] : m.at("vocab").items()) {
    RILL_CHECK(id.is_number_integer() && id.get<int64_t>() >= 0 && id.get<int64_t>() < (1 << 24),
               where("model.vocab['" + tok + "']") + " is not a valid id");
    const int32_t i = id.get<int32_t>();
    if (size_t(i) >= id_to_tok.size()) id_to_tok.resize(size_t(i) + 1);
    id_to_tok[size_t(i)] = tok;
    tok_to_id[tok] = i;
  }
  byte_fallback = m.value("byte_fallback", false);
  fuse_unk = m.value("fuse_unk", false);
  ignore_merges = m.value("ignore_merges", false);
  RILL_CHECK(m.value("continuing_subword_prefix", json()).is_null() &&
                 m.value("end_of_word_suffix", json()).is_null(),
             where("model") + ": continuing_subword_prefix / end_of_word_suffix are not supported");
  if (m.contains("unk_token") && m.at("unk_token").is_string()) {
    auto it = tok_to_id.find(m.at("unk_token").get<std::string>());
    if (it != tok_to_id.end()) unk = it->second;
  }
  std::fill(std::begin(byte_ids), std::end(byte_ids), -1);
  char name[8];
  for (int b = 0; b < 256; ++b) {
    std::snprintf(name, sizeof name, "<0x%02X>", b);
    if (auto it = tok_to_id.find(name); it != tok_to_id.end()) byte_ids[b] = it->second;
  }
  RILL_CHECK(m.contains("merges") && m.at("merges").is_array(), where("model.merges") + " missing");
  merges.reserve(m.at("merges").size());
  char_id.assign(0x110000, -1);
  for (const auto& [tok, id] : tok_to_id) {
    size_t i = 0;
    if (utf8::sequence_length(tok, 0) == tok.size() && !tok.empty()) char_id[utf8::next(tok, i)] = id;
  }
  int32_t rank = 0;
  for (const auto& mg : m.at("merges")) {
    std::string a, b;
    if (mg.is_string()) {  // "a b"
      const std::string s = mg.get<std::string>();
      const size_t sp = s.find(' ', 1);
      RILL_CHECK(sp != std::string::npos, where("model.merges") + ": '" + s + "' is not 'left right'");
      a = s.substr(0, sp);
      b = s.substr(sp + 1);
    } else {
      RILL_CHECK(mg.is_array() && mg.size() == 2 && mg[0].is_string() && mg[1].is_string(),
                 where("model.merges") + ": entry " + std::to_string(rank) + " is not [left, right]");
      a = mg[0].get<std::string>();
      b = mg[1].get<std::string>();
    }
    auto ia = tok_to_id.find(a), ib = tok_to_id.find(b), im = tok_to_id.find(a + b);
    RILL_CHECK(ia != tok_to_id.end() && ib != tok_to_id.end() && im != tok_to_id.end(),
               where("model.merges") + ": merge " + std::to_string(rank) + " ('" + a + "', '" + b +
                   "') uses a token missing from the vocabulary");
    merges.insert(key(ia->second, ib->second), rank, im->second);
    ++rank;
  }
}

void HfTokenizer::Impl::parse_normalizer(const json& n) {
  const std::string type = component_type(n, where("normalizer"), "normalizers",
                                          [&](const json& part) { parse_normalizer(part); });
  if (type.empty()) return;
  if (type == "Prepend") {
    normalizer.push_back({NormalizerStep::Prepend, str_field(n, "prepend", where("normalizer")), ""});
  } else if (type == "Replace") {
    RILL_CHECK(n.at("pattern").contains("String"),
               where("normalizer.Replace") + ": only String patterns are supported");
    normalizer.push_back({NormalizerStep::Replace, pattern_of(n.at("pattern"), where("normalizer")),
                          str_field(n, "content", where("normalizer"))});
  } else if (type == "NFC") {
    normalizer.push_back({NormalizerStep::NFC, "", ""});
  } else if (type == "NFKC") {
    normalizer.push_back({NormalizerStep::NFKC, "", ""});
  } else if (type == "Lowercase") {
    normalizer.push_back({NormalizerStep::Lowercase, "", ""});
  } else {
    throw Error(where("normalizer") + ": type '" + type +
                "' is not supported (supported: Sequence, Prepend, Replace, NFC, NFKC, Lowercase)");
  }
}

void HfTokenizer::Impl::parse_pre_tokenizer(const json& p) {
  const std::string type = component_type(p, where("pre_tokenizer"), "pretokenizers",
                                          [&](const json& part) { parse_pre_tokenizer(part); });
  if (type.empty()) return;
  PreTokenizerStep s{};
  if (type == "Split") {
    s.kind = PreTokenizerStep::Split;
    const bool is_regex = p.at("pattern").contains("Regex");
    const std::string pat = pattern_of(p.at("pattern"), where("pre_tokenizer.Split"));
    s.regex =
        std::make_shared<Regex>(is_regex ? pat : regex_escape(pat), where("pre_tokenizer.Split.pattern"));
    const std::string b = p.value("behavior", "Isolated");
    if (b == "Isolated")
      s.behavior = SplitBehavior::Isolated;
    else if (b == "Removed")
      s.behavior = SplitBehavior::Removed;
    else if (b == "MergedWithPrevious")
      s.behavior = SplitBehavior::MergedWithPrevious;
    else if (b == "MergedWithNext")
      s.behavior = SplitBehavior::MergedWithNext;
    else if (b == "Contiguous")
      s.behavior = SplitBehavior::Contiguous;
    else
      throw Error(where("pre_tokenizer.Split.behavior") + ": '" + b + "' is not supported");
    s.invert = p.value("invert", false);
    RILL_CHECK(!s.invert, where("pre_tokenizer.Split") + ": invert is not supported");
  } else if (type == "ByteLevel") {
    s.kind = PreTokenizerStep::ByteLevel;
    s.add_prefix_space = p.value("add_prefix_space", false);
    s.use_regex = p.value("use_regex", true);
    if (s.use_regex) s.regex = std::make_shared<Regex>(kGpt2Pattern, where("pre_tokenizer.ByteLevel"));
    byte_level_input = true;
  } else if (type == "Metaspace") {
    s.kind = PreTokenizerStep::Metaspace;
    s.replacement = p.value("replacement", std::string("\xE2\x96\x81"));
    s.prepend_scheme = p.value("prepend_scheme", p.value("add_prefix_space", true) ? "always" : "never");
    s.split = p.value("split", true);
  } else if (type == "Digits") {
    s.kind = PreTokenizerStep::Digits;
    s.individual_digits = p.value("individual_digits", false);
    s.regex =
        std::make_shared<Regex>(s.individual_digits ? "\\p{N}" : "\\p{N}+", where("pre_tokenizer.Digits"));
  } else {
    throw Error(where("pre_tokenizer") + ": type '" + type +
                "' is not supported (supported: Sequence, Split, ByteLevel, Metaspace, Digits)");
  }
  pre.push_back(std::move(s));
}

void HfTokenizer::Impl::parse_post_processor(const json& p) {
  const std::string type = component_type(p, where("post_processor"), "processors",
                                          [&](const json& part) { parse_post_processor(part); });
  if (type.empty()) return;
  if (type == "ByteLevel") {
    // Offsets only: ids are unchanged.
  } else if (type == "TemplateProcessing") {
    RILL_CHECK(p.contains("single") && p.at("single").is_array(),
               where("post_processor.single") + " missing");
    bool seen_sequence = false;
    for (const auto& item : p.at("single")) {
      if (item.contains("Sequence")) {
        seen_sequence = true;
        continue;
      }
      RILL_CHECK(item.contains("SpecialToken"),
                 where("post_processor.single") + ": unknown item " + item.dump());
      const std::string name = item.at("SpecialToken").at("id").get<std::string>();
      RILL_CHECK(p.contains("special_tokens") && p.at("special_tokens").contains(name),
                 where("post_processor.special_tokens") + ": '" + name + "' missing");
      for (const auto& id : p.at("special_tokens")[name].at("ids"))
        (seen_sequence ? post_suffix : post_prefix).push_back(id.get<int32_t>());
    }
  } else {
    throw Error(where("post_processor") + ": type '" + type +
                "' is not supported (supported: Sequence, ByteLevel, TemplateProcessing)");
  }
}

void HfTokenizer::Impl::parse_decoder(const json& d) {
  has_decoder = has_decoder || !d.is_null();
  const std::string type =
      component_type(d, where("decoder"), "decoders", [&](const json& part) { parse_decoder(part); });
  if (type.empty()) return;
  if (type == "ByteLevel") {
    decoder.push_back({DecoderStep::ByteLevel});
  } else if (type == "Replace") {
    decoder.push_back({DecoderStep::Replace, pattern_of(d.at("pattern"), where("decoder.Replace")),
                       str_field(d, "content", where("decoder"))});
  } else if (type == "ByteFallback") {
    decoder.push_back({DecoderStep::ByteFallback});
  } else if (type == "Fuse") {
    decoder.push_back({DecoderStep::Fuse});
  } else if (type == "Strip") {
    DecoderStep s{DecoderStep::Strip, str_field(d, "content", where("decoder.Strip"))};
    s.start = d.value("start", 0);
    s.stop = d.value("stop", 0);
    decoder.push_back(s);
  } else if (type == "Metaspace") {
    DecoderStep s{DecoderStep::Metaspace, d.value("replacement", std::string("\xE2\x96\x81"))};
    s.add_prefix_space =
        d.value("prepend_scheme", std::string(d.value("add_prefix_space", true) ? "always" : "never")) !=
        "never";
    decoder.push_back(s);
  } else {
    throw Error(
        where("decoder") + ": type '" + type +
        "' is not supported (supported: Sequence, ByteLevel, Replace, ByteFallback, Fuse, Strip, Metaspace)");
  }
}

std::unique_ptr<HfTokenizer> HfTokenizer::load(const std::string& path) try {  // (a function try block)
  const json j = read_json_file(path);
  RILL_CHECK(j.is_object(), path + ": not a JSON object");
  auto impl = std::make_unique<Impl>();
  impl->path = path;
  RILL_CHECK(j.contains("model"), path + ": missing field 'model'");
  impl->parse_model(j.at("model"));
  for (const auto& a : j.value("added_tokens", json::array())) {
    AddedToken t;
    t.content = str_field(a, "content", path + ": added_tokens");
    RILL_CHECK(a.contains("id") && a.at("id").is_number_integer(),
               path + ": added_tokens: '" + t.content + "' has no id");
    t.id = a.at("id").get<int32_t>();
    RILL_CHECK(t.id >= 0 && t.id < (1 << 24) && !t.content.empty(),
               path + ": added_tokens: bad entry '" + t.content + "'");
    t.special = a.value("special", false);
    t.lstrip = a.value("lstrip", false);
    t.rstrip = a.value("rstrip", false);
    t.single_word = a.value("single_word", false);
    t.normalized = a.value("normalized", !t.special);
    if (size_t(t.id) >= impl->id_to_tok.size()) impl->id_to_tok.resize(size_t(t.id) + 1);
    impl->id_to_tok[size_t(t.id)] = t.content;
    impl->tok_to_id[t.content] = t.id;
    impl->added.push_back(t);
  }
  impl->special.assign(impl->id_to_tok.size(), 0);
  for (size_t i = 0; i < impl->added.size(); ++i) {
    if (impl->added[i].special) impl->special[size_t(impl->added[i].id)] = 1;
    impl->added_by_first_byte[static_cast<unsigned char>(impl->added[i].content[0])].push_back(i);
  }
  for (auto& v : impl->added_by_first_byte)  // longest first, so the longest match wins
    std::sort(v.begin(), v.end(), [&](size_t a, size_t b) {
      return impl->added[a].content.size() > impl->added[b].content.size();
    });
  impl->parse_normalizer(j.value("normalizer", json()));
  impl->parse_pre_tokenizer(j.value("pre_tokenizer", json()));
  impl->parse_post_processor(j.value("post_processor", json()));
  impl->parse_decoder(j.value("decoder", json()));
  // transformers rebuilds the post-processor of Llama/Gemma tokenizers from add_bos_token/add_eos_token.
  const std::string config_path =
      (std::filesystem::path(path).parent_path() / "tokenizer_config.json").string();
  if (std::filesystem::exists(config_path)) {
    const json c = read_json_file(config_path);
    const std::string cls = c.is_object() ? c.value("tokenizer_class", "") : "";
    if (cls.rfind("LlamaTokenizer", 0) == 0 || cls.rfind("GemmaTokenizer", 0) == 0) {
      auto token_id = [&](const char* key) -> int32_t {
        if (!c.contains(key)) return -1;
        const json& t = c[key];
        const std::string s = t.is_string()   ? t.get<std::string>()
                              : t.is_object() ? t.value("content", "")
                                              : "";
        auto it = impl->tok_to_id.find(s);
        return it == impl->tok_to_id.end() ? -1 : it->second;
      };
      const int32_t bos = token_id("bos_token"), eos = token_id("eos_token");
      if (c.contains("add_bos_token") && c.at("add_bos_token").is_boolean()) {
        impl->post_prefix.clear();
        if (c.at("add_bos_token").get<bool>() && bos >= 0) impl->post_prefix.push_back(bos);
      }
      if (c.contains("add_eos_token") && c.at("add_eos_token").is_boolean()) {
        impl->post_suffix.clear();
        if (c.at("add_eos_token").get<bool>() && eos >= 0) impl->post_suffix.push_back(eos);
      }
    }
  }
  if (impl->pre.empty()) {
    const std::string ms = "\xE2\x96\x81";
    bool safe = true;
    for (const auto& tok : impl->id_to_tok) {
      for (size_t at = tok.find(ms, 1); safe && at != std::string::npos; at = tok.find(ms, at + 1))
        if (at < ms.size() || tok.compare(at - ms.size(), ms.size(), ms) != 0) safe = false;
      if (!safe) break;
    }
    impl->split_at_metaspace = safe;
  }
  impl->byte_piece.assign(impl->id_to_tok.size(), 0);
  if (std::any_of(impl->decoder.begin(), impl->decoder.end(),
                  [](const DecoderStep& d) { return d.kind == DecoderStep::ByteFallback; }))
    for (int32_t id : impl->byte_ids)
      if (id >= 0) impl->byte_piece[size_t(id)] = 1;
  return std::unique_ptr<HfTokenizer>(new HfTokenizer(std::move(impl)));
} catch (const nlohmann::json::exception& e) {  // a field of the wrong type, say: an error naming the file
  throw Error(path + ": " + e.what());
}

HfTokenizer::HfTokenizer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
HfTokenizer::~HfTokenizer() = default;

int HfTokenizer::vocab_size() const {
  return int(impl_->id_to_tok.size());
}

const std::string& HfTokenizer::id_to_token(int32_t id) const {
  static const std::string empty;
  return id >= 0 && size_t(id) < impl_->id_to_tok.size() ? impl_->id_to_tok[size_t(id)] : empty;
}

int32_t HfTokenizer::token_to_id(const std::string& token) const {
  auto it = impl_->tok_to_id.find(token);
  return it == impl_->tok_to_id.end() ? -1 : it->second;
}

bool HfTokenizer::holds_back(int32_t id) const {
  return id >= 0 && size_t(id) < impl_->byte_piece.size() && impl_->byte_piece[size_t(id)];
}

bool HfTokenizer::is_special(int32_t id) const {
  return id >= 0 && size_t(id) < impl_->special.size() && impl_->special[size_t(id)];
}

std::string HfTokenizer::Impl::normalize(std::string s) const {
  for (const auto& n : normalizer) {
    switch (n.kind) {
      case NormalizerStep::Prepend:
        if (!s.empty()) s = n.a + s;
        break;
      case NormalizerStep::Replace:
        s = replace_all(s, n.a, n.b);
        break;
      case NormalizerStep::NFC:
      case NormalizerStep::NFKC:
        if (std::all_of(s.begin(), s.end(), [](char c) { return static_cast<unsigned char>(c) < 0x80; }))
          break;
        [[fallthrough]];  // ASCII is already in NFC and NFKC
      case NormalizerStep::Lowercase: {
        const int opts = UTF8PROC_STABLE | UTF8PROC_COMPOSE |
                         (n.kind == NormalizerStep::NFKC ? UTF8PROC_COMPAT : 0) |
                         (n.kind == NormalizerStep::Lowercase ? UTF8PROC_CASEFOLD : 0);
        utf8proc_uint8_t* out = nullptr;
        const utf8proc_ssize_t len = utf8proc_map(reinterpret_cast<const utf8proc_uint8_t*>(s.data()),
                                                  utf8proc_ssize_t(s.size()), &out, utf8proc_option_t(opts));
        RILL_CHECK(len >= 0, std::string("normalizer: ") + utf8proc_errmsg(len));
        s.assign(reinterpret_cast<char*>(out), size_t(len));
        std::free(out);
        break;
      }
    }
  }
  return s;
}

void HfTokenizer::Impl::pre_tokenize(size_t k, std::string_view text, bool first,
                                     const std::function<void(std::string_view)>& sink) const {
  if (k == pre.size()) {
    if (!text.empty()) sink(text);
    return;
  }
  const PreTokenizerStep& step = pre[k];
  // Splits text by a regex; every behavior yields contiguous ranges of the input.
  auto split_by = [&](std::string_view t, const Regex& re, SplitBehavior behavior, bool is_first,
                      const std::function<void(std::string_view, bool)>& emit) {
    size_t last = 0, pending = std::string_view::npos;  // pending: start of a match merged with what follows
    bool emitted = false;
    auto out = [&](size_t b, size_t e) {
      if (e > b) {
        emit(t.substr(b, e - b), is_first && !emitted);
        emitted = true;
      }
    };
    re.for_each_match(t, [&](size_t b, size_t e) {
      const size_t from = pending != std::string_view::npos ? pending : last;
      switch (behavior) {
        case SplitBehavior::Isolated:
          out(from, b);
          out(b, e);
          pending = std::string_view::npos;
          break;
        case SplitBehavior::Removed:
          out(from, b);
          pending = std::string_view::npos;
          break;
        case SplitBehavior::MergedWithPrevious:
          out(from, e);
          pending = std::string_view::npos;
          break;
        case SplitBehavior::MergedWithNext:
        case SplitBehavior::Contiguous:
          out(from, b);
          pending = b;
          break;
      }
      last = e;
    });
    out(pending != std::string_view::npos ? pending : last, t.size());
  };
  switch (step.kind) {
    case PreTokenizerStep::Split:
    case PreTokenizerStep::Digits:
      split_by(text, *step.regex,
               step.kind == PreTokenizerStep::Digits ? SplitBehavior::Isolated : step.behavior, first,
               [&](std::string_view piece, bool f) { pre_tokenize(k + 1, piece, f, sink); });
      break;
    case PreTokenizerStep::ByteLevel: {
      std::string prefixed;
      if (step.add_prefix_space && !text.empty() && text[0] != ' ') {
        prefixed = " " + std::string(text);
        text = prefixed;
      }
      std::string mapped;
      auto map_and_continue = [&](std::string_view piece, bool f) {
        mapped.clear();
        for (unsigned char c : piece) mapped += byte_map().byte_to_char[c];
        pre_tokenize(k + 1, mapped, f, sink);
      };
      if (step.use_regex)
        split_by(text, *step.regex, SplitBehavior::Isolated, first, map_and_continue);
      else
        map_and_continue(text, first);
      break;
    }
    case PreTokenizerStep::Metaspace: {
      std::string t;
      for (char c : text) {
        if (c == ' ')
          t += step.replacement;
        else
          t += c;
      }
      const bool prepend = step.prepend_scheme == "always" || (step.prepend_scheme == "first" && first);
      if (prepend && t.compare(0, step.replacement.size(), step.replacement) != 0) t = step.replacement + t;
      if (!step.split) {
        pre_tokenize(k + 1, t, first, sink);
        break;
      }
      size_t start = 0;
      for (size_t i = step.replacement.size(); i <= t.size(); ++i) {
        if (i == t.size() || t.compare(i, step.replacement.size(), step.replacement) == 0) {
          if (i > start)
            pre_tokenize(k + 1, std::string_view(t).substr(start, i - start), first && start == 0, sink);
          start = i;
        }
      }
      break;
    }
  }
}

void HfTokenizer::Impl::bpe_uncached(std::string_view word, std::vector<int32_t>& out) const {
  if (ignore_merges) {
    if (auto it = tok_to_id.find(std::string(word)); it != tok_to_id.end()) {
      out.push_back(it->second);
      return;
    }
  }
  // Symbols: one per character (or per byte through byte fallback), doubly linked.
  std::vector<int32_t> sym;
  sym.reserve(word.size());
  for (size_t i = 0; i < word.size();) {
    const size_t n = std::max<size_t>(1, utf8::sequence_length(word, i));
    size_t at = i;
    const int32_t id =
        n > 1 || static_cast<unsigned char>(word[i]) < 0x80 ? char_id[utf8::next(word, at)] : -1;
    if (id >= 0) {
      sym.push_back(id);
    } else if (byte_fallback && byte_ids[static_cast<unsigned char>(word[i])] >= 0) {
      for (size_t k = 0; k < n; ++k) sym.push_back(byte_ids[static_cast<unsigned char>(word[i + k])]);
    } else if (unk >= 0) {
      if (!(fuse_unk && !sym.empty() && sym.back() == unk)) sym.push_back(unk);
    }
    i += n;
  }
  const int n = int(sym.size());
  std::vector<int> prev(static_cast<size_t>(n)), next(static_cast<size_t>(n));
  for (int i = 0; i < n; ++i) {
    prev[size_t(i)] = i - 1;
    next[size_t(i)] = i + 1 < n ? i + 1 : -1;
  }
  struct Cand {
    int32_t rank;
    int pos;
    int32_t left, right, merged;
    bool operator>(const Cand& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
  };
  std::vector<Cand> storage;
  storage.reserve(size_t(n));
  std::priority_queue<Cand, std::vector<Cand>, std::greater<Cand>> heap(std::greater<Cand>(),
                                                                        std::move(storage));
  auto push = [&](int i) {
    if (i < 0) return;
    const int j = next[size_t(i)];
    int32_t rank, merged;
    if (j >= 0 && merges.find(key(sym[size_t(i)], sym[size_t(j)]), &rank, &merged))
      heap.push({rank, i, sym[size_t(i)], sym[size_t(j)], merged});
  };
  for (int i = 0; i + 1 < n; ++i) push(i);
  while (!heap.empty()) {
    const Cand c = heap.top();
    heap.pop();
    const int j = next[size_t(c.pos)];
    // Stale entries: one side was merged away or changed since this candidate was pushed.
    if (sym[size_t(c.pos)] != c.left || j < 0 || sym[size_t(j)] != c.right) continue;
    sym[size_t(c.pos)] = c.merged;
    sym[size_t(j)] = -1;
    next[size_t(c.pos)] = next[size_t(j)];
    if (next[size_t(j)] >= 0) prev[size_t(next[size_t(j)])] = c.pos;
    push(prev[size_t(c.pos)]);
    push(c.pos);
  }
  for (int i = 0; i >= 0 && i < n; i = next[size_t(i)]) out.push_back(sym[size_t(i)]);
}

void HfTokenizer::Impl::bpe(std::string_view word, std::vector<int32_t>& out) const {
  constexpr size_t kCacheableBytes = 64, kMaxEntries = 1 << 18;
  if (word.size() > kCacheableBytes) return bpe_uncached(word, out);
  const std::string key_word(word);
  {
    std::lock_guard<std::mutex> lock(cache_mu);
    if (auto it = cache.find(key_word); it != cache.end()) {
      out.insert(out.end(), it->second.begin(), it->second.end());
      return;
    }
  }
  std::vector<int32_t> ids;
  bpe_uncached(word, ids);
  out.insert(out.end(), ids.begin(), ids.end());
  std::lock_guard<std::mutex> lock(cache_mu);
  if (cache.size() < kMaxEntries) cache.emplace(key_word, std::move(ids));
}

std::vector<int32_t> HfTokenizer::encode(const std::string& text, bool add_special,
                                         bool parse_special) const {
  return encode_bounded(text, add_special, parse_special, SIZE_MAX);
}

std::vector<int32_t> HfTokenizer::encode_at_most(const std::string& text, bool add_special, size_t max_tokens,
                                                 bool parse_special) const {
  return encode_bounded(text, add_special, parse_special, max_tokens);
}

std::vector<int32_t> HfTokenizer::encode_bounded(const std::string& text, bool add_special,
                                                 bool parse_special, size_t max_tokens) const {
  const Impl& m = *impl_;
  const size_t bad = utf8::first_invalid(text);
  RILL_CHECK(bad == std::string::npos, "input text is not valid UTF-8 (byte " + std::to_string(bad) + ")");
  std::vector<int32_t> ids(m.post_prefix.begin(), add_special ? m.post_prefix.end() : m.post_prefix.begin());
  auto is_space = [](char c) {
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
  };
  auto is_word = [](unsigned char c) { return std::isalnum(c) || c == '_' || c >= 0x80; };
  auto check = [&] {
    if (ids.size() > max_tokens)
      throw TooManyTokens("the text has more than " + std::to_string(max_tokens) + " tokens");
  };
  auto bpe = [&](std::string_view piece) {
    m.bpe(piece, ids);
    check();
  };
  auto encode_segment = [&](std::string seg, bool first) {
    if (seg.empty()) return;
    seg = m.normalize(std::move(seg));
    if (m.split_at_metaspace) {
      static const std::string ms = "\xE2\x96\x81";
      const std::string_view v(seg);
      size_t start = 0;
      for (size_t at = v.find(ms, 1); at != std::string_view::npos; at = v.find(ms, at + ms.size())) {
        if (at >= start + ms.size() && v.compare(at - ms.size(), ms.size(), ms) == 0)
          continue;  // inside a ▁ run
        if (at > start) bpe(v.substr(start, at - start));
        start = at;
      }
      bpe(v.substr(start));
      return;
    }
    m.pre_tokenize(0, seg, first, bpe);
  };
  // Split on added tokens (longest match at the earliest position), honouring lstrip/rstrip/single_word.
  size_t seg_start = 0, i = 0;
  bool first = true;
  while (i < text.size()) {
    const AddedToken* hit = nullptr;
    for (size_t idx : m.added_by_first_byte[static_cast<unsigned char>(text[i])]) {
      const AddedToken& t = m.added[idx];
      if (!parse_special && t.special) continue;
      if (text.compare(i, t.content.size(), t.content) != 0) continue;
      if (t.single_word && ((i > 0 && is_word(static_cast<unsigned char>(text[i - 1]))) ||
                            (i + t.content.size() < text.size() &&
                             is_word(static_cast<unsigned char>(text[i + t.content.size()])))))
        continue;
      hit = &t;
      break;
    }
    if (!hit) {
      ++i;
      continue;
    }
    size_t seg_end = i, after = i + hit->content.size();
    if (hit->lstrip)
      while (seg_end > seg_start && is_space(text[seg_end - 1])) --seg_end;
    if (hit->rstrip)
      while (after < text.size() && is_space(text[after])) ++after;
    encode_segment(text.substr(seg_start, seg_end - seg_start), first && seg_start == 0);
    ids.push_back(hit->id);
    check();
    first = false;
    seg_start = i = after;
  }
  encode_segment(text.substr(seg_start), first && seg_start == 0);
  if (add_special) ids.insert(ids.end(), m.post_suffix.begin(), m.post_suffix.end());
  check();
  return ids;
}

namespace {

// A byte-level token's bytes (each character stands for one byte); false when a character is outside the map.
bool byte_level_bytes(const std::string& t, std::string* out) {
  out->clear();
  for (size_t i = 0; i < t.size();) {
    const uint32_t cp = utf8::next(t, i);
    auto it = byte_map().char_to_byte.find(cp);
    if (it == byte_map().char_to_byte.end()) return false;
    *out += char(it->second);
  }
  return true;
}

// A byte-fallback token "<0xNN>": its byte.
bool fallback_byte(const std::string& t, unsigned* b) {
  return t.size() == 6 && t.compare(0, 3, "<0x") == 0 && t[5] == '>' &&
         std::sscanf(t.c_str() + 3, "%2X", b) == 1;
}

}  // namespace

// Each token through the decoder steps that act on one token (byte-level, replace, byte fallback, metaspace),
// leaving out those that act on the whole text (fuse, strip, the first token's prefix space).
std::vector<std::string> HfTokenizer::token_bytes() const {
  const Impl& m = *impl_;
  std::vector<std::string> out(m.id_to_tok.size());
  for (size_t id = 0; id < m.id_to_tok.size(); ++id) {
    if (m.special[id]) continue;
    std::string t = m.id_to_tok[id];
    for (const auto& d : m.decoder) {
      if (!m.has_decoder) break;
      switch (d.kind) {
        case DecoderStep::ByteLevel: {
          std::string bytes;
          if (byte_level_bytes(t, &bytes)) t = std::move(bytes);
          break;
        }
        case DecoderStep::Replace:
          t = replace_all(t, d.a, d.b);
          break;
        case DecoderStep::ByteFallback: {
          unsigned b;
          if (fallback_byte(t, &b)) t = std::string(1, char(b));
          break;
        }
        case DecoderStep::Metaspace:
          t = replace_all(t, d.a, " ");
          break;
        case DecoderStep::Fuse:
        case DecoderStep::Strip:
          break;
      }
    }
    out[id] = std::move(t);
  }
  return out;
}

std::string HfTokenizer::decode(const std::vector<int32_t>& ids, bool skip_special) const {
  const Impl& m = *impl_;
  std::vector<std::string> toks;
  toks.reserve(ids.size());
  for (int32_t id : ids) {
    // An id the tokenizer does not know (a model's padded embedding rows) stands for no text, as in HF tokenizers.
    if (id < 0 || size_t(id) >= m.id_to_tok.size()) continue;
    if (skip_special && m.special[size_t(id)]) continue;
    toks.push_back(m.id_to_tok[size_t(id)]);
  }
  if (!m.has_decoder) {
    std::string out;
    for (size_t i = 0; i < toks.size(); ++i) out += (i ? " " : "") + toks[i];
    return out;
  }
  for (const auto& d : m.decoder) {
    switch (d.kind) {
      case DecoderStep::ByteLevel: {
        std::string bytes;
        std::string tb;
        for (const auto& t : toks)
          bytes += byte_level_bytes(t, &tb) ? tb : t;  // characters outside the map: as they are
        toks = {utf8::lossy(bytes)};
        break;
      }
      case DecoderStep::Replace:
        for (auto& t : toks) t = replace_all(t, d.a, d.b);
        break;
      case DecoderStep::ByteFallback: {
        std::vector<std::string> out;
        std::string run;  // consecutive <0xNN> bytes
        auto flush = [&] {
          if (run.empty()) return;
          if (utf8::first_invalid(run) == std::string::npos)
            out.push_back(run);
          else
            for (size_t k = 0; k < run.size(); ++k) out.emplace_back("\xEF\xBF\xBD");
          run.clear();
        };
        for (const auto& t : toks) {
          unsigned b;
          if (fallback_byte(t, &b)) {
            run += char(b);
          } else {
            flush();
            out.push_back(t);
          }
        }
        flush();
        toks = std::move(out);
        break;
      }
      case DecoderStep::Fuse: {
        std::string all;
        for (const auto& t : toks) all += t;
        toks = {all};
        break;
      }
      case DecoderStep::Strip:
        for (auto& t : toks) {
          int s = 0;
          size_t b = 0, e = t.size();
          while (s < d.start && b < e && t.compare(b, d.a.size(), d.a) == 0) b += d.a.size(), ++s;
          s = 0;
          while (s < d.stop && e >= b + d.a.size() && t.compare(e - d.a.size(), d.a.size(), d.a) == 0)
            e -= d.a.size(), ++s;
          t = t.substr(b, e - b);
        }
        break;
      case DecoderStep::Metaspace:
        for (size_t i = 0; i < toks.size(); ++i) {
          std::string out = replace_all(toks[i], d.a, " ");
          if (i == 0 && d.add_prefix_space && !out.empty() && out[0] == ' ') out.erase(0, 1);
          toks[i] = std::move(out);
        }
        break;
    }
  }
  std::string out;
  for (const auto& t : toks) out += t;
  return out;
}

}  // namespace rill
