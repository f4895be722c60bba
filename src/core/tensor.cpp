#include "core/tensor.h"

#include "core/error.h"

namespace rill {

Shape::Shape(std::initializer_list<int64_t> d) {
  RILL_CHECK(d.size() <= size_t(kMaxDims), "tensor rank > 4 is not supported");
  for (int64_t v : d) dims[rank++] = v;
}

int64_t Shape::numel() const {
  int64_t n = 1;
  for (int i = 0; i < rank; ++i) n *= dims[i];
  return n;
}

bool Shape::operator==(const Shape& o) const {
  if (rank != o.rank) return false;
  for (int i = 0; i < rank; ++i)
    if (dims[i] != o.dims[i]) return false;
  return true;
}

std::string Shape::str() const {
  std::string s = "[";
  for (int i = 0; i < rank; ++i) s += (i ? ", " : "") + std::to_string(dims[i]);
  return s + "]";
}

Tensor Tensor::slice_rows(int64_t begin, int64_t count) const {
  RILL_CHECK(begin >= 0 && count >= 0 && begin + count <= rows(), "slice_rows out of range");
  Tensor t = *this;
  t.data = static_cast<char*>(data) + size_t(begin * row_size()) * dtype_size(dtype);
  if (t.shape.rank == 0) t.shape = Shape{count};
  else t.shape.dims[0] = count;
  return t;
}

Tensor Tensor::reshape(Shape s) const {
  RILL_CHECK(s.numel() == numel(), "reshape " + shape.str() + " -> " + s.str() + " changes the size");
  Tensor t = *this;
  t.shape = s;
  return t;
}

}  // namespace rill
