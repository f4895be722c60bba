#!/usr/bin/env bash
# rill as its user runs it, on the GPU: `rill generate` and `rill chat` on the embedded model, then `rill serve
# --device cuda` driven over HTTP (a streamed completion, a chat completion, JSON Schema constrained chats, the official `openai` Python SDK
# when the machine has it, a session created, appended to and generated from, /metrics, /health under 200
# slowloris connections and 64 streams), then SIGTERM with a stream under way, which must end with an error event
# at --shutdown-timeout and exit 0. Run from the repository root on the device machine with a bundle (tools/device/pack.sh):
#   bash tools/device/serve_e2e.sh BUNDLE_DIR          (prints each step; exits 1 on the first failure)
set -uo pipefail
bundle=$1
here=$(pwd)
unpacked=$(mktemp -d)
tar xJf "$bundle/bins.tar.xz" -C "$unpacked"
export LD_LIBRARY_PATH="$here/$bundle/lib:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}"
rill="$unpacked/build/rill"
fail() { echo "FAIL: $*"; exit 1; }

echo "== rill generate --device cuda"
"$rill" generate --device cuda --prompt "Once upon a time" -n 40 --temperature 0 || fail "generate"
echo
echo "== rill generate --device cuda --kv-policy sink (past the 512-token context)"
"$rill" generate --device cuda --prompt "Once upon a time" -n 1200 --kv-policy sink --sinks 4 --window 252 \
  --temperature 0.8 --seed 1 --output json | python3 -c 'import json,sys; d=json.load(sys.stdin); print(len(d["ids"]), "tokens"); assert len(d["ids"])==1200' \
  || fail "generate sink"
echo "== rill chat --device cuda"
printf 'Tell me a story.\n/exit\n' | "$rill" chat --device cuda -n 60 --seed 2 || fail "chat"
echo

echo "== rill serve --device cuda"
log=$(mktemp)
"$rill" serve --device cuda --port 0 --api-key k --shutdown-timeout 2 2>"$log" &
server=$!
url=""
for _ in $(seq 600); do
  url=$(grep -o 'http://[0-9.]*:[0-9]*' "$log" | head -1 || true)
  [ -n "$url" ] && break
  kill -0 $server 2>/dev/null || break
  sleep 0.1
done
[ -n "$url" ] || { cat "$log"; fail "serve did not start"; }
# It listens while the model loads and warms up: /health is 503 {"status": "loading"} until then.
echo "-- GET /health while loading: $(curl -s -w ' %{http_code}' "$url/health")"
for _ in $(seq 600); do curl -sf "$url/health" >/dev/null && break; sleep 0.1; done
curl -sf "$url/health" >/dev/null || { cat "$log"; fail "serve did not become ready"; }
head -4 "$log"
auth=(-H 'Authorization: Bearer k' -H 'Content-Type: application/json')
echo "-- POST /v1/completions (stream)"
curl -sN "$url/v1/completions" "${auth[@]}" \
  -d '{"prompt": "Once upon a time", "max_tokens": 30, "temperature": 0.7, "seed": 3, "stream": true,
       "stream_options": {"include_usage": true}}' | tee /tmp/stream.txt | tail -3
grep -q '^data: \[DONE\]' /tmp/stream.txt || fail "stream did not end with [DONE]"
echo "-- POST /v1/chat/completions"
curl -s "$url/v1/chat/completions" "${auth[@]}" \
  -d '{"messages": [{"role": "user", "content": "Hello!"}], "max_tokens": 30, "logprobs": true, "top_logprobs": 2}' \
  | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["choices"][0]["message"]["content"][:200]); print(d["usage"]); assert d["choices"][0]["logprobs"]["content"]' \
  || fail "chat completion"
echo "-- structured output on the GPU: 16 concurrent json_schema chats, each parsed and checked"
python3 - "$url" <<'EOF' || fail "json_schema"
import sys, json, concurrent.futures, urllib.request
url = sys.argv[1] + "/v1/chat/completions"
schema = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 20},
          "age": {"type": "integer", "minimum": 0, "maximum": 99}, "pets": {"type": "array", "items": {"enum": ["cat", "dog"]}, "maxItems": 3}},
          "required": ["name", "age", "pets"], "additionalProperties": False}
def one(i):
    body = {"messages": [{"role": "user", "content": f"Person {i} as JSON"}], "max_tokens": 200, "temperature": 1, "seed": i,
            "response_format": {"type": "json_schema", "json_schema": {"name": "p", "schema": schema}}}
    req = urllib.request.Request(url, json.dumps(body).encode(), {"Authorization": "Bearer k", "Content-Type": "application/json"})
    c = json.load(urllib.request.urlopen(req))["choices"][0]
    v = json.loads(c["message"]["content"])
    assert c["finish_reason"] == "stop" and set(v) == {"name", "age", "pets"} and 0 <= v["age"] <= 99, c
    assert len(v["name"]) <= 20 and len(v["pets"]) <= 3 and all(p in ("cat", "dog") for p in v["pets"]), c
    return c["message"]["content"]
with concurrent.futures.ThreadPoolExecutor(16) as ex:
    out = list(ex.map(one, range(16)))
print(out[0])
EOF
echo "-- 401 without the key, 400 naming a bad parameter"
code=$(curl -s -o /dev/null -w '%{http_code}' "$url/v1/models")
[ "$code" = 401 ] || fail "expected 401, got $code"
curl -s "$url/v1/completions" "${auth[@]}" -d '{"prompt": "x", "temperature": "hot"}' | tee /tmp/err.txt; echo
grep -q temperature /tmp/err.txt || fail "400 does not name temperature"
if python3 -c 'import openai' 2>/dev/null; then
  echo "-- the official openai Python SDK, 8 concurrent streams"
  python3 - "$url" <<'EOF' || fail "openai SDK"
import sys, concurrent.futures, openai
client = openai.OpenAI(base_url=sys.argv[1] + "/v1", api_key="k")
def one(i):
    s = client.chat.completions.create(model="rill-tiny", messages=[{"role": "user", "content": f"Story {i}"}],
                                       max_tokens=40, stream=True, seed=i, temperature=0.8)
    return "".join(c.choices[0].delta.content or "" for c in s if c.choices)
with concurrent.futures.ThreadPoolExecutor(8) as ex:
    texts = list(ex.map(one, range(8)))
assert all(texts), texts
print(texts[0][:120])
EOF
else
  echo "-- (no openai Python package on this machine: the SDK run is tests/e2e's, on the CPU)"
fi
echo "-- sessions"
sid=$(curl -s "$url/v1/sessions" "${auth[@]}" -d '{"kv_policy": {"type": "sink", "sinks": 4, "window": 252},
  "defaults": {"temperature": 0.7, "max_tokens": 40}}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
[ -n "$sid" ] || fail "session create"
curl -s "$url/v1/sessions/$sid/append" "${auth[@]}" -d '{"text": "Once upon a time there was a cat."}'; echo
curl -sN "$url/v1/sessions/$sid/generate" "${auth[@]}" -d '{"max_tokens": 300, "seed": 4}' >/tmp/sess.txt
tail -2 /tmp/sess.txt
grep -q '^data: \[DONE\]' /tmp/sess.txt || fail "session generate"
curl -s "$url/v1/sessions/$sid/generate" "${auth[@]}" -d '{"stream": false, "max_tokens": 200, "seed": 5,
  "response_format": {"type": "json_schema", "json_schema": {"name": "c", "schema": {"type": "object",
  "properties": {"name": {"type": "string", "maxLength": 12}, "legs": {"type": "integer", "maximum": 8}},
  "required": ["name", "legs"], "additionalProperties": false}}}}' | python3 -c '
import json, sys
g = json.load(sys.stdin); print(g["text"])
o = json.loads(g["text"]); assert g["finish_reason"] == "stop" and set(o) == {"name", "legs"} and len(o["name"]) <= 12 and o["legs"] <= 8
' || fail "session generate under a JSON Schema"
curl -s "$url/v1/sessions/$sid" "${auth[@]}"; echo
curl -s "$url/metrics" "${auth[@]}" | grep -E '^rill_(requests_running|kv_blocks_used|sessions|generation_tokens_total) '
echo "-- 200 slowloris connections and 64 streams at once: /health latency (the HTTP front is event-driven)"
python3 - "$url" <<'PYEOF2' || fail "health under slow clients"
import http.client, json, socket, sys, threading, time
host, port = sys.argv[1].replace("http://", "").split(":")
slow = []
for _ in range(200):
    s = socket.create_connection((host, int(port))); s.send(b"GET /health HTTP/1.1\r\nHost: x\r\n"); slow.append(s)
done = []
def stream(i):
    c = http.client.HTTPConnection(host, int(port), timeout=120)
    c.request("POST", "/v1/completions", json.dumps({"prompt": "Once upon a time", "max_tokens": 4000, "stream": True, "ignore_eos": True,
                                                       "kv_policy": {"type": "sink", "sinks": 4, "window": 252}}),
              {"Authorization": "Bearer k", "Content-Type": "application/json"})
    body = c.getresponse().read().decode()
    done.append(body.rstrip().endswith("data: [DONE]"))
threads = [threading.Thread(target=stream, args=(i,)) for i in range(64)]
for t in threads: t.start()
lat = []
while any(t.is_alive() for t in threads):
    for s in slow: s.send(b"X")
    t0 = time.time(); c = http.client.HTTPConnection(host, int(port), timeout=10); c.request("GET", "/health")
    assert c.getresponse().status == 200; lat.append((time.time() - t0) * 1000); c.close(); time.sleep(0.02)
for t in threads: t.join()
lat.sort()
print(f"health polls {len(lat)}: p50 {lat[len(lat)//2]:.1f} ms, p99 {lat[len(lat)*99//100]:.1f} ms, max {lat[-1]:.1f} ms; streams complete {sum(done)}/64")
assert sum(done) == 64 and len(lat) >= 20 and lat[len(lat)*99//100] < 100
PYEOF2
echo "-- SIGTERM with a long stream under way (--shutdown-timeout 2): it ends with an error event, the server exits 0"
curl -sN "$url/v1/completions" "${auth[@]}" -d '{"prompt": "x", "max_tokens": 100000, "stream": true, "ignore_eos": true,
  "kv_policy": {"type": "sink", "sinks": 4, "window": 252}}' > /tmp/long.txt &
sleep 1
t0=$(date +%s.%N)
kill -TERM $server
wait $server
rc=$?
echo "exit after $(python3 -c "import time; print(round(time.time() - $t0, 2))") s"
tail -3 "$log"
[ "$rc" = 0 ] || fail "serve exited $rc after SIGTERM"
sleep 0.2
tail -c 300 /tmp/long.txt; echo
grep -q '"server_shutting_down"' /tmp/long.txt && tail -3 /tmp/long.txt | grep -q '^data: \[DONE\]' || fail "the long stream did not end with the error event and [DONE]"
echo "serve_e2e: all passed"
