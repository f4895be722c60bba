#!/usr/bin/env bash
# The serving benchmark of issue #4 on this machine: `rill serve` on a 42M-parameter Llama-shaped model with
# random bf16 weights and the qwen2-style tokenizer (dim 512, 8 layers, vocab 16022), driven by
# build/bench/serve_load: a Poisson run and a burst run. Writes bench/results/serve-<kind>-<host>-<date>.{json,png}.
#   bench/run_serve.sh [build-dir]
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build}
ninja -C "$build" rill make_random_model serve_load >/dev/null
model="$build/serve-bench-model"
[ -f "$model/model.safetensors" ] || "$build/make_random_model" --out "$model" --dim 512 --layers 8 --heads 8 \
  --ffn 1376 --vocab 16022 --dtype bf16 --seed 1 >/dev/null
cp ../shared/data/tokenizers/qwen2-style/tokenizer.json ../shared/data/tokenizers/qwen2-style/tokenizer_config.json "$model/"
port=8791
"$build/rill" serve --model "$model" --served-model-name random-42M-bf16 --port $port --max-batch-tokens 256 \
  --max-num-seqs 64 --kv-cache-memory 1GiB 2>"$build/serve-bench.log" &
pid=$!
trap 'kill -INT $pid 2>/dev/null; wait $pid 2>/dev/null' EXIT
for _ in $(seq 100); do curl -sf localhost:$port/health >/dev/null && break; sleep 0.1; done
stamp="$(date -u +%Y-%m-%d)"
host="$(hostname -s | tr -c 'A-Za-z0-9-\n' '-')"
mkdir -p bench/results
common=(--url http://127.0.0.1:$port --prompt-tokens-min 32 --prompt-tokens-max 512 --output-tokens-min 16
        --output-tokens-max 128 --slo-ttft-ms 2000 --slo-tpot-ms 200)
"$build/bench/serve_load" "${common[@]}" --seed 1 --num-requests 60 --arrival poisson --rate 2 \
  --out "bench/results/serve-poisson-$host-$stamp.json" --plot "bench/results/serve-poisson-$host-$stamp.png" >/dev/null
"$build/bench/serve_load" "${common[@]}" --seed 2 --num-requests 64 --arrival burst \
  --out "bench/results/serve-burst-$host-$stamp.json" --plot "bench/results/serve-burst-$host-$stamp.png" >/dev/null
# Prefix reuse: a 1500-token prompt the server has not seen (cold), then the same prompt again (warm), five
# times with different prompts. max_tokens 1 without streaming: the request time is prefill + one token.
python3 - "$port" > "bench/results/serve-prefix-ttft-$host-$stamp.json" <<'PY'
import json, random, statistics, subprocess, sys
port = sys.argv[1]
def timed(ids):
    body = json.dumps({"prompt": ids, "max_tokens": 1})
    out = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{time_total}", f"localhost:{port}/v1/completions",
                          "-H", "Content-Type: application/json", "-d", body], capture_output=True, text=True, check=True)
    return float(out.stdout)
cold, warm = [], []
for k in range(5):
    rng = random.Random(100 + k)
    ids = [rng.randrange(1, 16000) for _ in range(1500)]
    cold.append(timed(ids))
    warm.append(timed(ids))
print(json.dumps({"prompt_tokens": 1500, "cold_s": cold, "warm_s": warm, "cold_median_s": statistics.median(cold),
                  "warm_median_s": statistics.median(warm), "speedup": statistics.median(cold) / statistics.median(warm)}, indent=2))
PY
curl -s localhost:$port/metrics | grep -E '^rill_(kv_blocks_used|requests_running|prefix_cache_hit_rate|preemptions_total|engine_steps_total) ' \
  > "bench/results/serve-metrics-after-$host-$stamp.txt"
rm -f bench/results/*.png.dat bench/results/*.png.gp
python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print('prefix reuse, 1500-token prompt: cold %.3fs, warm %.3fs (%.1fx)' % (d['cold_median_s'], d['warm_median_s'], d['speedup']))" "bench/results/serve-prefix-ttft-$host-$stamp.json"
for f in bench/results/serve-{poisson,burst}-"$host-$stamp".json; do
  python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print(sys.argv[1].split('/')[-1], 'completed', d['completed'], 'of', d['num_requests'],
  '| out tok/s %.1f | TTFT p50 %.2fs p99 %.2fs | TPOT p50 %.0fms p99 %.0fms | ITL p50 %.0fms p99 %.0fms | goodput %.2f req/s' % (
  d['output_throughput_tokens_per_s'], d['ttft_s']['p50'], d['ttft_s']['p99'], d['tpot_s']['p50']*1000, d['tpot_s']['p99']*1000,
  d['itl_s']['p50']*1000, d['itl_s']['p99']*1000, d['goodput_requests_per_s']))" "$f"
done
