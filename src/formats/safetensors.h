// safetensors reading (memory-mapped; single file or sharded with model.safetensors.index.json) and
// writing. Every check names the file and tensor so a corrupt checkpoint is easy to locate.
#pragma once

#include <map>
#include <string>
#include <utility>
#include <vector>

#include "core/tensor.h"

namespace rill {

// A set of named host tensors. Tensors from safetensors point into the memory map (no copy); `source`
// records which file each came from, for error messages.
struct WeightMap {
  std::map<std::string, Tensor> tensors;
  std::map<std::string, std::string> source;
  std::map<std::string, std::string> metadata;  // safetensors __metadata__ of the first file

  bool has(const std::string& name) const { return tensors.count(name) != 0; }
  // Throws rill::Error "tensor NAME missing from WHERE" when absent.
  const Tensor& get(const std::string& name) const;
  std::string where(const std::string& name) const;
  std::string description;  // the file or directory the map was read from
};

// Reads one .safetensors file into `out` (appending). Throws on any inconsistency.
void read_safetensors(const std::string& path, WeightMap* out);

// Reads a model directory: model.safetensors.index.json (sharded) if present, else model.safetensors,
// else every *.safetensors file in the directory.
WeightMap read_safetensors_dir(const std::string& dir);

// Writes host tensors (any dtype) to a .safetensors file.
void write_safetensors(const std::string& path, const std::vector<std::pair<std::string, Tensor>>& tensors,
                       const std::map<std::string, std::string>& metadata = {});

}  // namespace rill
