// Structured output and tool calls through the official openai client (started by run.sh): every schema of the
// corpus (tests/data/json_schemas.json) constrains rill-tiny at temperature 1 and each output is validated by ajv,
// an independent JSON Schema validator; the SDK's zodResponseFormat helper parses a reply; tools are called with
// tool_choice "required" and a named function, streamed deltas reassembled by the SDK.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createRequire } from 'node:module';
import { readFileSync } from 'node:fs';

const require = createRequire(process.env.NODE_PATH + '/');
const OpenAI = require('openai');
const Ajv2020 = require('ajv/dist/2020').default;
const addFormats = require('ajv-formats').default ?? require('ajv-formats');
const { z } = require('zod');
const { zodResponseFormat } = require('openai/helpers/zod');

const tiny = new OpenAI({ baseURL: process.env.RILL_TINY_URL, apiKey: 'none', maxRetries: 0 });
const random = new OpenAI({ baseURL: process.env.RILL_E2E_URL, apiKey: process.env.RILL_E2E_KEY, maxRetries: 0 });
const corpus = JSON.parse(readFileSync(process.env.RILL_SCHEMAS, 'utf8'));
const every = Number(process.env.RILL_SCHEMA_EVERY ?? 1);  // 8 under the sanitizers: a slower server
const schemas = corpus.filter((_, i) => i % every === 0);
const samples = Number(process.env.RILL_SCHEMA_SAMPLES ?? 2);
const ajv = new Ajv2020({ strict: false, allErrors: true });
addFormats(ajv);

async function pool(jobs, width, run) {
  let next = 0;
  await Promise.all(Array.from({ length: width }, async () => {
    while (next < jobs.length) await run(jobs[next++]);
  }));
}

test(`corpus: ${schemas.length} schemas x ${samples} generations by rill-tiny at T=1 validate with ajv`, async () => {
  assert.ok(corpus.length >= 100 && schemas.length >= corpus.length / every - 1);
  const jobs = schemas.flatMap((s) => Array.from({ length: samples }, (_, k) => ({ ...s, seed: k })));
  let unfinished = 0;
  const failures = [];
  await pool(jobs, 32, async ({ name, schema, seed, unbounded }) => {
    const r = await tiny.chat.completions.create({
      model: 'rill-tiny', messages: [{ role: 'user', content: `Write a ${name.replaceAll('_', ' ')} as JSON.` }],
      temperature: 1, seed, max_tokens: 480,
      response_format: { type: 'json_schema', json_schema: { name, schema, strict: true } },
    });
    const c = r.choices[0];
    // Where the schema bounds nothing (recursion, a map, a bare string), a T=1 model may run out of max_tokens.
    if (c.finish_reason === 'length' && unbounded) return unfinished++;
    if (c.finish_reason !== 'stop') return failures.push(`${name}#${seed}: finish_reason ${c.finish_reason}: ${c.message.content}`);
    let value;
    try {
      value = JSON.parse(c.message.content);
    } catch (e) {
      return failures.push(`${name}#${seed}: not JSON: ${c.message.content}`);
    }
    const validate = ajv.compile(schema);
    if (!validate(value)) failures.push(`${name}#${seed}: ${ajv.errorsText(validate.errors)}: ${c.message.content}`);
  });
  assert.deepEqual(failures, []);
  assert.ok(unfinished <= Math.max(1, jobs.length / 20), `${unfinished} generations ran out of tokens`);
});

test('response_format from zod, parsed by the SDK', async () => {
  const Answer = z.object({ steps: z.array(z.object({ explanation: z.string().max(40), output: z.string().max(20) })).max(2),
                            final_answer: z.string().max(20) });
  const r = await tiny.beta.chat.completions.parse({
    model: 'rill-tiny', messages: [{ role: 'user', content: 'Solve 8x + 7 = -23.' }], temperature: 1, seed: 3,
    max_tokens: 400, response_format: zodResponseFormat(Answer, 'answer'),
  });
  const parsed = r.choices[0].message.parsed;
  assert.ok(Array.isArray(parsed.steps) && typeof parsed.final_answer === 'string');
});

test('json_object mode', async () => {
  const r = await tiny.chat.completions.create({
    model: 'rill-tiny', messages: [{ role: 'user', content: 'A cat as JSON.' }], temperature: 1, seed: 5, max_tokens: 480,
    response_format: { type: 'json_object' },
  });
  if (r.choices[0].finish_reason === 'stop') assert.equal(typeof JSON.parse(r.choices[0].message.content), 'object');
});

const tools = [
  { type: 'function', function: { name: 'get_weather', description: 'Weather in a city',
    parameters: { type: 'object', properties: { city: { type: 'string', maxLength: 16 }, unit: { enum: ['c', 'f'] } },
                  required: ['city', 'unit'], additionalProperties: false } } },
  { type: 'function', function: { name: 'get_time', description: 'Time in a zone',
    parameters: { type: 'object', properties: { zone: { type: 'string', pattern: '^[A-Z]{3}$' } }, required: ['zone'],
                  additionalProperties: false } } },
];
const messages = [{ role: 'user', content: 'What is the weather in Paris?' }];
const valid = (name, args) => ajv.validate(tools.find((t) => t.function.name === name).function.parameters, JSON.parse(args));

test('tools: tool_choice required, streamed, reassembled by the SDK', async () => {
  const stream = random.beta.chat.completions.stream({
    model: 'tiny', messages, tools, tool_choice: 'required', parallel_tool_calls: false, temperature: 1, seed: 11,
    max_tokens: 120,
  });
  const final = await stream.finalChatCompletion();
  const choice = final.choices[0];
  assert.equal(choice.finish_reason, 'tool_calls');
  assert.equal(choice.message.tool_calls.length, 1);
  const call = choice.message.tool_calls[0];
  assert.match(call.id, /^call_/);
  assert.ok(valid(call.function.name, call.function.arguments), call.function.arguments);
});

test('tools: a named function, not streamed', async () => {
  const r = await random.chat.completions.create({
    model: 'tiny', messages, tools, tool_choice: { type: 'function', function: { name: 'get_time' } }, temperature: 1,
    seed: 12, max_tokens: 120,
  });
  const calls = r.choices[0].message.tool_calls;
  assert.equal(r.choices[0].finish_reason, 'tool_calls');
  assert.ok(calls.length >= 1);
  for (const c of calls) {
    assert.equal(c.function.name, 'get_time');
    assert.ok(valid('get_time', c.function.arguments), c.function.arguments);
  }
});

test('tools and schemas: errors name the parameter', async () => {
  await assert.rejects(random.chat.completions.create({ model: 'tiny', messages, tools, tool_choice: { type: 'function', function: { name: 'nope' } } }),
                       (e) => e.status === 400 && e.param === 'tool_choice');
  await assert.rejects(tiny.chat.completions.create({ model: 'rill-tiny', messages, response_format: { type: 'json_schema', json_schema: { name: 'x', schema: { type: 'string', format: 'hostname' } } } }),
                       (e) => e.status === 400 && e.param === 'response_format' && /format/.test(e.message));
  await assert.rejects(tiny.completions.create({ model: 'rill-tiny', prompt: 'x', grammar: 'root ::= undefined-rule' }),
                       (e) => e.status === 400 && e.param === 'grammar' && /undefined-rule/.test(e.message));
});

test('grammar (GBNF) on completions', async () => {
  const r = await tiny.completions.create({ model: 'rill-tiny', prompt: 'The answer is', temperature: 1, seed: 2, max_tokens: 20,
                                            grammar: 'root ::= ("yes" | "no") "!"' });
  assert.match(r.choices[0].text, /^(yes|no)!$/);
  assert.equal(r.choices[0].finish_reason, 'stop');
});
