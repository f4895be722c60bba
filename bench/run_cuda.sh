#!/usr/bin/env bash
# The CUDA benchmarks of issue #5, on the device machine, in one call: rill's gpu_bench (Llama-3-8B shape,
# random bf16 weights) and, in the same run, the Hugging Face transformers / PyTorch SDPA baselines.
#   here:   cmake --build build && FIXTURES=none bash tools/device/pack.sh
#   device: bash bench/run_cuda.sh .device/bundle   (writes $OUT/gpu_bench.json, $OUT/hf_baseline.json: HF cold and warm)
set -uo pipefail
bundle=${1:-.device/bundle}
out=${OUT:-/tmp}
unpacked=$(mktemp -d) && tar xJf "$bundle/bins.tar.xz" -C "$unpacked"
export LD_LIBRARY_PATH="$PWD/$bundle/lib:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/device.txt"
"$unpacked/build/bench/gpu_bench" --out "$out/gpu_bench.json" 2>&1 | tee "$out/gpu_bench.txt"
PYTHONUNBUFFERED=1 python3 bench/hf_baseline.py > "$out/hf_baseline.json" 2> "$out/hf_baseline.err"
cat "$out/hf_baseline.json"
