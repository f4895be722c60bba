#!/usr/bin/env bash
# One session, 1M tokens, sink policy (4 sinks + 508-token window) on models/rill-tiny: appends in 1024-token
# pieces, generates 32 tokens every 65536, and fits per-token decode latency, append cost and RSS against
# tokens seen (bench/session_stream.cpp). Writes bench/results/session-stream-1M-*.json.
#   bench/run_session_stream.sh [SESSION_STREAM_BINARY]
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-build/bench/session_stream}
stamp="$(date -u +%Y-%m-%d)"
host="$(hostname -s | tr -c 'A-Za-z0-9-\n' '-')"
mkdir -p bench/results
"$bin" --model models/rill-tiny --tokens 1000000 --chunk 1024 --every 65536 --gen 32 --sinks 4 --window 508 \
  --out "bench/results/session-stream-1M-rill-tiny-$host-$stamp.json" >/dev/null
