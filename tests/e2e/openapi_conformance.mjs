// rill serve against its own OpenAPI document (src/server/openapi.json, served at /openapi.json): every route
// is driven with the document's example requests (valid) and with requests generated from its request schemas
// to be invalid (each typed property given a value of another type, each required property left out, a body
// that is not JSON); every response must be one the document lists for that route and match its schema (ajv,
// JSON Schema 2020-12). Also: unknown routes are 404 and other methods 405, both Error objects.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createRequire } from 'node:module';
import { readFileSync } from 'node:fs';

const require = createRequire(process.env.NODE_PATH + '/');
const Ajv2020 = require('ajv/dist/2020').default;

const base = process.env.RILL_E2E_URL.replace(/\/v1$/, '');
const auth = { Authorization: `Bearer ${process.env.RILL_E2E_KEY}` };
const checkedIn = JSON.parse(readFileSync(process.env.RILL_OPENAPI, 'utf8'));

const ajv = new Ajv2020({ strict: false, allErrors: true });
ajv.addSchema({ $id: 'rill', components: checkedIn.components });
const validator = (schema) => ajv.compile({ $ref: 'rill#', ...rewrite(schema) });
// Local refs (#/components/...) point into the document registered as 'rill'.
function rewrite(s) {
  if (Array.isArray(s)) return s.map(rewrite);
  if (s && typeof s === 'object') {
    const o = {};
    for (const [k, v] of Object.entries(s)) o[k] = k === '$ref' && typeof v === 'string' && v.startsWith('#/') ? `rill${v}` : rewrite(v);
    if (o.$ref && Object.keys(o).length > 1) { const { $ref, ...rest } = o; return { allOf: [{ $ref }, rest] }; }
    return o;
  }
  return s;
}
const resolve = (s) => (s?.$ref ? resolve(s.$ref.split('/').slice(1).reduce((x, k) => x[k], checkedIn)) : s);

async function call(method, path, body, raw = false) {
  const r = await fetch(base + path, {
    method, headers: { ...auth, 'Content-Type': 'application/json' },
    body: body === undefined ? undefined : raw ? body : JSON.stringify(body),
  });
  const text = await r.text();
  let json;
  try { json = JSON.parse(text); } catch { json = undefined; }
  return { status: r.status, type: r.headers.get('content-type') ?? '', text, json };
}

// The response must be listed for the operation and, when JSON, match the listed schema.
function conforms(op, where, r) {
  const listed = op.responses[String(r.status)];
  assert.ok(listed, `${where}: status ${r.status} is not in the document (${Object.keys(op.responses)}): ${r.text.slice(0, 300)}`);
  const media = listed.content?.['application/json'];
  if (media && r.type.startsWith('application/json')) {
    const v = validator(media.schema);
    assert.ok(v(r.json), `${where}: ${r.status} body does not match its schema: ${ajv.errorsText(v.errors)}\n${r.text.slice(0, 400)}`);
  }
}

// The JSON types schema `s` accepts (through oneOf/anyOf, const and enum too); empty when it does not say.
function typesOf(s) {
  s = resolve(s);
  const kind = (v) => (v === null ? 'null' : Array.isArray(v) ? 'array' : typeof v);
  if (s.oneOf || s.anyOf) return (s.oneOf ?? s.anyOf).flatMap(typesOf);
  if (s.type) return [].concat(s.type);
  if (s.const !== undefined) return [kind(s.const)];
  if (s.enum) return [...new Set(s.enum.map(kind))];
  return [];
}

// Values property schema `s` refuses: one of each JSON type it does not accept, a string outside its enum,
// and a number under its minimum.
function wrongValues(s) {
  s = resolve(s);
  const ok = typesOf(s);
  if (ok.length === 0) return [];
  const samples = { string: 'wrong', integer: 12345, number: 0.5, boolean: true, object: { unexpected: true }, array: [[]] };
  const out = [];
  for (const [t, v] of Object.entries(samples)) {
    const accepted = ok.includes(t) || (t === 'integer' && ok.includes('number'));
    if (!accepted) out.push(v);
  }
  if (s.enum && s.enum.every((v) => typeof v === 'string' || v === null)) out.push('no-such-value');
  if (s.minimum !== undefined) out.push(s.minimum - 1);
  return out;
}

let sessionId;
const concrete = (path) => path.replace('{id}', sessionId);

test('the served document is the checked-in one', async () => {
  const r = await fetch(base + '/openapi.json');
  assert.equal(r.status, 200);
  assert.deepEqual(await r.json(), checkedIn);
});

test('every route answers its examples as the document says', async () => {
  const s = await call('POST', '/v1/sessions', {});
  sessionId = s.json.id;
  await call('POST', `/v1/sessions/${sessionId}/append`, { text: 'Once upon a time' });
  let requests = 0;
  for (const [path, item] of Object.entries(checkedIn.paths)) {
    for (const method of ['get', 'post']) {
      const op = item[method];
      if (!op) continue;
      const examples = op.requestBody ? Object.entries(op.requestBody.content['application/json'].examples) : [['none', {}]];
      for (const [name, ex] of examples) {
        const r = await call(method.toUpperCase(), concrete(path), ex.value);
        conforms(op, `${method} ${path} example ${name}`, r);
        assert.ok(r.status < 300, `${method} ${path} example ${name}: ${r.status} ${r.text.slice(0, 300)}`);
        ++requests;
      }
    }
  }
  assert.ok(requests >= 20, `only ${requests} example requests`);
});

test('generated invalid requests get a documented 4xx Error', async () => {
  let requests = 0;
  for (const [path, item] of Object.entries(checkedIn.paths)) {
    const op = item.post;
    if (!op?.requestBody) continue;
    const media = op.requestBody.content['application/json'];
    const schema = resolve(media.schema);
    const valid = Object.values(media.examples)[0].value;
    const bodies = [['not JSON', '{"unterminated', true], ['an array', [1, 2], false]];
    for (const [prop, ps] of Object.entries(schema.properties ?? {}))
      for (const wrong of wrongValues(resolve(ps))) bodies.push([`${prop}=${JSON.stringify(wrong)}`, { ...valid, [prop]: wrong }, false]);
    for (const req of schema.required ?? []) {
      const { [req]: _, ...without } = valid;
      bodies.push([`without ${req}`, without, false]);
    }
    for (const [what, body, raw] of bodies) {
      const r = await call('POST', concrete(path), body, raw);
      conforms(op, `post ${path} ${what}`, r);
      assert.ok(r.status >= 400 && r.status < 500, `post ${path} ${what}: expected a 4xx, got ${r.status} ${r.text.slice(0, 300)}`);
      ++requests;
    }
  }
  assert.ok(requests >= 100, `only ${requests} invalid requests`);
});

test('unknown routes are 404, other methods 405, both Error objects', async () => {
  const error = validator(checkedIn.components.schemas.Error);
  const missing = await call('GET', '/v1/nothing-here');
  assert.equal(missing.status, 404);
  assert.ok(error(missing.json), missing.text);
  const wrong = await fetch(base + '/v1/completions', { method: 'PUT', headers: auth });
  assert.equal(wrong.status, 405);
  assert.equal(wrong.headers.get('allow'), 'POST');
  assert.ok(error(await wrong.json()));
  await call('DELETE', `/v1/sessions/${sessionId}`);
});
