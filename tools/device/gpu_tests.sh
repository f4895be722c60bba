#!/usr/bin/env bash
# Runs the GPU tests on the device machine from a carried bundle (see tools/device/pack.sh): the test binaries
# built here, the ../shared files they read, and the libraries the device lacks. Run from the repository root
# there; the binaries find the checkout's models/ and tests/data/ and the unpacked shared files through the
# RILL_* variables below (tests/test_util.h). Logs go to $OUT.
#   bash tools/device/gpu_tests.sh BUNDLE_DIR [gtest filter]      (SANITIZE=1: also compute-sanitizer memcheck)
set -uo pipefail
bundle=$1
filter=${2:-*}
here=$(pwd)
unpacked=$(mktemp -d)
for f in "$bundle"/*.tar.xz; do tar xJf "$f" -C "$unpacked"; done
export LD_LIBRARY_PATH="$here/$bundle/lib:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}"
export RILL_SHARED_DIR="$unpacked" RILL_MODELS_DIR="$here/models" RILL_TEST_DATA_DIR="$here/tests/data"
export RILL_MAKE_RANDOM_MODEL="$unpacked/build/make_random_model"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
status=0
run() {
  local name=$1
  shift
  echo "== $name"
  if ! "$@" >"${OUT:-/tmp}/$name.log" 2>&1; then status=1; fi
  grep -E "^\[  (PASSED|FAILED|SKIPPED) |^\[  FAILED  \]|tests? ran" "${OUT:-/tmp}/$name.log" | tail -20
}
tests=$unpacked/build/tests
run cuda_test "$tests/cuda_test" --gtest_filter="$filter"
export RILL_BATCH_INVARIANT=1  # the engine tests compare batched runs with single ones token for token
RILL_TEST_DEVICE=cuda run gpu.golden_test "$tests/golden_test" --gtest_filter="$filter"
RILL_TEST_DEVICE=cuda RILL_TEST_DTYPE=float32 run gpu_f32.golden_test "$tests/golden_test" --gtest_filter="$filter"
RILL_TEST_DEVICE=cuda run gpu.engine_test "$tests/engine_test" --gtest_filter="$filter"
RILL_TEST_DEVICE=cuda run gpu.speculative_test "$tests/speculative_test" --gtest_filter="$filter"
RILL_TEST_DEVICE=cuda run gpu.streaming_test "$tests/streaming_test" --gtest_filter="$filter"
if [ "${SANITIZE:-0}" = 1 ]; then
  # compute-sanitizer memcheck over the GPU tests (the engine's under a filter: memcheck is slow).
  ms="compute-sanitizer --tool memcheck --error-exitcode 9"
  run memcheck.cuda_test timeout 300 $ms "$tests/cuda_test"
  RILL_TEST_DEVICE=cuda run memcheck.golden_test timeout 300 $ms "$tests/golden_test"
  RILL_TEST_DEVICE=cuda RILL_TEST_DTYPE=float32 run memcheck.golden_f32 timeout 200 $ms "$tests/golden_test" \
    --gtest_filter='*llama_f32*:*qwen3_moe*'
  RILL_TEST_DEVICE=cuda run memcheck.streaming_test timeout 300 $ms "$tests/streaming_test"
  RILL_TEST_DEVICE=cuda run memcheck.engine_test timeout 300 $ms "$tests/engine_test" --gtest_filter='*BatchInvariant*:*SinkWindow*:*NaN*:*Logprobs*'
  grep -h "ERROR SUMMARY" "${OUT:-/tmp}"/memcheck.*.log
fi
exit $status
