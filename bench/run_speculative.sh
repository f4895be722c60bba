#!/usr/bin/env bash
# Issue 22, speculative decoding, in one call:
#   - batch 1, rill-tiny with --spec none / draft (rill-tiny-draft) / ngram, greedy and T 0.7, on Shakespeare
#     (not in rill-tiny's training text): bench/speculative_batch1.py, through `rill generate`;
#   - on a GPU, Llama-3-8B shape (random bf16 weights): the cost of a step verifying K = 1..8 drafts per sequence
#     against a decode step at batch 1 and 16, and batch 64 with --spec ngram on vs off (gpu_bench --what
#     verify,spec64);
#   - on a GPU, `rill serve --spec draft` end to end: completions (greedy and sampled) and /metrics.
#   device: ninja -C build && FIXTURES=none bash tools/device/pack.sh, then bash bench/run_speculative.sh .device/bundle
#   here:   bash bench/run_speculative.sh           (the CPU: build/rill and ../shared; batch 1 only)
#   ROUNDS (default 3), N (new tokens, default 256), PARTS ("batch1 verify serve") choose what runs.
set -uo pipefail
bundle=${1:-}
here=$(pwd)
out=${OUT:-/tmp}
parts=" ${PARTS:-batch1 verify serve} "
part() { [[ "$parts" == *" $1 "* ]]; }
if [ -n "$bundle" ]; then
  u=$(mktemp -d)
  for f in "$bundle"/*.tar.xz; do tar xJf "$f" -C "$u"; done
  export LD_LIBRARY_PATH="$here/$bundle/lib:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}"
  rill=$u/build/rill text=$u/data/text/tinyshakespeare.txt gpu_bench=$u/build/bench/gpu_bench device=cuda
  commit=$(cat "$u/build/COMMIT")
  echo "# $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader); rill $commit"
else
  rill=build/rill text=../shared/data/text/tinyshakespeare.txt gpu_bench="" device=cpu
  echo "# $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores; rill $(git rev-parse --short HEAD)"
fi
if part batch1; then
  echo "## batch 1, rill-tiny + rill-tiny-draft, $device"
  python3 "$here/bench/speculative_batch1.py" "$rill" "$text" --model "$here/models/rill-tiny" --device $device --n "${N:-256}" \
    --rounds "${ROUNDS:-3}" | tee "$out/speculative_batch1.txt"
fi
if [ -n "$gpu_bench" ] && part verify; then
  echo "## Llama-3-8B shape: verify cost and batch 64"
  "$gpu_bench" --what verify,spec64 --repeats 5 --out "$out/speculative_gpu_bench.json"
fi
if [ "$device" = cuda ] && part serve; then
  echo "## rill serve --spec draft, end to end"
  port=8123
  "$rill" serve -m "$here/models/rill-tiny" --spec draft --port $port >"$out/serve.log" 2>&1 &
  pid=$!
  for _ in $(seq 1 120); do curl -sf localhost:$port/health >/dev/null && break; sleep 0.5; done
  grep -E "speculative|ready" "$out/serve.log"
  body() { printf '{"prompt": "ROMEO:\\nBut soft, what light", "max_tokens": 64, "temperature": %s, "seed": 3%s}' "$1" "$2"; }
  for t in 0 0.7; do
    a=$(curl -s localhost:$port/v1/completions -H 'Content-Type: application/json' -d "$(body $t '')")
    b=$(curl -s localhost:$port/v1/completions -H 'Content-Type: application/json' -d "$(body $t ', "speculative": false')")
    python3 - "$a" "$b" "$t" <<'EOF'
import json, sys
a, b = json.loads(sys.argv[1]), json.loads(sys.argv[2])
ta, tb = a["choices"][0]["text"], b["choices"][0]["text"]
print(f"T {sys.argv[3]}: {a['usage']['completion_tokens']} tokens; same text with and without speculation: {ta == tb}")
print("  " + repr(ta[:120]))
EOF
  done
  curl -s -N localhost:$port/v1/completions -H 'Content-Type: application/json' \
    -d '{"prompt": "JULIET:\nO Romeo", "max_tokens": 32, "stream": true}' | grep -c '^data: {' | sed 's/^/streamed chunks: /'
  curl -s localhost:$port/metrics | grep -E "^rill_spec"
  kill -INT $pid
  wait $pid
  echo "serve exited with $?"
fi
