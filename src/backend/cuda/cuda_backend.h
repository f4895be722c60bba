// The CUDA backend (NVIDIA Hopper first, sm_90a): weights in bf16 on the device, bf16 activations with an
// f32 residual stream, a bf16 paged KV cache, GEMMs through cuBLASLt (bf16 in, f32 accumulate) and
// hand-written kernels for everything else (kernels.cu, attention.cu). Ops are queued on one stream;
// memory comes from the stream-ordered pool (cudaMallocAsync with no release threshold), so after the
// first steps of a given shape no call reaches the driver's allocator.
#pragma once

#include <memory>

#include "backend/backend.h"
#include "core/dtype.h"

namespace rill {

// The backend on CUDA device `device`, computing in `dtype`: BF16 (the default, described above) or F32
// (float32 mode: weights, activations and the KV cache in f32, true-f32 cuBLASLt GEMMs and CUDA-core
// attention; batch-1 decode about 0.44x the speed of bf16 on an H100, for checking results against f32
// references). Throws rill::Error when there is no usable device.
std::unique_ptr<Backend> make_cuda_backend(int device = 0, DType dtype = DType::BF16);
// The cudaStream_t a CUDA backend queues its ops on (for timing with CUDA events); null for other backends.
void* cuda_stream(Backend& backend);

}  // namespace rill
