#!/usr/bin/env bash
# An A/B of two builds on the device machine, in one call: gpu_bench (Llama-3-8B shape, random bf16 weights) of
# an earlier commit (old/, packed by `OLD=DIR tools/device/pack.sh`) and of this one, alternating old, new, old,
# new, ... so that drift of the machine falls on both. Prints each run's figures and, last, a table of medians.
#   here:   OLD=/path/to/old/build bash tools/device/pack.sh
#   device: bash bench/run_cuda_ab.sh .device/bundle [ROUNDS (2)] [WHAT (decode1,batch64)] [gpu_bench options...]
#           (writes $OUT/ab.json: every run's gpu_bench JSON, and $OUT/ab.txt: the log)
set -uo pipefail
bundle=${1:-.device/bundle}
rounds=${2:-2}
what=${3:-decode1,batch64}
out=${OUT:-/tmp}
unpacked=$(mktemp -d)
tar xJf "$bundle/bins.tar.xz" -C "$unpacked"
export LD_LIBRARY_PATH="$PWD/$bundle/lib:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}"
declare -A bin=([old]="$unpacked/old/gpu_bench" [new]="$unpacked/build/bench/gpu_bench")
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  echo "old: $(cat "$unpacked/old/COMMIT")  new: $(cat "$unpacked/build/COMMIT")"
  for r in $(seq "$rounds"); do
    for b in old new; do
      echo "== round $r: $b"
      "${bin[$b]}" --what "$what" "${@:4}" --out "$out/ab-$b-$r.json" 2>&1 | grep -vE '^\s*$'
    done
  done
} 2>&1 | tee "$out/ab.txt"
python3 - "$out" "$rounds" <<'EOF' | tee -a "$out/ab.txt"
import json, statistics, sys, glob, os
out, rounds = sys.argv[1], int(sys.argv[2])
runs = {b: [json.load(open(f"{out}/ab-{b}-{r}.json")) for r in range(1, rounds + 1)] for b in ("old", "new")}
json.dump(runs, open(f"{out}/ab.json", "w"), indent=1)
for f in glob.glob(f"{out}/ab-*-*.json"): os.remove(f)
rows = [("decode1", "tokens_per_s", "decode, batch 1 (tok/s)"),
        ("decode1", "sampled_tokens_per_s", "decode, batch 1, sampling (tok/s)"),
        ("batch64", "output_tokens_per_s", "batch 64 x (128 + 128), greedy (tok/s)"),
        ("batch64", "decode_phase_tokens_per_s", "batch 64, decode phase (tok/s)"),
        ("batch64", "sampled_output_tokens_per_s", "batch 64, sampling (tok/s)"),
        ("batch64", "sampled_logprobs5_output_tokens_per_s", "batch 64, sampling + logprobs 5 (tok/s)"),
        ("batch64", "constrained_output_tokens_per_s", "batch 64, JSON Schema, greedy (tok/s)"),
        ("batch64", "constrained_sampled_output_tokens_per_s", "batch 64, JSON Schema, sampling (tok/s)"),
        ("prefill", "seconds", "prefill 4096 (s)")]
print(f"| figure | old (each run) | new (each run) | new / old (medians) |\n|---|---|---|---:|")
for sec, key, name in rows:
    vals = {b: [r[sec][key] for r in runs[b] if sec in r and key in r[sec]] for b in runs}
    if not vals["old"] or not vals["new"]: continue
    mo, mn = statistics.median(vals["old"]), statistics.median(vals["new"])
    print(f"| {name} | {', '.join(f'{v:.4g}' for v in vals['old'])} | {', '.join(f'{v:.4g}' for v in vals['new'])} | {mn / mo:.3f} |")
EOF
