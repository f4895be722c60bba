// Checkpoint: what a model directory or file holds before it is bound to a backend: its ModelConfig and its
// weights (memory-mapped, by Hugging Face name). Reads Hugging Face directories (config.json,
// generation_config.json and safetensors, sharded or not) and llama2.c .bin files.
#pragma once

#include <string>

#include "formats/model_config.h"
#include "formats/safetensors.h"

namespace rill {

struct Checkpoint {
  std::string path;
  ModelConfig config;
  WeightMap weights;
};

// Throws rill::Error naming the file and field when the checkpoint is missing, corrupt or inconsistent.
Checkpoint read_checkpoint(const std::string& path);

}  // namespace rill
