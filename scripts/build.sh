#!/usr/bin/env bash
# Installs what rill needs (scripts/setup.sh, idempotent), then configures and builds into build/
# (or $RILL_BUILD_DIR). Extra arguments go to cmake, e.g. -DRILL_CUDA=OFF.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
build=${RILL_BUILD_DIR:-build}
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release "$@" >/dev/null
ninja -C "$build"
