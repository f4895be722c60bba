#!/usr/bin/env bash
# The whole test suite: builds (scripts/build.sh) and runs every test with CTest, then rebuilds the tests
# with AddressSanitizer + UndefinedBehaviorSanitizer (clang) and runs them again, runs the libFuzzer harnesses of
# fuzz/ for a bounded time each (scripts/fuzz.sh), then runs the multithreaded parts (engine, thread pool,
# backend, a grammar shared by threads, the HTTP server) under ThreadSanitizer. GPU tests (label gpu) report "Skipped" on
# machines without a CUDA device. RILL_SKIP_SANITIZERS=1 skips the sanitizer passes; RILL_LINT=1 also runs
# clang-tidy (scripts/lint.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
jobs=$(nproc)
bash scripts/build.sh
(cd build && ctest --output-on-failure -j "$jobs")
if [ "${RILL_SKIP_SANITIZERS:-0}" != 1 ]; then
  echo "== the same tests under ASan + UBSan (clang, its coverage instrumentation shared with the fuzzers) =="
  bash scripts/setup.sh clang libclang-rt-dev >/dev/null  # clang and its libFuzzer runtime
  # -O1 with line tables only: ASan's reports keep file:line, and the build takes about half the time of -O2 -g.
  # One clang build serves the ASan tests and the libFuzzer harnesses (fuzz/), so fuzzing adds no build.
  grep -qs "CMAKE_CXX_COMPILER:.*clang" build-asan/CMakeCache.txt || rm -rf build-asan  # (was configured with g++)
  cmake -S . -B build-asan -G Ninja -DCMAKE_CXX_COMPILER=clang++ -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -g1 -DNDEBUG" -DRILL_SANITIZE=ON -DRILL_FUZZ=ON -DRILL_CUDA=OFF \
    -DRILL_BENCH=OFF >/dev/null
  ninja -C build-asan
  (cd build-asan && UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 ASAN_OPTIONS=detect_leaks=1 \
    ctest --output-on-failure -j "$jobs")
  echo "== fuzzers, ${RILL_FUZZ_SECONDS:-10} s each (RILL_FUZZ_SECONDS) =="
  RILL_FUZZ_BUILD=build-asan RILL_FUZZ_SECONDS=${RILL_FUZZ_SECONDS:-10} bash scripts/fuzz.sh
  echo "== engine, sessions, thread pool, backend, shared grammars and the HTTP server under TSan =="
  cmake -S . -B build-tsan -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DRILL_CUDA=OFF -DRILL_BENCH=OFF \
    -DCMAKE_CXX_FLAGS=-fsanitize=thread -DCMAKE_EXE_LINKER_FLAGS=-fsanitize=thread >/dev/null
  ninja -C build-tsan engine_test backend_test session_soak_test grammar_test http_test make_random_model
  (cd build-tsan && TSAN_OPTIONS=halt_on_error=1 ctest --output-on-failure -j "$jobs" -R '^(Models/Engine|Backend|ThreadPool|SessionSoak|Grammar.SharedBetweenThreads|Http\.)')
fi
if [ "${RILL_LINT:-0}" = 1 ]; then
  echo "== clang-tidy =="
  bash scripts/lint.sh
fi
