#!/usr/bin/env bash
# Static checks of src/ beyond the compiler's: clang-tidy with the repository's .clang-tidy (every finding is an
# error) over each source file of the build's compile_commands.json (configured by scripts/build.sh). Takes about
# 5 minutes on 2 cores; scripts/test.sh runs it when RILL_LINT=1.
set -euo pipefail
cd "$(dirname "$0")/.."
build=${RILL_BUILD_DIR:-build}
[ -f "$build/compile_commands.json" ] || bash scripts/build.sh
command -v run-clang-tidy >/dev/null 2>&1 || bash scripts/setup.sh clang-tidy
tidy=$(command -v run-clang-tidy)
"$tidy" -p "$build" -j "$(nproc)" -quiet "$PWD/src/.*\.cpp$"
echo "lint: clang-tidy clean"
