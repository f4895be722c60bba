#!/usr/bin/env bash
# rill's CPU backend against llama.cpp on this machine, on the same weights (issue 28):
#   - builds llama.cpp from ../shared/peers outside the repository (LLAMA_DIR, default /tmp/rill-peer-llama.cpp;
#     kept between runs), converts each model to GGUF with bench/gguf_convert.py (same bits, no torch needed);
#   - checks that both engines give the same greedy continuation (rill generate vs llama-completion, 200 tokens),
#     so that the comparison is of the same work;
#   - runs both alternately, ROUNDS rounds (default 7) of REPEATS runs each (default 3: rill's median, llama-bench's
#     mean, each after a warm-up run of its own), batch 1, THREADS threads (default: all cores), a
#     PROMPT-token prompt (default 256) and GEN new tokens (default 128): rill's bench/cpu_generate (through the
#     engine) and llama-bench -p PROMPT -n GEN;
#   - writes bench/results/cpu-vs-llamacpp-<host>-<date>.txt: medians, ratios, the machine's load before and
#     after, and rill's decode as a fraction of the memory-bandwidth limits: bytes read per token (weights + KV
#     cache) over the best parallel read rate, and over the memcpy rate (bytes copied per second, each read and
#     written once: a lower bar, the one issue 2 used).
#   bench/run_cpu_vs_llamacpp.sh [build-dir]       (MODELS="rill-tiny llama110m" by default)
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build}
rounds=${ROUNDS:-7} repeats=${REPEATS:-3} threads=${THREADS:-$(nproc)} prompt=${PROMPT:-256} gen=${GEN:-128}
models=${MODELS:-rill-tiny llama110m}
scripts/setup.sh python3-numpy >/dev/null  # gguf_convert.py runs on Debian's python3 with numpy
py=/usr/bin/python3
ninja -C "$build" rill make_random_model cpu_generate >/dev/null

llama=${LLAMA_DIR:-/tmp/rill-peer-llama.cpp}
if [ ! -x "$llama/build/bin/llama-bench" ] || [ ! -x "$llama/build/bin/llama-completion" ]; then
  rm -rf "$llama" && mkdir -p "$llama"
  tar xJf ../shared/peers/llama.cpp-*.tar.xz -C "$llama" --strip-components=1
  cmake -S "$llama" -B "$llama/build" -DCMAKE_BUILD_TYPE=Release -DGGML_CUDA=OFF -DLLAMA_BUILD_TESTS=OFF \
    -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF >/dev/null
  cmake --build "$llama/build" -j"$(nproc)" --target llama-bench llama-completion >/dev/null
fi
lb=$llama/build/bin

work=$build/cpu-vs-llamacpp
mkdir -p "$work"
model_dir() {
  case $1 in
    rill-tiny) echo models/rill-tiny ;;
    llama110m)  # ~110M-parameter Llama shape, random bf16 weights, the Llama-2 SentencePiece vocabulary
      local m=$build/llama110m-bf16
      if [ ! -f "$m/model.safetensors" ]; then
        "$build/make_random_model" --out "$m" --dim 768 --layers 12 --heads 12 --ffn 2048 --vocab 32000 --dtype bf16 \
          --tied --seed 0 >/dev/null
      fi
      cp ../shared/data/tokenizers/llama2-sentencepiece/tokenizer.json \
        ../shared/data/tokenizers/llama2-sentencepiece/tokenizer_config.json "$m/" 2>/dev/null || true
      echo "$m" ;;
    *) echo "unknown model $1" >&2; exit 2 ;;
  esac
}
tok_dir() { [ "$1" = llama110m ] && echo ../shared/data/tokenizers/llama2-sentencepiece || model_dir "$1"; }

stamp=$(date -u +%Y-%m-%d)
out=bench/results/cpu-vs-llamacpp-$(hostname -s | tr -c 'A-Za-z0-9-\n' '-')-$stamp.txt
mkdir -p bench/results
{
  echo "# $(date -u) on $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')," \
    "$(grep -o -w -E 'avx512f|avx2|fma' /proc/cpuinfo | sort -u | paste -sd+)); rill $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src || echo '+changes'), llama.cpp $(basename ../shared/peers/llama.cpp-*.tar.xz .tar.xz)"
  echo "# command: ROUNDS=$rounds REPEATS=$repeats THREADS=$threads PROMPT=$prompt GEN=$gen bench/run_cpu_vs_llamacpp.sh"
  echo "# load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
} | tee "$out"

for name in $models; do
  m=$(model_dir "$name")
  g=$work/$name.gguf
  "$py" bench/gguf_convert.py "$llama" "$m" "$g" --tokenizer "$(tok_dir "$name")" >/dev/null

  # Same work: the greedy continuation of one prompt, as text, from both (and where they part, by how much).
  p="Once upon a time, there was a little girl named Lily. She loved to play outside"
  "$build/rill" generate -m "$m" --device cpu --threads "$threads" -p "$p" -n 200 --temperature 0 --ignore-eos \
    2>/dev/null >"$work/$name.rill.txt"
  "$lb/llama-completion" -m "$g" -t "$threads" -p "$p" -n 200 --temp 0 --ignore-eos -no-cnv --no-display-prompt \
    </dev/null 2>/dev/null >"$work/$name.llama.txt"
  same=$("$py" - "$work/$name.rill.txt" "$work/$name.llama.txt" <<'EOF'
import sys
a, b = (open(p, encoding="utf-8", errors="replace").read().rstrip("\n") for p in sys.argv[1:3])
if a == b: print(f"identical ({len(a)} characters)")
else:
    i = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    print(f"DIFFERENT from character {i}: rill {a[i:i+40]!r} / llama.cpp {b[i:i+40]!r}")
EOF
)
  if [[ "$same" == DIFFERENT* ]]; then
    "$build/rill" generate -m "$m" --device cpu --threads "$threads" -p "$p" -n 200 --temperature 0 --ignore-eos \
      --output json 2>/dev/null >"$work/$name.rill.json"
    same+="; $("$py" bench/greedy_divergence.py "$build/rill" "$m" "$p" "$work/$name.rill.json" "$work/$name.llama.txt" \
      --threads "$threads" 2>&1 | tail -1)"
  fi
  echo "# $name ($m): greedy continuation, 200 tokens: $same" | tee -a "$out"

  : >"$work/$name.rounds"
  for r in $(seq "$rounds"); do
    "$build/bench/cpu_generate" --model "$m" --threads "$threads" --prompt-tokens "$prompt" --new-tokens "$gen" \
      --repeats "$repeats" --out "$work/$name.rill.json" >/dev/null
    "$lb/llama-bench" -m "$g" -t "$threads" -p "$prompt" -n "$gen" -r "$repeats" -o json 2>/dev/null >"$work/$name.llama.json"
    "$py" - "$work/$name.rill.json" "$work/$name.llama.json" >>"$work/$name.rounds" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
l = {("pp" if t["n_gen"] == 0 else "tg"): t["avg_ts"] for t in json.load(open(sys.argv[2]))}
print(r["prefill_tokens_per_s"], r["decode_tokens_per_s"], l["pp"], l["tg"], r["read_bandwidth_GBps"],
      r["copy_bandwidth_GBps"], r["decode_bytes_per_token"])
EOF
  done
  "$py" - "$work/$name.rounds" "$name" "$prompt" "$gen" <<'EOF' | tee -a "$out"
import statistics as st, sys
rows = [list(map(float, l.split())) for l in open(sys.argv[1])]
med = [st.median(c) for c in zip(*rows)]
rp, rd, lp, ld, rbw, cbw, bpt = med
# The machine's speed drifts between rounds (a shared VM): each round runs both engines back to back, so the
# ratio of a round compares like with like; the headline ratio is the median of the rounds' ratios.
pr = st.median(r[0] / r[2] for r in rows)
dr = st.median(r[1] / r[3] for r in rows)
name, p, g = sys.argv[2:5]
print(f"| {name} | prompt {p}: rill {rp:.1f} / llama.cpp {lp:.1f} tok/s; median of the rounds' ratios **{pr:.2f}x** "
      f"| decode {g}: rill {rd:.2f} / llama.cpp {ld:.2f} tok/s; **{dr:.2f}x** "
      f"| rill decode: {bpt/1e6:.1f} MB/token = {rd * bpt / 1e9:.1f} GB/s, {rd / (rbw * 1e9 / bpt):.0%} of the read-bandwidth "
      f"limit ({rbw:.1f} GB/s), {rd / (cbw * 1e9 / bpt):.0%} of the copy-bandwidth limit ({cbw:.1f} GB/s copied) |")
print("#   rounds (rill pp, llama.cpp pp, ratio; rill tg, llama.cpp tg, ratio): " +
      "; ".join(f"{r[0]:.0f} {r[2]:.0f} {r[0]/r[2]:.2f}, {r[1]:.1f} {r[3]:.1f} {r[1]/r[3]:.2f}" for r in rows))
EOF
done
echo "# load average after: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$out"
