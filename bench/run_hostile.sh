#!/usr/bin/env bash
# Issue 26's load on this machine: `rill serve` on the embedded rill-tiny, driven by bench/hostile_load.mjs with
# the official openai npm client. (1) 1000 concurrent streaming completions, 30% aborted mid-stream, while 200
# slowloris connections trickle header bytes and /health is polled on fresh connections: /health latency, lost,
# duplicated and failed responses, KV blocks held at the end. (2) 1000 long streams under way, then SIGTERM with
# --shutdown-timeout 5: seconds to exit and how every client ended. Writes bench/results/hostile-<host>-<date>.json.
# RILL_HOSTILE_OUT names the result file instead (e.g. for a baseline build's run).
#   bench/run_hostile.sh [build-dir] [clients=1000] [slowloris=200]
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build} n=${2:-1000} slow=${3:-200}
ninja -C "$build" rill >/dev/null
ulimit -n "$(ulimit -Hn)"
node_dir="$build/e2e"  # where tests/e2e/run.sh installs the openai client
if [ ! -f "$node_dir/node_modules/openai/package.json" ]; then
  mkdir -p "$node_dir" && (cd "$node_dir" && npm install --no-audit --no-fund --silent openai@4 >/dev/null)
fi
export NODE_PATH="$PWD/$node_dir/node_modules"
cp bench/hostile_load.mjs "$node_dir/hostile_load.mjs"  # (ES modules resolve packages beside the script)
port_of() {  # once /health answers 200 (the server listens while the model loads)
  for _ in $(seq 400); do
    p=$(sed -n 's|.*http://127.0.0.1:\([0-9]*\).*|\1|p' "$1" | head -1)
    [ -n "$p" ] && curl -sf "http://127.0.0.1:$p/health" >/dev/null && { echo "$p"; return; }
    sleep 0.05
  done
}
log=$(mktemp)
trap 'kill -KILL $pid 2>/dev/null; rm -f "$log"' EXIT

"$build/rill" serve --port 0 --kv-cache-memory 512MiB 2>"$log" &
pid=$!
port=$(port_of "$log")
load=$(node "$node_dir/hostile_load.mjs" load "http://127.0.0.1:$port" "$n" "$slow" 0.3)
echo "$load"
kill -TERM $pid; wait $pid || true

"$build/rill" serve --port 0 --kv-cache-memory 512MiB --shutdown-timeout 5 2>"$log" &
pid=$!
port=$(port_of "$log")
node "$node_dir/hostile_load.mjs" sigterm "http://127.0.0.1:$port" $pid "$n" > "$log.sig" &
node_pid=$!
t0=$(date +%s.%N)
# The client sends the signal; time the exit from then (the client's own figure is when the last client ended).
while ! grep -q "SIGTERM" "$log"; do sleep 0.01; done
t_sig=$(date +%s.%N)
rc=0; wait $pid || rc=$?
t_exit=$(date +%s.%N)
wait $node_pid
sig=$(cat "$log.sig"); rm -f "$log.sig"
echo "$sig"
exit_s=$(python3 -c "print(round($t_exit - $t_sig, 2))")
stamp="$(date -u +%Y-%m-%d)"
host="$(hostname -s | tr -c 'A-Za-z0-9-\n' '-')"
mkdir -p bench/results
out=${RILL_HOSTILE_OUT:-bench/results/hostile-$host-$stamp.json}
python3 - "$load" "$sig" "$exit_s" "$rc" > "$out" <<'PYEOF'
import json, sys
print(json.dumps({"load": json.loads(sys.argv[1]), "sigterm": {**json.loads(sys.argv[2]), "exit_seconds_after_signal": float(sys.argv[3]),
                  "exit_status": int(sys.argv[4]), "shutdown_timeout_s": 5}}, indent=1))
PYEOF
echo "wrote $out"
