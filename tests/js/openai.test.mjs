// The official `openai` npm package against a real `corral serve` with the bundled SmolLM2, pointed
// at Corral's /v1 as its README shows for other servers. Assertions are on what comes back (text,
// usage, finish reasons, parsed JSON), never on the model's exact wording.
import assert from 'node:assert/strict'
import { before, test } from 'node:test'
import OpenAI, { NotFoundError, BadRequestError } from 'openai'
import {
  CITY_SCHEMA, FORECAST, FORECAST_PARAMETERS, MODEL, SERVER, assertCity, assertForecastArguments,
} from './common.mjs'

const client = new OpenAI({ baseURL: `${SERVER}/v1`, apiKey: 'corral', maxRetries: 0 })
const FRANCE = [{ role: 'user', content: 'What is the capital of France?' }]

/** A request that must call the forecast tool, marked strict so the package's helpers parse its arguments. */
function strictForecastCall(question) {
  return {
    model: MODEL,
    messages: [{ role: 'user', content: question }],
    tools: [{ ...FORECAST, function: { ...FORECAST.function, strict: true } }],
    tool_choice: 'required',
    temperature: 0,
    max_tokens: 64,
  }
}

before(async () => {
  // The model must be in the store for /v1/models to list it: pull it as a user would (`corral pull`).
  const pulled = await fetch(`${SERVER}/api/pull`, { method: 'POST', body: JSON.stringify({ model: MODEL, stream: false }) })
  assert.equal((await pulled.json()).status, 'success')
})

test('models.list and models.retrieve', async () => {
  const ids = []
  for await (const model of client.models.list()) ids.push(model.id)
  assert.ok(ids.includes(MODEL), JSON.stringify(ids))
  const model = await client.models.retrieve(MODEL)
  assert.equal(model.id, MODEL)
  assert.equal(model.object, 'model')
  assert.ok(model.created > 0)
})

test('chat.completions.create answers with usage', async () => {
  const completion = await client.chat.completions.create({ model: MODEL, messages: FRANCE, temperature: 0, max_tokens: 24 })
  assert.equal(completion.object, 'chat.completion')
  assert.equal(completion.model, MODEL)
  assert.match(completion.id, /^chatcmpl-/)
  const [choice] = completion.choices
  assert.equal(choice.message.role, 'assistant')
  assert.ok(choice.message.content.trim().length > 0)
  assert.ok(['stop', 'length'].includes(choice.finish_reason), choice.finish_reason)
  const { usage } = completion
  assert.ok(usage.prompt_tokens > 5 && usage.completion_tokens > 0 && usage.completion_tokens <= 24)
  assert.equal(usage.total_tokens, usage.prompt_tokens + usage.completion_tokens)
})

test('max_tokens ends a completion with finish_reason length', async () => {
  const completion = await client.chat.completions.create({
    model: MODEL, messages: [{ role: 'user', content: 'Tell me a long story.' }], max_tokens: 5,
  })
  assert.equal(completion.choices[0].finish_reason, 'length')
  assert.equal(completion.usage.completion_tokens, 5)
})

test('a streamed chat completion adds up to the whole one and ends with usage', async () => {
  const request = { model: MODEL, messages: FRANCE, temperature: 0, max_tokens: 24 }
  const whole = await client.chat.completions.create(request)
  const stream = await client.chat.completions.create({ ...request, stream: true, stream_options: { include_usage: true } })
  let text = ''
  const finishes = []
  let usage
  let chunks = 0
  for await (const chunk of stream) {
    chunks++
    assert.equal(chunk.object, 'chat.completion.chunk')
    for (const choice of chunk.choices) {
      text += choice.delta.content ?? ''
      if (choice.finish_reason) finishes.push(choice.finish_reason)
    }
    if (chunk.usage) usage = chunk.usage
  }
  assert.ok(chunks > 3)
  assert.equal(text, whole.choices[0].message.content)
  assert.deepEqual(finishes, [whole.choices[0].finish_reason])
  assert.deepEqual(
    [usage.prompt_tokens, usage.completion_tokens],
    [whole.usage.prompt_tokens, whole.usage.completion_tokens],
  )
})

test('the stream helper gathers the final completion', async () => {
  const runner = client.chat.completions.stream({ model: MODEL, messages: FRANCE, temperature: 0, max_tokens: 24 })
  let deltas = ''
  runner.on('content', (delta) => { deltas += delta })
  const final = await runner.finalChatCompletion()
  assert.ok(final.choices[0].message.content.trim().length > 0)
  assert.equal(deltas, final.choices[0].message.content)
})

test('tools with tool_choice required give a call whose arguments parse and fit the schema', async () => {
  const messages = [{ role: 'user', content: 'What will the weather be like in the next 3 days?' }]
  const completion = await client.chat.completions.create({
    model: MODEL, messages, tools: [FORECAST], tool_choice: 'required', temperature: 0, max_tokens: 64,
  })
  const [choice] = completion.choices
  assert.equal(choice.finish_reason, 'tool_calls')
  assert.equal(choice.message.content, null)
  const calls = choice.message.tool_calls
  assert.ok(calls.length >= 1)
  for (const call of calls) {
    assert.equal(call.type, 'function')
    assert.match(call.id, /^call_/)
    assert.equal(call.function.name, 'get_forecast')
    assertForecastArguments(JSON.parse(call.function.arguments))
  }
  // The tool's result goes back by the call's id, and the model answers in text.
  const answer = await client.chat.completions.create({
    model: MODEL,
    messages: [...messages, choice.message, { role: 'tool', tool_call_id: calls[0].id, content: 'Sunny, 21 degrees.' }],
    tools: [FORECAST],
    tool_choice: 'none',
    temperature: 0,
    max_tokens: 32,
  })
  assert.ok(answer.choices[0].message.content.trim().length > 0)
  assert.equal(answer.choices[0].message.tool_calls, undefined)
})

test('a named tool_choice, streamed, gives that call in deltas', async () => {
  const stream = await client.chat.completions.create({
    model: MODEL,
    messages: [{ role: 'user', content: 'Give me the forecast in fahrenheit.' }],
    tools: [FORECAST],
    tool_choice: { type: 'function', function: { name: 'get_forecast' } },
    temperature: 0,
    max_tokens: 64,
    stream: true,
  })
  const calls = {}
  let finish
  for await (const chunk of stream) {
    const choice = chunk.choices[0]
    for (const delta of choice?.delta.tool_calls ?? []) {
      const call = (calls[delta.index] ??= { name: '', arguments: '' })
      call.name += delta.function?.name ?? ''
      call.arguments += delta.function?.arguments ?? ''
    }
    finish = choice?.finish_reason ?? finish
  }
  assert.equal(finish, 'tool_calls')
  const all = Object.values(calls)
  assert.ok(all.length >= 1)
  for (const call of all) {
    assert.equal(call.name, 'get_forecast')
    assertForecastArguments(JSON.parse(call.arguments))
  }
})

test('runTools calls a JavaScript function with the parsed arguments', async () => {
  const seen = []
  const runner = client.chat.completions.runTools({
    model: MODEL,
    messages: [{ role: 'user', content: 'What will the weather be like in the next 3 days?' }],
    tools: [{
      type: 'function',
      function: {
        name: 'get_forecast',
        description: FORECAST.function.description,
        parameters: FORECAST_PARAMETERS,
        parse: JSON.parse,
        function: (args) => { seen.push(args); return 'Sunny, 21 degrees.' },
      },
    }],
    // A named function: the runner calls it once and stops (a required call would never end in text).
    tool_choice: { type: 'function', function: { name: 'get_forecast' } },
    temperature: 0,
    max_tokens: 64,
  })
  await runner.done()
  assert.equal(seen.length, 1)
  assertForecastArguments(seen[0])
  assert.deepEqual(runner.messages.map((m) => m.role), ['user', 'assistant', 'tool'])
})

test('chat.completions.parse parses the arguments of a strict tool', async () => {
  const completion = await client.chat.completions.parse(strictForecastCall('Forecast for Berlin for 5 days please.'))
  const [call] = completion.choices[0].message.tool_calls
  assertForecastArguments(call.function.parsed_arguments)
})

test('the stream helper assembles a strict tool call and parses its arguments', async () => {
  const stream = client.chat.completions.stream(strictForecastCall('How cold will it get over the next ten days?'))
  const done = []
  stream.on('tool_calls.function.arguments.done', (event) => done.push(event))
  const final = await stream.finalChatCompletion()
  assert.equal(final.choices[0].finish_reason, 'tool_calls')
  assert.ok(done.length >= 1)
  for (const event of done) {
    assert.equal(event.name, 'get_forecast')
    assertForecastArguments(event.parsed_arguments)
  }
  const [call] = final.choices[0].message.tool_calls
  assert.deepEqual(call.function.parsed_arguments, done[0].parsed_arguments)
})

test('response_format json_schema gives JSON that parses and fits the schema', async () => {
  const asCity = (content) => ({
    model: MODEL,
    messages: [{ role: 'user', content }],
    response_format: { type: 'json_schema', json_schema: { name: 'city', schema: CITY_SCHEMA, strict: true } },
    temperature: 0,
    max_tokens: 120,
  })
  const completion = await client.chat.completions.create(asCity('Paris is the capital of France. Describe Paris as JSON.'))
  const [choice] = completion.choices
  assert.equal(choice.finish_reason, 'stop', `cut short: ${choice.message.content}`)
  assertCity(JSON.parse(choice.message.content))
  // chat.completions.parse does the JSON.parse for a strict schema.
  const parsed = await client.chat.completions.parse(asCity('Describe Berlin as JSON.'))
  assertCity(parsed.choices[0].message.parsed)
})

test('completions.create continues a prompt, with logprobs', async () => {
  const completion = await client.completions.create({
    model: MODEL, prompt: 'The capital of France is', max_tokens: 8, temperature: 0, logprobs: 2,
  })
  assert.equal(completion.object, 'text_completion')
  const [choice] = completion.choices
  assert.ok(choice.text.length > 0)
  assert.ok(['stop', 'length'].includes(choice.finish_reason))
  assert.ok(completion.usage.prompt_tokens > 0 && completion.usage.completion_tokens > 0)
  const { tokens, token_logprobs: logprobs, top_logprobs: tops, text_offset: offsets } = choice.logprobs
  assert.equal(tokens.join(''), choice.text)
  assert.equal(logprobs.length, tokens.length)
  assert.ok(logprobs.every((p) => p <= 0))
  assert.ok(tops.every((top) => Object.keys(top).length === 2))
  assert.equal(offsets[0], 0)
  const streamed = await client.completions.create({
    model: MODEL, prompt: 'The capital of France is', max_tokens: 8, temperature: 0, stream: true,
  })
  let text = ''
  for await (const chunk of streamed) text += chunk.choices[0]?.text ?? ''
  assert.equal(text, choice.text)
})

test('chat logprobs come with each token', async () => {
  const completion = await client.chat.completions.create({
    model: MODEL, messages: FRANCE, temperature: 0, max_tokens: 8, logprobs: true, top_logprobs: 3,
  })
  const [choice] = completion.choices
  const entries = choice.logprobs.content
  assert.ok(entries.length > 0 && entries.length <= completion.usage.completion_tokens)
  assert.equal(entries.map((e) => e.token).join(''), choice.message.content)
  for (const entry of entries) {
    assert.ok(entry.logprob <= 0)
    assert.ok(Array.isArray(entry.bytes))
    assert.equal(entry.top_logprobs.length, 3)
    assert.ok(entry.top_logprobs[0].logprob >= entry.top_logprobs[2].logprob)
  }
})

test('embeddings.create, as base64 (the package default) and as floats', async () => {
  const input = ['The sky is blue.', 'Grass is green.']
  const packed = await client.embeddings.create({ model: MODEL, input })
  const floats = await client.embeddings.create({ model: MODEL, input, encoding_format: 'float' })
  assert.equal(packed.data.length, 2)
  assert.ok(packed.usage.prompt_tokens > 0)
  for (const [i, item] of packed.data.entries()) {
    assert.equal(item.index, i)
    assert.equal(item.embedding.length, 576)
    const norm = Math.sqrt(item.embedding.reduce((sum, x) => sum + x * x, 0))
    assert.ok(Math.abs(norm - 1) < 1e-4, String(norm))
    floats.data[i].embedding.forEach((x, j) => assert.ok(Math.abs(x - item.embedding[j]) < 1e-6))
  }
  const short = await client.embeddings.create({ model: MODEL, input: 'The sky is blue.', dimensions: 8 })
  assert.equal(short.data[0].embedding.length, 8)
})

test('an unknown model is a NotFoundError with status 404', async () => {
  await assert.rejects(client.chat.completions.create({ model: 'no-such-model', messages: FRANCE }), (err) => {
    assert.ok(err instanceof NotFoundError, String(err))
    assert.equal(err.status, 404)
    assert.match(err.message, /no-such-model/)
    return true
  })
  await assert.rejects(client.models.retrieve('no-such-model'), NotFoundError)
  await assert.rejects(
    client.chat.completions.create({ model: 'no-such-model', messages: FRANCE, stream: true }),
    NotFoundError,
  )
})

test('a bad parameter is a BadRequestError naming it', async () => {
  const refusal = (param) => (err) => {
    assert.ok(err instanceof BadRequestError, String(err))
    assert.equal(err.status, 400)
    assert.equal(err.param, param)
    return true
  }
  await assert.rejects(client.chat.completions.create({ model: MODEL, messages: FRANCE, n: 3 }), refusal('n'))
  await assert.rejects(client.chat.completions.create({ model: MODEL, messages: FRANCE, temperature: 'hot' }),
    refusal('temperature'))
})

test('a prompt longer than the context is context_length_exceeded', async () => {
  const long = [{ role: 'user', content: 'word '.repeat(400) }]
  for (const stream of [false, true]) {
    await assert.rejects(client.chat.completions.create({ model: MODEL, messages: long, options: { num_ctx: 64 }, stream }),
      (err) => {
        assert.ok(err instanceof BadRequestError, String(err))
        assert.equal(err.code, 'context_length_exceeded')
        assert.match(err.message, /num_ctx/)
        return true
      })
  }
})

test('aborting a stream stops it, and the server goes on serving', async () => {
  const stream = await client.chat.completions.create({
    model: MODEL, messages: [{ role: 'user', content: 'Tell a very long story.' }], max_tokens: 2000, stream: true,
  })
  let chunks = 0
  for await (const _chunk of stream) {
    if (++chunks === 3) break // leaving the loop aborts the request
  }
  assert.equal(chunks, 3)
  // Aborted through its signal, the package ends the stream quietly, before any finish_reason.
  const controller = new AbortController()
  const aborted = await client.chat.completions.create(
    { model: MODEL, messages: [{ role: 'user', content: 'Tell a very long story.' }], max_tokens: 2000, stream: true },
    { signal: controller.signal },
  )
  const finishes = []
  let seen = 0
  for await (const chunk of aborted) {
    if (++seen === 2) controller.abort()
    finishes.push(...chunk.choices.map((c) => c.finish_reason).filter(Boolean))
  }
  assert.ok(seen >= 2)
  assert.deepEqual(finishes, [])
  const after = await client.chat.completions.create({ model: MODEL, messages: FRANCE, temperature: 0, max_tokens: 8 })
  assert.ok(after.choices[0].message.content.trim().length > 0)
})
