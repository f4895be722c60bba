// tokenizer_encode: single-threaded encode throughput (MB/s of UTF-8 input) of tokenizer.json files on a
// text file, encoded as one string, median of repeats after a warm-up run. Prints one JSON line per
// tokenizer; bench/tokenizer_hf.py prints the same for Hugging Face tokenizers.
//   tokenizer_encode --text FILE --repeats 5 TOKENIZER.json...
#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <fstream>
#include <nlohmann/json.hpp>

#include "tokenizer/hf_tokenizer.h"

int main(int argc, char** argv) {
  CLI::App app{"Single-threaded tokenizer.json encode throughput"};
  std::string text_path;
  std::vector<std::string> tokenizers;
  int repeats = 5;
  bool per_line = false;
  app.add_option("--text", text_path, "UTF-8 text file")->required();
  app.add_option("--repeats", repeats, "Timed runs (median reported)");
  app.add_flag("--per-line", per_line, "Encode each line (newline kept) separately instead of one string");
  app.add_option("tokenizers", tokenizers, "tokenizer.json files")->required();
  CLI11_PARSE(app, argc, argv);
  std::ifstream in(text_path, std::ios::binary);
  const std::string text(std::istreambuf_iterator<char>(in), {});
  std::vector<std::string> inputs;
  if (per_line) {
    for (size_t pos = 0; pos < text.size();) {
      const size_t nl = text.find('\n', pos);
      const size_t end = nl == std::string::npos ? text.size() : nl + 1;
      inputs.push_back(text.substr(pos, end - pos));
      pos = end;
    }
  } else {
    inputs.push_back(text);
  }
  for (const auto& path : tokenizers) {
    auto tok = rill::HfTokenizer::load(path);
    auto encode_all = [&] {
      std::vector<int32_t> all;
      for (const auto& t : inputs) {
        const auto ids = tok->encode(t, false);
        all.insert(all.end(), ids.begin(), ids.end());
      }
      return all;
    };
    const auto ids = encode_all();  // warm-up (fills the word cache, as HF's does)
    size_t n_ids = ids.size();
    uint64_t checksum = 1469598103934665603ull;  // FNV-1a over the ids, to compare with HF's
    for (int32_t id : ids) checksum = (checksum ^ uint64_t(uint32_t(id))) * 1099511628211ull;
    std::vector<double> secs;
    for (int r = 0; r < repeats; ++r) {
      // A fresh tokenizer each run would measure cold caches; HF keeps its cache too, so both are warm.
      const auto t0 = std::chrono::steady_clock::now();
      n_ids = encode_all().size();
      secs.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    }
    std::sort(secs.begin(), secs.end());
    const double med = secs[secs.size() / 2];
    std::printf("%s\n", nlohmann::json({{"engine", "rill"}, {"mode", per_line ? "per-line" : "whole"}, {"tokenizer", path}, {"bytes", text.size()}, {"tokens", n_ids},
                                        {"ids_fnv1a", std::to_string(checksum)}, {"seconds", med}, {"MB_per_s", double(text.size()) / med / 1e6}})
                            .dump()
                            .c_str());
  }
  return 0;
}
