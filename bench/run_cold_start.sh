#!/usr/bin/env bash
# Issue 29, on the device in one call: from a cold start to full speed, Llama-3-8B shape (random bf16 weights).
#   - the disk: the checkpoint's read rate from the disk (page cache dropped for the file) and from the page cache;
#   - `rill generate`, fresh processes, 512- and 4096-token prompts (ids), each process running the prompt 3 times
#     (--repeat: run 1 is the cold one, runs 2-3 warm), with the warm-up (default) and with --no-warm-up;
#   - `rill serve`: seconds from start to GET /health 200, then the TTFT of 3 successive 512-token completions
#     (distinct prompts: no prefix reuse), without a tuning cache, with one (first start: written; second: read),
#     with --no-warm-up, and once with the checkpoint out of the page cache;
#   - llama.cpp (when the bundle has llama-bench built with CUDA and the llama.cpp source): the same weights as
#     GGUF BF16 (bench/llamacpp_convert.py), llama-bench pp512 / pp4096 (warm: it runs a warm-up first), and
#     the wall time of a llama-bench run of one tiny prompt, cold and cached (its load time, roughly).
#   here:   ninja -C build rill make_random_model && FIXTURES=none LLAMA_BENCH=/path/to/llama-bench \
#             LLAMA_SRC=/path/to/llama.cpp-*.tar.xz bash tools/device/pack.sh
#   device: bash bench/run_cold_start.sh .device/bundle     (the log, $OUT/cold_start.log, is also on stdout)
#   PARTS="generate llama" (default: "generate nsys serve llama") runs only those parts; ROUNDS=1 (default 2)
#   runs each generate case once and skips the serve start with the checkpoint out of the page cache.
set -uo pipefail
parts=" ${PARTS:-generate nsys serve llama} "
part() { [[ "$parts" == *" $1 "* ]]; }
bundle=${1:-.device/bundle}
out=${OUT:-/tmp}
here=$(pwd)
u=$(mktemp -d)
for f in "$bundle"/*.tar.xz; do tar xJf "$f" -C "$u"; done
export LD_LIBRARY_PATH="$here/$bundle/lib:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}"
rill=$u/build/rill
log=$out/cold_start.log
work=$(mktemp -d)
: >"$log"
say() { echo "$*" | tee -a "$log"; }
now() { date +%s.%N; }
since() { awk "BEGIN{printf \"%.2f\", $(now) - $1}"; }

say "# $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader); $(nproc) cores; rill $(cat $u/build/COMMIT)"
M=/tmp/llama3-8b-shape
t=$(now)
"$u/build/make_random_model" --out $M --dim 4096 --layers 32 --heads 32 --kv-heads 8 --ffn 14336 --vocab 128256 \
  --context 8192 --dtype bf16 >/dev/null
cp "$u/data/tokenizers/llama3-style/tokenizer_config.json" $M/
# The llama3-style tokenizer has 16000 + 256 tokens; Llama-3 has 128256. One added token at id 128255 makes the
# tokenizer cover the whole embedding table, so that rill computes all 128256 logits, as llama.cpp does (with a
# smaller tokenizer, rill limits the head to the tokenizer's ids: 8x less work in the head, not a fair race).
python3 - "$u/data/tokenizers/llama3-style/tokenizer.json" $M/tokenizer.json <<'EOF'
import json, sys
t = json.load(open(sys.argv[1]))
t["added_tokens"].append({"id": 128255, "content": "<|pad_to_128256|>", "single_word": False, "lstrip": False,
                          "rstrip": False, "normalized": False, "special": True})
json.dump(t, open(sys.argv[2], "w"))
EOF
bytes=$(stat -c %s $M/model.safetensors)
say "model: $M, $(awk "BEGIN{printf \"%.2f\", $bytes/1e9}") GB, written in $(since $t) s"
drop() { sync; python3 -c "import os,sys
for p in sys.argv[1:]:
    fd=os.open(p,os.O_RDONLY); os.posix_fadvise(fd,0,0,os.POSIX_FADV_DONTNEED); os.close(fd)" "$@"; }
drop $M/model.safetensors
t=$(now); dd if=$M/model.safetensors of=/dev/null bs=64M status=none; s=$(since $t)
say "disk read (page cache dropped): $s s, $(awk "BEGIN{printf \"%.2f\", $bytes/1e9/$s}") GB/s"
t=$(now); dd if=$M/model.safetensors of=/dev/null bs=64M status=none; s=$(since $t)
say "page-cache read: $s s, $(awk "BEGIN{printf \"%.2f\", $bytes/1e9/$s}") GB/s"

# Token ids the tokenizer knows (llama3-style has 16000 + 256 special): the engine refuses ids past it.
ids() { python3 -c "print(','.join(str((i*7919+$2)%15000+100) for i in range($1)))"; }
gen() {  # label, prompt tokens, flags...
  local label=$1 n=$2
  shift 2
  t=$(now)
  "$rill" generate -m $M --prompt-ids "$(ids $n 0)" -n 64 --ignore-eos --temperature 0 --repeat 3 "$@" \
    2>"$work/gen.err" >/dev/null || { cat "$work/gen.err"; say "generate $label failed"; return; }
  say "== generate $label (process wall $(since $t) s)"
  grep '^rill' "$work/gen.err" | tee -a "$log"
}
if part generate; then
  drop $M/model.safetensors
  gen "512 cold disk" 512
  for r in $(seq ${ROUNDS:-2}); do
    gen "512 #$r" 512
    gen "4096 #$r" 4096
  done
  gen "512 --no-warm-up" 512 --no-warm-up
  gen "4096 --no-warm-up" 4096 --no-warm-up
fi

# Where a first prompt's time goes without the warm-up: CUDA API time over a process that runs it twice.
if part nsys && command -v nsys >/dev/null; then
  nsys profile --trace=cuda,osrt --force-overwrite true -o "$work/first" "$rill" generate -m $M \
    --prompt-ids "$(ids 512 0)" -n 16 --ignore-eos --temperature 0 --no-warm-up --repeat 2 >/dev/null 2>"$work/nsys.err"
  say "== nsys: CUDA API time of a --no-warm-up process, 512-token prompt run twice (load included)"
  nsys stats --report cuda_api_sum --format csv "$work/first.nsys-rep" 2>/dev/null | head -16 | tee -a "$log"
fi

serve() {  # label, flags...
  local label=$1
  shift
  local slog=$work/serve.err
  t=$(now)
  "$rill" serve -m $M --port 0 "$@" 2>"$slog" &
  local pid=$! port= ready=
  for _ in $(seq 2400); do
    port=$(sed -n 's|.*http://127.0.0.1:\([0-9]*\).*|\1|p' "$slog" | head -1)
    [ -n "$port" ] && curl -sf "http://127.0.0.1:$port/health" >/dev/null && { ready=$(since $t); break; }
    kill -0 $pid 2>/dev/null || break
    sleep 0.05
  done
  if [ -z "$ready" ]; then cat "$slog"; say "serve $label did not become ready"; kill -KILL $pid; return; fi
  local ttft=""
  for k in 1 2 3; do
    local body="{\"prompt\": [$(ids 512 $k)], \"max_tokens\": 1, \"temperature\": 0}"
    ttft+=" $(curl -s -o /dev/null -w '%{time_total}' "http://127.0.0.1:$port/v1/completions" \
      -H 'Content-Type: application/json' -d "$body")"
  done
  kill -TERM $pid
  wait $pid
  say "== serve $label: ready in $ready s; TTFT of 512-token prompts 1,2,3:$ttft s"
  grep '^rill' "$slog" | grep -v SIGTERM | tee -a "$log"
}
if part serve; then
rm -rf /tmp/tuning
serve "no tuning cache"
serve "--tuning-cache (first start: written)" --tuning-cache /tmp/tuning
serve "--tuning-cache (second start: read)" --tuning-cache /tmp/tuning
serve "--no-warm-up" --no-warm-up
if [ "${ROUNDS:-2}" -gt 1 ]; then
  drop $M/model.safetensors
  serve "--tuning-cache, checkpoint not in the page cache" --tuning-cache /tmp/tuning
fi
ls -la /tmp/tuning | tee -a "$log"
fi

if ! part llama; then
  :
elif [ -x "$u/llama-bench" ] && [ -d "$u/llama.cpp" ]; then
  G=/tmp/llama3-8b-shape-bf16.gguf
  t=$(now)
  python3 bench/llamacpp_convert.py "$u/llama.cpp" $M $G >"$work/convert.log" 2>&1 || tail -20 "$work/convert.log"
  say "== llama.cpp: GGUF BF16 written in $(since $t) s ($(stat -c %s $G 2>/dev/null) bytes)"
  rm -f $M/model.safetensors  # the disk holds both only just
  "$u/llama-bench" -m $G -ngl 99 -p 512,4096 -n 0 -r 5 -o md 2>"$work/llama-bench.err" | tee -a "$log"
  "$u/llama-bench" -m $G -ngl 99 -p 0 -n 128 -r 3 -o md 2>>"$work/llama-bench.err" | tee -a "$log"
  drop $G
  t=$(now); "$u/llama-bench" -m $G -ngl 99 -p 16 -n 0 -r 1 -o csv >/dev/null 2>>"$work/llama-bench.err"
  say "llama-bench -p 16 -n 0 -r 1 (load included), GGUF not in the page cache: $(since $t) s"
  t=$(now); "$u/llama-bench" -m $G -ngl 99 -p 16 -n 0 -r 1 -o csv >/dev/null 2>>"$work/llama-bench.err"
  say "llama-bench -p 16 -n 0 -r 1 (load included), GGUF in the page cache: $(since $t) s"
else
  say "(no llama-bench in the bundle: llama.cpp not measured)"
fi
