// What CUDA devices this process can see. The first piece of the CUDA backend (issue #5); compiled
// whenever nvcc is present so CI catches CUDA build breakage.
#pragma once

#include <string>

namespace rill::cuda {

// Number of usable CUDA devices (0 without a driver or GPU).
int device_count();
// "NVIDIA H100 80GB HBM3 (sm_90, 79.1 GiB)" for device `i`, or the CUDA error text.
std::string device_description(int i);
// Runs a trivial kernel on device 0 and checks its result: true when the GPU computes correctly.
bool self_test();

}  // namespace rill::cuda
