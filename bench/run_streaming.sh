#!/usr/bin/env bash
# Streaming quality and speed on rill's own model (models/rill-tiny, 512-token training context): streams the
# first 12288 tokens (24x the training context) of tinyshakespeare.txt through dense, window, sink (4 sinks +
# 508-token window) and recompute (a fresh 512-token forward per token, every 16th position), token by token,
# and writes per-token NLL (CSV), a plot of log-perplexity against position (PNG) and the summary table.
#   bench/run_streaming.sh [RILL_BINARY]
set -euo pipefail
cd "$(dirname "$0")/.."
rill=${1:-build/rill}
stamp="$(date -u +%Y-%m-%d)"
host="$(hostname -s | tr -c 'A-Za-z0-9-\n' '-')"
out="bench/results/streaming-ppl-rill-tiny-$host-$stamp"
mkdir -p bench/results
cmd=("$rill" perplexity --model models/rill-tiny --text-file ../shared/data/text/tinyshakespeare.txt --max-tokens 12288
     --policy dense,window,sink,recompute --sinks 4 --window 508 --chunk 1 --recompute-stride 16 --smooth 256
     --csv "$out.csv" --plot "$out.png")
{
  echo "command: ${cmd[*]}"
  echo "machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
  "${cmd[@]}" 2>/dev/null
} | tee "$out.txt"
gzip -f "$out.csv"
rm -f "$out.png.dat" "$out.png.gp"
