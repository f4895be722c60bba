#include "backend/backend.h"

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

std::unique_ptr<Backend> make_backend(const std::string& device, int cpu_threads) {
  if (device == "cpu") return make_cpu_backend(cpu_threads);
  if (device == "auto") return cuda_available() ? make_backend("cuda", cpu_threads) : make_cpu_backend(cpu_threads);
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
    return make_cuda_backend(index);
#else
    throw Error("--device " + device + ": this rill was built without CUDA (nvcc was not found at build time)");
#endif
  }
  throw Error("--device: '" + device + "' is not one of cpu, cuda, cuda:N, auto");
}

}  // namespace rill
