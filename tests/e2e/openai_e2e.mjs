// The official openai client against `rill serve` (started by run.sh): the API a client sees, end to end.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createRequire } from 'node:module';

const require = createRequire(process.env.NODE_PATH + '/');
const OpenAI = require('openai');
const baseURL = process.env.RILL_E2E_URL;
const apiKey = process.env.RILL_E2E_KEY;
const client = new OpenAI({ baseURL, apiKey, maxRetries: 0 });
const messages = [{ role: 'user', content: 'Tell me a story.' }];

test('models', async () => {
  const models = await client.models.list();
  assert.deepEqual(models.data.map((m) => m.id), ['tiny']);
});

test('chat: whole and streamed agree', async () => {
  const whole = await client.chat.completions.create({ model: 'tiny', messages, max_tokens: 8, temperature: 0 });
  assert.equal(whole.choices[0].message.role, 'assistant');
  assert.equal(typeof whole.choices[0].message.content, 'string');
  assert.ok(whole.usage.prompt_tokens > 0);
  const stream = await client.chat.completions.create({
    model: 'tiny', messages, max_tokens: 8, temperature: 0, stream: true, stream_options: { include_usage: true },
  });
  let text = '';
  let usage = null;
  for await (const chunk of stream) {
    if (chunk.choices.length) text += chunk.choices[0].delta.content ?? '';
    if (chunk.usage) usage = chunk.usage;
  }
  assert.equal(text, whole.choices[0].message.content);
  assert.equal(usage.completion_tokens, whole.usage.completion_tokens);
});

test('completions: stop strings, n, logprobs, seed', async () => {
  const base = { model: 'tiny', prompt: 'Once upon a time', max_tokens: 20, temperature: 0, ignore_eos: true };
  const full = (await client.completions.create(base)).choices[0].text;
  const stop = full.slice(Math.floor(full.length / 2), Math.floor(full.length / 2) + 3);
  const stopped = await client.completions.create({ ...base, stop: [stop] });
  assert.equal(stopped.choices[0].text, full.slice(0, full.indexOf(stop)));
  assert.equal(stopped.choices[0].finish_reason, 'stop');

  const n = await client.completions.create({ ...base, n: 3, temperature: 0.9, seed: 7 });
  assert.equal(n.choices.length, 3);
  const again = await client.completions.create({ ...base, n: 3, temperature: 0.9, seed: 7 });
  assert.deepEqual(again.choices.map((c) => c.text), n.choices.map((c) => c.text));

  const lp = await client.completions.create({ ...base, max_tokens: 3, logprobs: 2 });
  assert.equal(lp.choices[0].logprobs.tokens.length, 3);
  const clp = await client.chat.completions.create({ model: 'tiny', messages, max_tokens: 2, logprobs: true, top_logprobs: 2 });
  assert.equal(clp.choices[0].logprobs.content[0].top_logprobs.length, 2);
});

test('errors arrive as APIError with the right status', async () => {
  await assert.rejects(client.completions.create({ model: 'tiny', prompt: 'x', temperature: 5 }), (e) => e.status === 400 && e.param === 'temperature');
  await assert.rejects(client.completions.create({ model: 'nope', prompt: 'x' }), (e) => e.status === 404);
  await assert.rejects(client.completions.create({ model: 'tiny', prompt: 'x', max_tokens: 100000 }), (e) => e.status === 400);
  const wrongKey = new OpenAI({ baseURL, apiKey: 'wrong', maxRetries: 0 });
  await assert.rejects(wrongKey.models.list(), (e) => e.status === 401);
});
