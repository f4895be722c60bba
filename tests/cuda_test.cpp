// GPU tests: skipped, visibly, where there is no CUDA build or no device (CI); run on the GPU machine
// with `ctest -L gpu`.
#include <gtest/gtest.h>

#ifdef RILL_HAVE_CUDA
#include "backend/cuda/device_info.h"
#endif

TEST(Cuda, DeviceComputes) {
#ifndef RILL_HAVE_CUDA
  GTEST_SKIP() << "skipped: built without CUDA";
#else
  if (rill::cuda::device_count() == 0) GTEST_SKIP() << "skipped: no CUDA device on this machine";
  std::printf("device 0: %s\n", rill::cuda::device_description(0).c_str());
  EXPECT_TRUE(rill::cuda::self_test());
#endif
}
