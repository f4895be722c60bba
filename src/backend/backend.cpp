#include "backend/backend.h"

#include <optional>

#include "core/error.h"

#ifdef RILL_HAVE_CUDA
#include "backend/cuda/cuda_backend.h"
#include "backend/cuda/device_info.h"
#endif

namespace rill {

bool cuda_available() {
#ifdef RILL_HAVE_CUDA
  return cuda::device_count() > 0;
#else
  return false;
#endif
}

namespace {

// --dtype's values: what the model computes in; none for "auto", the device's default (the CPU: f32;
// CUDA: bf16).
std::optional<DType> compute_dtype(const std::string& dtype) {
  if (dtype == "auto") return std::nullopt;
  if (dtype == "bfloat16" || dtype == "bf16") return DType::BF16;
  if (dtype == "float32" || dtype == "f32" || dtype == "float") return DType::F32;
  throw Error("--dtype: '" + dtype + "' is not one of auto, bfloat16, float32");
}

}  // namespace

std::unique_ptr<Backend> make_backend(const std::string& device, int cpu_threads, const std::string& dtype) {
  const std::optional<DType> dt = compute_dtype(dtype);
  if (device == "auto") return make_backend(cuda_available() ? "cuda" : "cpu", cpu_threads, dtype);
  if (device == "cpu") {
    RILL_CHECK(dt != DType::BF16,
               "--dtype " + dtype +
                   ": the CPU backend computes in float32 (bf16 weights stay bf16 in memory); "
                   "use --dtype auto or float32, or --device cuda");
    return make_cpu_backend(cpu_threads);
  }
  if (device == "cuda" || device.rfind("cuda:", 0) == 0) {
#ifdef RILL_HAVE_CUDA
    int index = 0;
    if (device.size() > 5) {
      const std::string n = device.substr(5);
      RILL_CHECK(!n.empty() && n.find_first_not_of("0123456789") == std::string::npos && n.size() < 4,
                 "--device: '" + device + "' is not cuda:N");
      index = std::stoi(n);
    }
    RILL_CHECK(cuda::device_count() > index, "--device " + device + ": no such CUDA device (" +
                                                 std::to_string(cuda::device_count()) + " visible)");
    return make_cuda_backend(index, dt.value_or(DType::BF16));
#else
    throw Error("--device " + device + ": this rill was built without CUDA (nvcc was not found at build time)");
#endif
  }
  throw Error("--device: '" + device + "' is not one of cpu, cuda, cuda:N, auto");
}

}  // namespace rill
