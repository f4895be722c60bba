#include "formats/safetensors.h"

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <string_view>

#include "core/error.h"
#include "formats/json_file.h"
#include "formats/mapped_file.h"

namespace rill {
namespace fs = std::filesystem;
using nlohmann::json;

const Tensor& WeightMap::get(const std::string& name) const {
  auto it = tensors.find(name);
  RILL_CHECK(it != tensors.end(), "tensor '" + name + "' missing from " + description);
  return it->second;
}

std::string WeightMap::where(const std::string& name) const {
  auto it = source.find(name);
  return it == source.end() ? description : it->second;
}

namespace {

constexpr uint64_t kMaxHeaderBytes = 100u << 20;  // the format's own limit

uint64_t read_u64_le(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

}  // namespace

void read_safetensors(const std::string& path, WeightMap* out) {
  auto file = MappedFile::open(path);
  RILL_CHECK(file->size() >= 8, path + ": truncated safetensors file (" + std::to_string(file->size()) +
                                    " bytes, need at least the 8-byte header length)");
  const uint64_t header_len = read_u64_le(file->data());
  RILL_CHECK(header_len <= kMaxHeaderBytes && header_len <= file->size() - 8,
             path + ": header length " + std::to_string(header_len) + " exceeds the file size " +
                 std::to_string(file->size()) + " (truncated or not a safetensors file)");
  json header;
  try {
    header = parse_json<json>(std::string_view(reinterpret_cast<const char*>(file->data()) + 8, header_len));
  } catch (const json::exception& e) {
    throw Error(path + ": safetensors header is not valid JSON: " + e.what());
  } catch (const Error& e) {
    throw Error(path + ": safetensors header is not valid JSON: " + e.what());
  }
  RILL_CHECK(header.is_object(), path + ": safetensors header is not a JSON object");

  const uint8_t* base = file->data() + 8 + header_len;
  const uint64_t data_size = file->size() - 8 - header_len;
  std::shared_ptr<void> keep = file;
  for (auto& [name, entry] : header.items()) {
    if (name == "__metadata__") {
      if (entry.is_object() && out->metadata.empty())
        for (auto& [k, v] : entry.items())
          if (v.is_string()) out->metadata[k] = v.get<std::string>();
      continue;
    }
    const std::string where = path + ": tensor '" + name + "'";
    RILL_CHECK(entry.is_object(), where + ": entry is not an object");
    RILL_CHECK(entry.contains("dtype") && entry["dtype"].is_string(), where + ": missing field 'dtype'");
    RILL_CHECK(entry.contains("shape") && entry["shape"].is_array(), where + ": missing field 'shape'");
    RILL_CHECK(entry.contains("data_offsets") && entry["data_offsets"].is_array() &&
                   entry["data_offsets"].size() == 2,
               where + ": missing field 'data_offsets' ([begin, end])");
    const std::string dtype_str = entry["dtype"].get<std::string>();
    DType dtype;
    RILL_CHECK(parse_dtype(dtype_str, &dtype),
               where + ": unsupported dtype '" + dtype_str + "' (supported: F32, F16, BF16, F64, I32, I64, U8)");
    Tensor t;
    t.dtype = dtype;
    const json& shape = entry["shape"];
    RILL_CHECK(shape.size() <= size_t(Shape::kMaxDims), where + ": rank " + std::to_string(shape.size()) + " > 4");
    t.shape.rank = int(shape.size());
    for (size_t i = 0; i < shape.size(); ++i) {
      RILL_CHECK(shape[i].is_number_unsigned(), where + ": shape has a non-integer or negative dimension");
      t.shape.dims[i] = shape[i].get<int64_t>();
    }
    const json& off = entry["data_offsets"];
    RILL_CHECK(off[0].is_number_unsigned() && off[1].is_number_unsigned(),
               where + ": data_offsets are not non-negative integers");
    const uint64_t begin = off[0].get<uint64_t>(), end = off[1].get<uint64_t>();
    RILL_CHECK(begin <= end && end <= data_size,
               where + ": data_offsets [" + std::to_string(begin) + ", " + std::to_string(end) +
                   "] lie outside the data section of " + std::to_string(data_size) +
                   " bytes (truncated file?)");
    RILL_CHECK(end - begin == t.nbytes(), where + ": data_offsets span " + std::to_string(end - begin) +
                                              " bytes but shape " + t.shape.str() + " of " + dtype_str +
                                              " needs " + std::to_string(t.nbytes()));
    t.data = const_cast<uint8_t*>(base + begin);
    t.storage = keep;
    RILL_CHECK(out->tensors.emplace(name, t).second, where + ": defined twice");
    out->source[name] = path;
  }
}

WeightMap read_safetensors_dir(const std::string& dir) {
  WeightMap out;
  out.description = dir;
  RILL_CHECK(fs::is_directory(dir), dir + ": not a directory");
  const fs::path index = fs::path(dir) / "model.safetensors.index.json";
  if (fs::exists(index)) {
    const json j = read_json_file(index.string());
    RILL_CHECK(j.contains("weight_map") && j["weight_map"].is_object(),
               index.string() + ": missing field 'weight_map'");
    std::set<std::string> shards;
    for (auto& [name, file] : j["weight_map"].items()) {
      RILL_CHECK(file.is_string(), index.string() + ": weight_map['" + name + "'] is not a file name");
      shards.insert(file.get<std::string>());
    }
    for (const auto& s : shards) {
      RILL_CHECK(s.find('/') == std::string::npos && s.find("..") == std::string::npos,
                 index.string() + ": shard name '" + s + "' must be a file in the model directory");
      read_safetensors((fs::path(dir) / s).string(), &out);
    }
    for (auto& [name, file] : j["weight_map"].items())
      RILL_CHECK(out.has(name), index.string() + ": tensor '" + name + "' is listed for " +
                                    file.get<std::string>() + " but that shard does not contain it");
    return out;
  }
  const fs::path single = fs::path(dir) / "model.safetensors";
  if (fs::exists(single)) {
    read_safetensors(single.string(), &out);
    return out;
  }
  std::vector<std::string> files;
  for (const auto& e : fs::directory_iterator(dir))
    if (e.path().extension() == ".safetensors" && e.path().filename() != "expected.safetensors")
      files.push_back(e.path().string());
  RILL_CHECK(!files.empty(), dir + ": no model.safetensors, model.safetensors.index.json or *.safetensors");
  std::sort(files.begin(), files.end());
  for (const auto& f : files) read_safetensors(f, &out);
  return out;
}

void write_safetensors(const std::string& path, const std::vector<std::pair<std::string, Tensor>>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  // Data in order of decreasing element size (then name), as the reference writer does, so every tensor
  // starts aligned to its element size.
  std::vector<std::pair<std::string, Tensor>> ordered = tensors;
  std::stable_sort(ordered.begin(), ordered.end(), [](const auto& a, const auto& b) {
    const size_t sa = dtype_size(a.second.dtype), sb = dtype_size(b.second.dtype);
    return sa != sb ? sa > sb : a.first < b.first;
  });
  json header = json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  uint64_t offset = 0;
  for (const auto& [name, t] : ordered) {
    RILL_CHECK(t.device == Device::CPU, "write_safetensors: tensor '" + name + "' is not on the host");
    std::vector<int64_t> shape(t.shape.dims.begin(), t.shape.dims.begin() + t.shape.rank);
    header[name] = {{"dtype", std::string(dtype_name(t.dtype))}, {"shape", shape},
                    {"data_offsets", {offset, offset + t.nbytes()}}};
    offset += t.nbytes();
  }
  std::string h = header.dump();
  h.append((8 - h.size() % 8) % 8, ' ');  // align the data section to 8 bytes, as the reference writer does
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  RILL_CHECK(out, path + ": cannot open for writing");
  uint8_t len[8];
  for (int i = 0; i < 8; ++i) len[i] = uint8_t(uint64_t(h.size()) >> (8 * i));
  out.write(reinterpret_cast<const char*>(len), 8);
  out.write(h.data(), std::streamsize(h.size()));
  for (const auto& [name, t] : ordered) out.write(static_cast<const char*>(t.data), std::streamsize(t.nbytes()));
  RILL_CHECK(out.good(), path + ": write failed");
}

}  // namespace rill
