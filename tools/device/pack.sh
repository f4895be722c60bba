#!/usr/bin/env bash
# Packs what a GPU run needs into .device/bundle (git-ignored; name it in the device tool's carry): the GPU
# test binaries and rill from build/, the ../shared fixtures they read (FIXTURES: which fixture models, all by
# default; the device's 64 MiB limit does not hold all of them beside the tracked files), and the Debian
# libraries the device lacks. OLD=DIR also packs DIR/bench/gpu_bench (a build of an earlier commit) as old/, for
# A/B runs in one call (bench/run_cuda_ab.sh). PACK=tests packs only what the tests and tools/device/serve_e2e.sh
# need, PACK=bench only gpu_bench (and no fixtures): the tracked files take 46 of the 64 MiB, and a bundle of
# everything is 27 MB.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=.device/bundle
pack=${PACK:-tests,bench}
rm -rf "$out" && mkdir -p "$out/lib"
# Stripped copies (a third smaller once compressed): the carry limit is tight beside the tracked files.
bins=$(mktemp -d)
list=()
[[ $pack == *tests* ]] && list+=(build/rill build/make_random_model build/tests/cuda_test build/tests/golden_test
  build/tests/engine_test build/tests/streaming_test)
[[ $pack == *bench* && -f build/bench/gpu_bench ]] && list+=(build/bench/gpu_bench)
[[ $pack == *tests* ]] || FIXTURES=none
for f in "${list[@]}"; do
  mkdir -p "$bins/$(dirname "$f")" && strip -o "$bins/$f" "$f"
done
tar cJf "$out/bins.tar.xz" -C "$bins" build
if [ -n "${OLD:-}" ]; then
  mkdir -p "$bins/old"
  strip -o "$bins/old/gpu_bench" "$OLD/bench/gpu_bench"
  (cd "$OLD" && git rev-parse HEAD 2>/dev/null || true) > "$bins/old/COMMIT"
  tar cJf "$out/old.tar.xz" -C "$bins" old
fi
rm -rf "$bins"
fixtures=${FIXTURES:-$(ls ../shared/fixtures/models)}
[ "$fixtures" = none ] && fixtures=""
[[ $pack == *tests* ]] && (cd ../shared && tar cJf "$OLDPWD/$out/shared.tar.xz" data/models/stories260K \
  data/models/stories260K-hf $(for f in $fixtures; do echo fixtures/models/$f; done))
# rill links these Debian libraries, which Ubuntu (the device) lacks: tokenizer regexes and Unicode, and the
# HTTP server (cpp-httplib with brotli).
for l in libpcre2-8.so.0 libutf8proc.so.2 libcpp-httplib.so.0.11 libbrotlicommon.so.1 libbrotlidec.so.1 \
  libbrotlienc.so.1; do cp -L /usr/lib/x86_64-linux-gnu/$l "$out/lib/"; done
du -sh "$out"
