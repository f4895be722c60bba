// Fuzzes the Hugging Face tokenizer.json reader (tokenizer/hf_tokenizer): the input is the file; a tokenizer
// it loads then encodes and decodes a fixed text. Any input ends in a tokenizer or a rill::Error naming the
// file.
#include <cstdint>

#include "common.h"
#include "core/error.h"
#include "tokenizer/hf_tokenizer.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::string path = rill::fuzz::scratch_path("tokenizer.json");
  rill::fuzz::write_file(path, data, size);
  try {
    auto tok = rill::HfTokenizer::load(path);
    const auto ids = tok->encode("Hello, world! 123 héllo\n\tthe end", true);
    (void)tok->decode(ids);
  } catch (const rill::Error&) {
  }
  return 0;
}
