#!/usr/bin/env bash
# Packs what a GPU run needs into .device/bundle (git-ignored; name it in the device tool's carry): rill, the GPU
# test binaries and gpu_bench from build/, the ../shared fixtures they read (FIXTURES: which fixture models, all
# by default; the device's 64 MiB limit does not hold all of them beside the 46 MB of tracked files), and the
# Debian libraries the device lacks. OLD=DIR also packs DIR/bench/gpu_bench (a build of an earlier commit) as
# old/gpu_bench, for A/B runs in one call (bench/run_cuda_ab.sh).
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${BUNDLE:-.device/bundle}  # BUNDLE=DIR packs elsewhere
rm -rf "$out" && mkdir -p "$out/lib"
# Stripped copies in one archive at xz -9e: every binary holds the same CUDA kernels, and xz's 64 MiB window at
# -9 stores them once (110 MB of binaries, old gpu_bench included, in 5.3 MB; 20 MB at the default -6).
bins=$(mktemp -d)
for f in build/rill build/make_random_model build/tests/cuda_test build/tests/golden_test build/tests/engine_test \
  build/tests/speculative_test build/tests/streaming_test $(ls build/bench/gpu_bench 2>/dev/null); do
  mkdir -p "$bins/$(dirname "$f")" && strip -o "$bins/$f" "$f"
done
# Which source the binaries come from (the device's copy of the tree may carry another git HEAD).
{ git rev-parse --short HEAD; git diff --quiet HEAD -- src bench tests || echo "(with uncommitted changes)"; } \
  | paste -sd' ' > "$bins/build/COMMIT"
dirs=(build)
# LLAMA_BENCH=path: llama.cpp's llama-bench (built with CUDA for sm_90a, see ../shared/peers), packed as llama-bench.
if [ -n "${LLAMA_BENCH:-}" ]; then strip -o "$bins/llama-bench" "$LLAMA_BENCH" && dirs+=(llama-bench); fi
if [ -n "${OLD:-}" ]; then
  mkdir -p "$bins/old" && strip -o "$bins/old/gpu_bench" "$OLD/bench/gpu_bench"
  (cd "$OLD" && git rev-parse --short HEAD 2>/dev/null || echo unknown) > "$bins/old/COMMIT"
  dirs+=(old)
fi
XZ_OPT=-9e tar cJf "$out/bins.tar.xz" -C "$bins" "${dirs[@]}"
rm -rf "$bins"
fixtures=${FIXTURES:-$(ls ../shared/fixtures/models)}
[ "$fixtures" = none ] && fixtures=""
(cd ../shared && tar cJf "$OLDPWD/$out/shared.tar.xz" data/models/stories260K data/models/stories260K-hf \
  data/tokenizers/llama3-style data/text/tinyshakespeare.txt \
  $(for f in $fixtures; do echo fixtures/models/$f; done))
# rill links these Debian libraries, which Ubuntu (the device) lacks: tokenizer regexes and Unicode (its HTTP
# server, Boost.Beast, is header-only).
for l in libpcre2-8.so.0 libutf8proc.so.2; do cp -L /usr/lib/x86_64-linux-gnu/$l "$out/lib/"; done
# LLAMA_SRC=path: the llama.cpp source tarball of ../shared/peers (its converter; unpacked beside the binaries).
if [ -n "${LLAMA_SRC:-}" ]; then cp "$LLAMA_SRC" "$out/llama.cpp-src.tar.xz"; fi
du -sh "$out"
