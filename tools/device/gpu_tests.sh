#!/usr/bin/env bash
# Runs the GPU tests on the device machine from a carried bundle (see tools/device/pack.sh): the test binaries
# built here, the ../shared files they read, and the libraries the device lacks. The binaries hold this
# checkout's absolute paths, so the script links them (it runs as root there). Logs go to $OUT.
#   bash tools/device/gpu_tests.sh BUNDLE_DIR [gtest filter]
set -uo pipefail
bundle=$1
filter=${2:-*}
here=$(pwd)
mkdir -p /work /tmp/rill
[ -e /work/main ] || ln -s "$here" /work/main
mkdir -p /work/shared
for f in "$bundle"/*.tar.xz; do tar xJf "$f" -C /tmp/rill; done
[ -d /tmp/rill/fixtures ] && cp -r /tmp/rill/fixtures /work/shared/ 2>/dev/null
[ -d /tmp/rill/data ] && cp -r /tmp/rill/data /work/shared/ 2>/dev/null
mkdir -p /work/main/build/tests
cp -f /tmp/rill/build/rill /tmp/rill/build/make_random_model /work/main/build/ 2>/dev/null
cp -f /tmp/rill/build/tests/* /work/main/build/tests/ 2>/dev/null
export LD_LIBRARY_PATH="$here/$bundle/lib:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
status=0
run() {
  local name=$1
  shift
  echo "== $name"
  if ! "$@" >"${OUT:-/tmp}/$name.log" 2>&1; then status=1; fi
  grep -E "^\[  (PASSED|FAILED|SKIPPED) |^\[  FAILED  \]|tests? ran" "${OUT:-/tmp}/$name.log" | tail -20
}
cd /work/main/build
run cuda_test tests/cuda_test --gtest_filter="$filter"
export RILL_BATCH_INVARIANT=1  # the engine tests compare batched runs with single ones token for token
RILL_TEST_DEVICE=cuda run gpu.golden_test tests/golden_test --gtest_filter="$filter"
RILL_TEST_DEVICE=cuda run gpu.engine_test tests/engine_test --gtest_filter="$filter"
RILL_TEST_DEVICE=cuda run gpu.streaming_test tests/streaming_test --gtest_filter="$filter"
if [ "${SANITIZE:-0}" = 1 ]; then
  # compute-sanitizer memcheck over the GPU tests (the engine's under a filter: memcheck is slow).
  ms="compute-sanitizer --tool memcheck --error-exitcode 9"
  run memcheck.cuda_test timeout 300 $ms tests/cuda_test
  RILL_TEST_DEVICE=cuda run memcheck.golden_test timeout 300 $ms tests/golden_test
  RILL_TEST_DEVICE=cuda run memcheck.streaming_test timeout 300 $ms tests/streaming_test
  RILL_TEST_DEVICE=cuda run memcheck.engine_test timeout 300 $ms tests/engine_test --gtest_filter='*BatchInvariant*:*Rolling*'
  grep -h "ERROR SUMMARY" "${OUT:-/tmp}"/memcheck.*.log
fi
exit $status
