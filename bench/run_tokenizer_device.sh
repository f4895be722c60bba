#!/usr/bin/env bash
# On the GPU machine (its CPU has Hugging Face tokenizers): the CUDA self-test, then encode throughput of
# rill and HF tokenizers side by side, three alternating rounds. Expects .device/ as prepared by the
# README's "Benchmarks" section; writes $OUT/tokenizer.jsonl.
set -uo pipefail
cd "$(dirname "$0")/../.device"
export LD_LIBRARY_PATH=$PWD/lib TOKENIZERS_PARALLELISM=false RAYON_NUM_THREADS=1
echo "cpu: $(lscpu | grep -m1 'Model name' | cut -d: -f2 | xargs), $(nproc) threads"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
./cuda_test
toks="tok/llama3-style.json tok/qwen2-style.json tok/llama2-sentencepiece.json"
for round in 1 2 3; do
  for mode in "" --per-line; do
    ./tokenizer_encode --text tinyshakespeare.txt --repeats 7 $mode $toks
    python3 ../bench/tokenizer_hf.py --text tinyshakespeare.txt --repeats 7 $mode $toks
  done
done | tee "${OUT:-/tmp}/tokenizer.jsonl"
python3 - "${OUT:-/tmp}/tokenizer.jsonl" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
print(f"{'tokenizer':28} {'mode':9} {'rill MB/s':>10} {'HF MB/s':>10} {'ratio':>6}  ids equal")
for tok in sorted({r["tokenizer"] for r in rows}):
    for mode in ("whole", "per-line"):
        rill = [r for r in rows if r["tokenizer"] == tok and r["engine"] == "rill" and r["mode"] == mode]
        hf = [r for r in rows if r["tokenizer"] == tok and r["engine"] != "rill" and r["mode"] == mode]
        a, b = statistics.median(r["MB_per_s"] for r in rill), statistics.median(r["MB_per_s"] for r in hf)
        same = all(x["ids_fnv1a"] == hf[0]["ids_fnv1a"] and x["tokens"] == hf[0]["tokens"] for x in rill + hf)
        print(f"{tok.split('/')[-1]:28} {mode:9} {a:10.1f} {b:10.1f} {a / b:6.2f}  {same}")
PY
