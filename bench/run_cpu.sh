#!/usr/bin/env bash
# The CPU benchmark of issue #2: batch-1 prompt and generated tokens/s of a ~110M-parameter Llama-shaped
# model with random bf16 weights (dim 768, 12 layers, 12 heads, vocab 32000), and decode as a fraction of
# the memory-bandwidth limit. Writes bench/results/cpu-generate-<host>-<date>.{json,txt}.
#   bench/run_cpu.sh [build-dir]
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build}
ninja -C "$build" rill make_random_model cpu_generate kernels_bench >/dev/null
model="$build/llama110m-bf16"
[ -f "$model/model.safetensors" ] || "$build/make_random_model" --out "$model" --dim 768 --layers 12 --heads 12 \
  --ffn 2048 --vocab 32000 --dtype bf16 --tied --seed 0
stamp="$(date -u +%Y-%m-%d)"
name="cpu-generate-$(hostname -s | tr -c 'A-Za-z0-9-\n' '-')-$stamp"
mkdir -p bench/results
{
  echo "# $(date -u) on $(nproc) cores: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
  echo "# command: bench/run_cpu.sh ($build/bench/cpu_generate --model $model --prompt-tokens 128 --new-tokens 128 --repeats 5)"
  "$build/bench/cpu_generate" --model "$model" --prompt-tokens 128 --new-tokens 128 --repeats 5 \
    --out "bench/results/$name.json" | tail -1
  echo "# kernels (Google Benchmark):"
  "$build/bench/kernels_bench" --benchmark_min_time=0.2 2>/dev/null | grep BM_
} | tee "bench/results/$name.txt"
