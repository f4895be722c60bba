#!/usr/bin/env bash
# End-to-end test with the official `openai` npm client: installs it (once, into the build folder, with ajv,
# ajv-formats and zod for structured output), starts `rill serve` on a tiny random model with a real tokenizer and
# chat template and on the embedded rill-tiny, runs openai_e2e.mjs, structured_e2e.mjs and openapi_conformance.mjs
# (every route against src/server/openapi.json) against them, and stops
# the servers with SIGTERM (which must exit 0). RILL_SCHEMA_SAMPLES sets the generations per corpus schema (2),
# RILL_SCHEMA_EVERY=k takes every k-th schema (1). Exit 77 (CTest: skipped) when node or the npm
# registry is unavailable.
#   run.sh RILL_BINARY MAKE_RANDOM_MODEL SHARED_DIR WORK_DIR
set -uo pipefail
rill=$1 make_model=$2 shared=$3 work=$4
here=$(cd "$(dirname "$0")" && pwd)
command -v node >/dev/null || { echo "skipped: node is not installed"; exit 77; }
mkdir -p "$work" && work=$(cd "$work" && pwd)
if [ ! -f "$work/node_modules/zod/package.json" ]; then
  (cd "$work" && npm install --no-audit --no-fund --silent openai@4 ajv@8 ajv-formats@3 zod@3 >/dev/null 2>&1) ||
    { echo "skipped: could not install the openai, ajv and zod npm packages"; exit 77; }
fi
model=$(mktemp -d)
log="$model/serve.log"
trap 'kill -TERM $pid $tiny_pid 2>/dev/null; rm -rf "$model"' EXIT
tiny_pid=
"$make_model" --out "$model/m" --dim 32 --layers 2 --heads 4 --ffn 64 --vocab 16022 --dtype f32 --context 512 >/dev/null
cp "$shared/data/tokenizers/qwen2-style/tokenizer.json" "$shared/data/tokenizers/qwen2-style/tokenizer_config.json" "$model/m/"
# The port a server started with --port 0 reports in its log ($1), once its /health answers 200 (it listens while
# the model loads), or nothing when that does not happen in 20 s.
port_of() {
  local p=
  for _ in $(seq 400); do
    p=$(sed -n 's|.*http://127.0.0.1:\([0-9]*\).*|\1|p' "$1" | head -1)
    [ -n "$p" ] && curl -sf "http://127.0.0.1:$p/health" >/dev/null && break
    p=
    sleep 0.05
  done
  echo "$p"
}
"$rill" serve --model "$model/m" --served-model-name tiny --port 0 --api-key e2e-key --kv-cache-memory 64MiB 2>"$log" &
pid=$!
port=$(port_of "$log")
[ -n "$port" ] || { echo "rill serve did not start:"; cat "$log"; exit 1; }
"$rill" serve --served-model-name rill-tiny --port 0 --kv-cache-memory 256MiB 2>"$model/tiny.log" &
tiny_pid=$!
tiny_port=$(port_of "$model/tiny.log")
[ -n "$tiny_port" ] || { echo "rill serve (rill-tiny) did not start:"; cat "$model/tiny.log"; exit 1; }
export RILL_E2E_URL="http://127.0.0.1:$port/v1" RILL_E2E_KEY=e2e-key RILL_TINY_URL="http://127.0.0.1:$tiny_port/v1"
export RILL_SCHEMAS="$here/../data/json_schemas.json" NODE_PATH="$work/node_modules"
export RILL_OPENAPI="$here/../../src/server/openapi.json"
node --test "$here/openai_e2e.mjs" "$here/structured_e2e.mjs" "$here/openapi_conformance.mjs"
status=$?
kill -TERM $pid $tiny_pid
wait $pid
served=$?
wait $tiny_pid
[ $? -eq 0 ] || { echo "rill serve (rill-tiny) exited with an error after SIGTERM"; cat "$model/tiny.log"; exit 1; }
trap 'rm -rf "$model"' EXIT
[ $served -eq 0 ] || { echo "rill serve exited with $served after SIGTERM"; cat "$log"; exit 1; }
exit $status
