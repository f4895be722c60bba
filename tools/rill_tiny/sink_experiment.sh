#!/usr/bin/env bash
# Runs on the GPU machine: which training recipe makes rill-tiny form attention sinks? Trains variants of
# rill-tiny side by side (same shape and tokenizer as models/rill-tiny), then for each, and for the shipped
# model: the first-token attention of tools/rill_tiny/sink_probe.py, and `rill perplexity` of the window and
# sink policies over 12288 tokens of tinyshakespeare (window diverging past the first eviction is the sign
# of a model that leans on its sinks). Brings back the summary and the variant with the largest window/sink
# perplexity ratio, in 15 MB pieces.
#   carried: $SINK_DIR (default .device/sink: corpus.jsonl.gz or corpus.jsonl.xz, tinyshakespeare.txt,
#   rill.tar.xz with build/rill, lib.tar.xz with the shared libraries rill needs that the GPU machine lacks)
#   env: BUDGET (training seconds per variant, default 380), VARIANTS ("name:train.py flags;..." to override),
#   SINK_DIR. Without models/rill-tiny/model.safetensors (set aside so that a larger corpus fits the carry),
#   the shipped model is left out of the comparison.
set -uo pipefail
cd "$(dirname "$0")/../.."
work=/tmp/sink-exp
src=${SINK_DIR:-.device/sink}
rm -rf "$work" && mkdir -p "$work"
mkdir -p "$work/lib" && tar xJf "$src/lib.tar.xz" -C "$work/lib" --strip-components=1
export PYTHONUNBUFFERED=1 LD_LIBRARY_PATH="$work/lib:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}"
tar xJf "$src/rill.tar.xz" -C "$work"
rill="$work/build/rill"
corpus=$(ls "$src"/corpus.jsonl.* | head -1)
text=$src/tinyshakespeare.txt  # ../shared/data/text/tinyshakespeare.txt (../shared does not travel)
budget=${BUDGET:-380}
variants=${VARIANTS:-"crops:;bos:--bos-first;bos-b256:--bos-first --batch 256 --peak-lr 3e-3"}

IFS=';' read -ra list <<<"$variants"
for v in "${list[@]}"; do
  name=${v%%:*} flags=${v#*:}
  # shellcheck disable=SC2086
  python3 tools/rill_tiny/train.py --corpus "$corpus" --out "$work/$name" --models rill-tiny \
    --tokenizer models/rill-tiny --steps 40000 --time-budget "$budget" $flags >"$work/$name.log" 2>&1 &
done
shipped=shipped
[ -f models/rill-tiny/model.safetensors ] || shipped=
[ -z "$shipped" ] || python3 tools/rill_tiny/sink_probe.py models/rill-tiny "$text" >"$work/shipped.probe.json" 2>"$work/shipped.probe.err"
wait
cp "$work"/*.log "$OUT/" 2>/dev/null
summary="$OUT/summary.txt"
best="" best_ratio=0
for m in $shipped "${list[@]}"; do
  name=${m%%:*}
  dir="$work/$name/rill-tiny"
  [ "$name" = shipped ] && dir=models/rill-tiny
  [ "$name" = shipped ] || python3 tools/rill_tiny/sink_probe.py "$dir" "$text" >"$work/$name.probe.json" 2>>"$work/$name.log"
  ppl=$("$rill" perplexity --model "$dir" --text-file "$text" --max-tokens 12288 --policy window,sink --sinks 4 \
        --window 508 --device cpu 2>&1)
  {
    echo "== $name: $(grep -o '"steps": [0-9]*' "$work/$name/report.json" 2>/dev/null | head -1)" \
      "$(grep -o '"val_loss": [0-9.]*' "$work/$name/report.json" 2>/dev/null | tail -1)"
    cat "$work/$name.probe.json"
    echo "$ppl"
  } | tee -a "$summary"
  w=$(echo "$ppl" | awk '$1 == "window" && $3 != "/" {print $3}' | tail -1) s=$(echo "$ppl" | awk '$1 == "sink" && $3 != "/" {print $3}' | tail -1)
  if [ "$name" != shipped ] && [ -n "$w" ] && [ -n "$s" ]; then
    r=$(python3 -c "print($w / $s)")
    echo "window/sink perplexity ratio: $r" | tee -a "$summary"
    if python3 -c "import sys; sys.exit(0 if $r > $best_ratio else 1)"; then best=$name best_ratio=$r; fi
  fi
done
echo "best: $best ($best_ratio)" | tee -a "$summary"
if [ -n "$best" ]; then
  tar -C "$work/$best" -cf "$work/best.tar" .
  split -b 15M -d "$work/best.tar" "$OUT/best-$best.tar.part"
fi
ls -la "$OUT"
