// Tensor: a typed, shaped view of memory on one device. Tensors are cheap to copy; `storage` keeps the
// underlying allocation (device buffer, host vector or memory map) alive for as long as any view exists.
// Data is row-major and contiguous. A Tensor never owns compute: ops live in the Backend.
#pragma once

#include <array>
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <string>

#include "core/dtype.h"

namespace rill {

enum class Device : uint8_t { CPU, CUDA };

struct Shape {
  static constexpr int kMaxDims = 4;
  std::array<int64_t, kMaxDims> dims{};
  int rank = 0;

  Shape() = default;
  Shape(std::initializer_list<int64_t> d);
  int64_t operator[](int i) const { return dims[i]; }
  int64_t numel() const;
  bool operator==(const Shape& o) const;
  std::string str() const;  // "[2, 3]"
};

struct Tensor {
  void* data = nullptr;
  DType dtype = DType::F32;
  Shape shape;
  Device device = Device::CPU;
  std::shared_ptr<void> storage;

  bool empty() const { return data == nullptr; }
  int64_t numel() const { return shape.numel(); }
  size_t nbytes() const { return size_t(numel()) * dtype_size(dtype); }
  int64_t rows() const { return shape.rank == 0 ? 1 : shape[0]; }
  int64_t row_size() const { return shape.rank == 0 ? 1 : numel() / shape[0]; }  // elements per row

  template <typename T>
  T* ptr() const { return static_cast<T*>(data); }

  // Views (no copy). slice_rows keeps the trailing dims; reshape keeps numel.
  Tensor slice_rows(int64_t begin, int64_t count) const;
  Tensor reshape(Shape s) const;
};

}  // namespace rill
