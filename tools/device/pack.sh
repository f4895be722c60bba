#!/usr/bin/env bash
# Packs what a GPU run needs into .device/bundle (git-ignored; name it in the device tool's carry): the GPU
# test binaries and rill from build/, the ../shared fixtures they read (FIXTURES: which fixture models, all by
# default; the device's 64 MiB limit does not hold all of them beside the tracked files), and the Debian
# libraries the device lacks.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=.device/bundle
rm -rf "$out" && mkdir -p "$out/lib"
# Stripped copies (a third smaller once compressed): the carry limit is tight beside the tracked files.
bins=$(mktemp -d)
for f in build/rill build/make_random_model build/tests/cuda_test build/tests/golden_test build/tests/engine_test \
  build/tests/streaming_test $(ls build/bench/gpu_bench 2>/dev/null); do
  mkdir -p "$bins/$(dirname "$f")" && strip -o "$bins/$f" "$f"
done
tar cJf "$out/bins.tar.xz" -C "$bins" build
rm -rf "$bins"
fixtures=${FIXTURES:-$(ls ../shared/fixtures/models)}
[ "$fixtures" = none ] && fixtures=""
(cd ../shared && tar cJf "$OLDPWD/$out/shared.tar.xz" data/models/stories260K data/models/stories260K-hf \
  $(for f in $fixtures; do echo fixtures/models/$f; done))
for l in libpcre2-8.so.0 libutf8proc.so.2; do cp -L /usr/lib/x86_64-linux-gnu/$l "$out/lib/"; done
du -sh "$out"
