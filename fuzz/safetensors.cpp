// Fuzzes the safetensors reader (formats/safetensors) on whole files: header length, JSON header, dtypes,
// shapes and offsets against the file's size. Any input ends in tensors or a rill::Error naming the file.
#include "formats/safetensors.h"

#include <cstdint>

#include "common.h"
#include "core/error.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::string path = rill::fuzz::scratch_path("model.safetensors");
  rill::fuzz::write_file(path, data, size);
  try {
    rill::WeightMap w;
    rill::read_safetensors(path, &w);
    for (const auto& [name, t] : w.tensors) (void)w.where(name);
  } catch (const rill::Error&) {
  }
  return 0;
}
