// The official `@anthropic-ai/sdk` npm package against a real `corral serve` with the bundled SmolLM2,
// on Corral's Messages API (/v1/messages). Assertions are on what comes back (blocks, usage, stop
// reasons, tool input), never on the model's exact wording.
import assert from 'node:assert/strict'
import { before, test } from 'node:test'
import Anthropic, { NotFoundError } from '@anthropic-ai/sdk'
import { FORECAST, FORECAST_PARAMETERS, MODEL, SERVER, assertForecastArguments } from './common.mjs'

const client = new Anthropic({ baseURL: SERVER, apiKey: 'corral', maxRetries: 0 })
const FRANCE = [{ role: 'user', content: 'What is the capital of France?' }]
const FORECAST_TOOL = {
  name: 'get_forecast', description: FORECAST.function.description, input_schema: FORECAST_PARAMETERS,
}

before(async () => {
  const pulled = await fetch(`${SERVER}/api/pull`, { method: 'POST', body: JSON.stringify({ model: MODEL, stream: false }) })
  assert.equal((await pulled.json()).status, 'success')
})

test('messages.create answers with text blocks and usage', async () => {
  const message = await client.messages.create({
    model: MODEL, max_tokens: 24, temperature: 0, system: 'Answer briefly.', messages: FRANCE,
  })
  assert.equal(message.type, 'message')
  assert.equal(message.role, 'assistant')
  assert.match(message.id, /^msg_/)
  assert.deepEqual(message.content.map((b) => b.type), ['text'])
  assert.ok(message.content[0].text.trim().length > 0)
  assert.ok(['end_turn', 'max_tokens'].includes(message.stop_reason), message.stop_reason)
  assert.ok(message.usage.output_tokens > 0 && message.usage.output_tokens <= 24)
  assert.ok(message.usage.input_tokens + (message.usage.cache_read_input_tokens ?? 0) > 5)
})

test('messages.stream gives text deltas that add up to the final message', async () => {
  const whole = await client.messages.create({ model: MODEL, max_tokens: 24, temperature: 0, messages: FRANCE })
  const stream = client.messages.stream({ model: MODEL, max_tokens: 24, temperature: 0, messages: FRANCE })
  let text = ''
  stream.on('text', (delta) => { text += delta })
  const final = await stream.finalMessage()
  assert.equal(text, whole.content[0].text)
  assert.equal(final.content[0].text, whole.content[0].text)
  assert.equal(final.stop_reason, whole.stop_reason)
  assert.equal(final.usage.output_tokens, whole.usage.output_tokens)
})

test('tool_choice any gives a tool_use block whose input fits the schema', async () => {
  const messages = [{ role: 'user', content: 'What will the weather be like in the next 3 days?' }]
  const message = await client.messages.create({
    model: MODEL, max_tokens: 64, temperature: 0, messages, tools: [FORECAST_TOOL], tool_choice: { type: 'any' },
  })
  assert.equal(message.stop_reason, 'tool_use')
  const use = message.content.find((b) => b.type === 'tool_use')
  assert.ok(use, JSON.stringify(message.content))
  assert.equal(use.name, 'get_forecast')
  assert.match(use.id, /^toolu_/)
  assertForecastArguments(use.input)
  const follow = await client.messages.create({
    model: MODEL,
    max_tokens: 24,
    temperature: 0,
    tools: [FORECAST_TOOL],
    tool_choice: { type: 'none' },
    messages: [
      ...messages,
      { role: 'assistant', content: message.content },
      { role: 'user', content: [{ type: 'tool_result', tool_use_id: use.id, content: 'Sunny, 21 degrees.' }] },
    ],
  })
  assert.ok(follow.content.some((b) => b.type === 'text' && b.text.trim().length > 0), JSON.stringify(follow.content))
})

test('a streamed tool_use, forced by name, arrives as input_json deltas the package parses', async () => {
  const stream = client.messages.stream({
    model: MODEL,
    max_tokens: 64,
    temperature: 0,
    messages: [{ role: 'user', content: 'Forecast for Berlin in fahrenheit please.' }],
    tools: [FORECAST_TOOL],
    tool_choice: { type: 'tool', name: 'get_forecast' },
  })
  const deltas = []
  stream.on('streamEvent', (event) => { if (event.delta?.type === 'input_json_delta') deltas.push(event.delta) })
  const final = await stream.finalMessage()
  assert.ok(deltas.length >= 1)
  assert.equal(final.stop_reason, 'tool_use')
  const use = final.content.find((b) => b.type === 'tool_use')
  assert.equal(use.name, 'get_forecast')
  assertForecastArguments(use.input)
  assert.deepEqual(JSON.parse(deltas.map((d) => d.partial_json).join('')), use.input)
})

test('countTokens counts the prompt a message is given', async () => {
  const request = { model: MODEL, system: 'Answer in one word.', messages: FRANCE }
  const { input_tokens: counted } = await client.messages.countTokens(request)
  const message = await client.messages.create({ ...request, max_tokens: 1 })
  assert.equal(counted, message.usage.input_tokens + (message.usage.cache_read_input_tokens ?? 0))
  const longer = await client.messages.countTokens({
    ...request, messages: [{ role: 'user', content: 'What is the capital of France, and what river runs through it?' }],
  })
  assert.ok(longer.input_tokens > counted, `${longer.input_tokens} <= ${counted}`)
})

test('an unknown model is a NotFoundError with status 404', async () => {
  await assert.rejects(client.messages.create({ model: 'no-such-model', max_tokens: 4, messages: FRANCE }), (err) => {
    assert.ok(err instanceof NotFoundError, String(err))
    assert.equal(err.status, 404)
    assert.equal(err.error.error.type, 'not_found_error')
    return true
  })
})
