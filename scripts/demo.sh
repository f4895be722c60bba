#!/usr/bin/env bash
# rill's main job in one command: installs what is needed and builds (scripts/build.sh), starts `rill serve` on
# the embedded model (models/rill-tiny), streams one completion through the OpenAI-compatible API with curl,
# printing each piece as it arrives, then stops the server. Exits 1 when no text came back.
#   --no-build         use the existing build ($RILL_BUILD_DIR, default build/)
#   RILL_DEMO_PROMPT   the prompt (default "Once upon a time")
set -euo pipefail
cd "$(dirname "$0")/.."
build=${RILL_BUILD_DIR:-build}
[ "${1:-}" = "--no-build" ] || bash scripts/build.sh
prompt=${RILL_DEMO_PROMPT:-Once upon a time}
log=$(mktemp)
got=$(mktemp)
"$build/rill" serve --port 0 --kv-cache-memory 256MiB 2>"$log" &
server=$!
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null; rm -f "$log" "$got"' EXIT
# It listens at once and answers GET /health 503 while the model loads and warms up, then 200.
url=""
for _ in $(seq 300); do
  url=$(grep -o 'http://[0-9.]*:[0-9]*' "$log" | head -1 || true)
  [ -n "$url" ] && curl -sf "$url/health" >/dev/null && break
  url=""
  kill -0 $server 2>/dev/null || break
  sleep 0.1
done
[ -n "$url" ] || { echo "rill serve did not start:" >&2; cat "$log" >&2; exit 1; }
grep '^rill: ready' "$log" >&2
echo "POST $url/v1/completions (stream): $prompt" >&2
body=$(printf '{"prompt": "%s", "max_tokens": 80, "temperature": 0.7, "seed": 3, "stream": true}' "$prompt")
printf '%s' "$prompt"
# Each server-sent event is `data: {...}`; print the text of each as it comes.
curl -sN "$url/v1/completions" -H 'Content-Type: application/json' -d "$body" | while IFS= read -r line; do
  case "$line" in
    'data: [DONE]') break ;;
    data:*) text=$(printf '%s' "$line" | sed -nE 's/.*"text":"(([^"\\]|\\.)*)".*/\1/p')
            printf '%b' "${text//\\\"/\"}" | tee -a "$got" ;;
  esac
done
echo
[ -s "$got" ] || { echo "no text came back; server log:" >&2; cat "$log" >&2; exit 1; }
