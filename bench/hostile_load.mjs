// The load of issue 26 against a running `rill serve`, with the official `openai` npm client:
//   load:    N concurrent streaming completions (a share of them aborted mid-stream) while S slowloris connections
//            trickle header bytes (reconnecting when the server drops them) and /health is polled on fresh
//            connections; reports /health latency percentiles, lost / duplicated / failed responses, and the KV
//            blocks still held at the end (live and cached prefixes apart).
//   sigterm: N concurrent long streams; once they are all under way, SIGTERM to PID; reports how each client
//            ended (finished, ended with the server's error event, refused with 503, or lost: no answer).
// Prints one JSON object.
//   node hostile_load.mjs load URL [N=1000] [S=200] [ABORT=0.3]
//   node hostile_load.mjs sigterm URL PID [N=1000]
import http from 'node:http';
import net from 'node:net';
import OpenAI from 'openai';

const [mode, base] = process.argv.slice(2, 4);
const url = new URL(base);
// HOSTILE_TIMEOUT_MS: how long a client waits for its answer (600 s; shorter against a server known to starve).
const client = new OpenAI({ baseURL: `${base}/v1`, apiKey: 'none', maxRetries: 0,
                            timeout: Number(process.env.HOSTILE_TIMEOUT_MS ?? 600_000) });
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function percentile(xs, p) {
  if (xs.length === 0) return null;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((s.length * p) / 100))];
}

// GET on a fresh connection: [status, ms] (status 0 when it failed).
function get(path, timeoutMs = 10_000) {
  return new Promise((resolve) => {
    const t = performance.now();
    const req = http.get({ host: url.hostname, port: url.port, path, agent: false, timeout: timeoutMs }, (res) => {
      let body = '';
      res.on('data', (d) => (body += d));
      res.on('end', () => resolve([res.statusCode, performance.now() - t, body]));
    });
    req.on('timeout', () => req.destroy(new Error('timeout')));
    req.on('error', () => resolve([0, performance.now() - t, '']));
  });
}

async function metrics() {
  const [, , text] = await get('/metrics');
  const value = (name) => Number((text.match(new RegExp(`^${name} (\\S+)$`, 'm')) ?? [])[1] ?? NaN);
  return {
    kv_blocks_used: value('rill_kv_blocks_used'), kv_blocks_cached_free: value('rill_kv_blocks_cached_free'),
    requests_running: value('rill_requests_running'), requests_waiting: value('rill_requests_waiting'),
    http_connections: value('rill_http_connections'), http_requests_in_flight: value('rill_http_requests_in_flight'),
  };
}

// One slowloris connection: a request head one byte a second, never finished; reopened when dropped.
function slowloris(stop, stats) {
  const open = () => {
    if (stop.done) return;
    const s = net.connect(Number(url.port), url.hostname);
    let timer;
    s.on('connect', () => {
      stats.opened++;
      s.write('GET /health HTTP/1.1\r\nHost: x\r\n');
      timer = setInterval(() => s.write('X'), 1000);
    });
    s.on('data', (d) => { if (String(d).startsWith('HTTP/1.1 408')) stats.answered_408++; });
    s.on('error', () => {});
    s.on('close', () => { clearInterval(timer); stats.dropped++; setTimeout(open, 10); });
    stop.sockets.push(s);
  };
  open();
}

async function stream(i, maxTokens, abortAfter, extra = {}) {
  const controller = new AbortController();
  const out = { id: null, chunks: 0, finish: null, outcome: 'finished', text: '' };
  try {
    const s = await client.completions.create(
      { model: 'rill-tiny', prompt: `Once upon a time ${i}`, max_tokens: maxTokens, stream: true, ignore_eos: true, ...extra },
      { signal: controller.signal });
    for await (const c of s) {
      out.id ??= c.id;
      if (c.id !== out.id) out.outcome = 'crossed';
      out.chunks++;
      out.text += c.choices[0]?.text ?? '';
      if (c.choices[0]?.finish_reason) out.finish = c.choices[0].finish_reason;
      if (abortAfter !== null && out.chunks >= abortAfter) { controller.abort(); out.outcome = 'aborted'; break; }
    }
    if (out.outcome === 'finished' && !out.finish) out.outcome = 'truncated';
  } catch (e) {
    if (controller.signal.aborted) out.outcome = 'aborted';
    else if (e?.error?.type === 'server_shutting_down' || e?.type === 'server_shutting_down') out.outcome = 'error_event';
    else if (e?.status === 503) out.outcome = 'refused_503';
    else { out.outcome = 'lost'; out.error = String(e?.message ?? e); }
  }
  return out;
}

function tally(results) {
  const t = {};
  for (const r of results) t[r.outcome] = (t[r.outcome] ?? 0) + 1;
  return t;
}

if (mode === 'load') {
  const n = Number(process.argv[4] ?? 1000), slow = Number(process.argv[5] ?? 200), abortShare = Number(process.argv[6] ?? 0.3);
  const stop = { done: false, sockets: [] };
  const sl = { opened: 0, dropped: 0, answered_408: 0 };
  for (let i = 0; i < slow; ++i) slowloris(stop, sl);
  await sleep(500);
  const health = [];
  let healthFailures = 0;
  let polling = true;
  const poller = (async () => {
    while (polling) {
      const [status, ms] = await get('/health', 10_000);
      if (status === 200) health.push(ms); else healthFailures++;
      await sleep(20);
    }
  })();
  const t0 = performance.now();
  let seed = 1;
  const rand = () => ((seed = (seed * 1103515245 + 12345) % 2147483648) / 2147483648);
  const results = await Promise.all(Array.from({ length: n }, (_, i) => {
    const maxTokens = 16 + Math.floor(rand() * 48);
    const abortAfter = rand() < abortShare ? 1 + Math.floor(rand() * 8) : null;
    return stream(i, maxTokens, abortAfter);
  }));
  const seconds = (performance.now() - t0) / 1000;
  polling = false;
  await poller;
  stop.done = true;
  for (const s of stop.sockets) s.destroy();
  await sleep(1500);
  const ids = results.filter((r) => r.id).map((r) => r.id);
  const m = await metrics();
  console.log(JSON.stringify({
    mode, clients: n, slowloris: slow, abort_share: abortShare, seconds: Number(seconds.toFixed(2)),
    outcomes: tally(results), duplicate_ids: ids.length - new Set(ids).size,
    empty_finished: results.filter((r) => r.outcome === 'finished' && r.chunks === 0).length,
    health: { polls: health.length, failures: healthFailures, p50_ms: percentile(health, 50), p99_ms: percentile(health, 99),
              max_ms: percentile(health, 100) },
    slowloris_connections: sl, after: m,
    errors: results.filter((r) => r.error).slice(0, 5).map((r) => r.error),
  }));
} else if (mode === 'sigterm') {
  const pid = Number(process.argv[4]);
  const n = Number(process.argv[5] ?? 1000);
  const started = [];
  // Longer than the context: the sink policy serves them (rill's extension, passed through by the client).
  const sink = { kv_policy: { type: 'sink', sinks: 4, window: 256 } };
  const results = Promise.all(Array.from({ length: n }, (_, i) => stream(i, 4000, null, sink)));
  // Wait until every client is in (its request read: running or queued for a worker).
  const t = performance.now();
  while (performance.now() - t < 30_000) {
    const m = await metrics();
    started.push(m.http_requests_in_flight);
    if (m.http_requests_in_flight >= n) break;
    await sleep(200);
  }
  const signalled = performance.now();
  process.kill(pid, 'SIGTERM');
  const r = await results;
  console.log(JSON.stringify({
    mode, clients: n, in_flight_at_signal: started.at(-1),
    all_answered_after_s: Number(((performance.now() - signalled) / 1000).toFixed(2)), outcomes: tally(r),
    errors: r.filter((x) => x.error).slice(0, 5).map((x) => x.error),
  }));
}
