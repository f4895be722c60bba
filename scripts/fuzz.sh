#!/usr/bin/env bash
# Coverage-guided fuzzing (libFuzzer, clang from Debian) of what reads untrusted input: the HTTP server's request
# reader, the OpenAI request parsing and validation (JSON, chat template, tokenizer, response_format / grammar
# compilation), safetensors headers, tokenizer.json and chat templates. Builds fuzz/ with ASan + UBSan in
# build-fuzz (RILL_FUZZ_BUILD names another clang build configured with -DRILL_FUZZ=ON, as scripts/test.sh's
# build-asan is), then runs each harness for RILL_FUZZ_SECONDS (default 20; e.g. 3600 for a long run) from its
# committed seeds (fuzz/corpus/NAME) plus what earlier runs found (build-fuzz/corpus/NAME). A finding (crash,
# sanitizer report, uncaught exception, hang) fails the run and leaves its input in build-fuzz/findings/.
#   scripts/fuzz.sh [NAME...]     (default: every harness)
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${RILL_FUZZ_SECONDS:-20}
names=("$@")
[ ${#names[@]} -gt 0 ] || names=(http_request request_json safetensors tokenizer_json chat_template)
bash scripts/setup.sh clang libclang-rt-dev >/dev/null  # clang and its libFuzzer runtime
b=${RILL_FUZZ_BUILD:-build-fuzz}
if [ -z "${RILL_FUZZ_BUILD:-}" ]; then
  cmake -S . -B build-fuzz -G Ninja -DCMAKE_CXX_COMPILER=clang++ -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -g1 -DNDEBUG" -DRILL_SANITIZE=ON -DRILL_FUZZ=ON -DRILL_CUDA=OFF \
    -DRILL_TESTS=OFF -DRILL_BENCH=OFF >/dev/null
fi
ninja -C "$b" "${names[@]/#/fuzz_}"
mkdir -p "$b/findings"
status=0
for n in "${names[@]}"; do
  mkdir -p "$b/corpus/$n"
  echo "== fuzz_$n for ${seconds}s =="
  # -timeout: one input taking 10 s is a hang; -rss_limit_mb: one using 2 GB is a finding too.
  if ! UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 ASAN_OPTIONS=detect_leaks=1 \
      "$b/fuzz/fuzz_$n" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
      -artifact_prefix="$b/findings/$n-" "$b/corpus/$n" "fuzz/corpus/$n" > "$b/fuzz_$n.log" 2>&1; then
    echo "fuzz_$n: FINDING ($b/fuzz_$n.log, input in $b/findings/)"
    grep -E "ERROR|SUMMARY|==[0-9]+==|terminate|Test unit written" "$b/fuzz_$n.log" | head -20
    status=1
  else
    grep -E "stat::number_of_executed_units|cov: " "$b/fuzz_$n.log" | tail -2 | tr '\n' ' '
    echo
  fi
done
exit $status
