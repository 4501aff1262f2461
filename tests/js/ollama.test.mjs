// The official `ollama` npm package against a real `corral serve` with the bundled SmolLM2, used the
// way its README shows. Assertions are on what comes back (text, counts, reasons, parsed JSON),
// never on the model's exact wording.
import assert from 'node:assert/strict'
import { before, test } from 'node:test'
import { Ollama } from 'ollama'
import { CITY_SCHEMA, FORECAST, GREEDY, MODEL, SERVER, assertCity, assertForecastArguments } from './common.mjs'

const ollama = new Ollama({ host: SERVER })

before(async () => {
  // As a user starts: pull the model (the bundled one imports from its wheel, with no network).
  const pulled = await ollama.pull({ model: MODEL })
  assert.equal(pulled.status, 'success')
})

test('version answers', async () => {
  const { version } = await ollama.version()
  assert.match(version, /^\d+\.\d+/)
})

test('list shows the pulled model with its details', async () => {
  const { models } = await ollama.list()
  const found = models.find((m) => m.model === MODEL)
  assert.ok(found, `${MODEL} not in ${JSON.stringify(models.map((m) => m.model))}`)
  assert.equal(found.name, MODEL)
  assert.ok(found.size > 50_000_000)
  assert.match(found.digest, /^[0-9a-f]{64}$/)
  assert.equal(found.details.family, 'llama')
  assert.equal(found.details.format, 'gguf')
  assert.ok(!Number.isNaN(Date.parse(found.modified_at)))
})

test('show gives the template, model info and capabilities', async () => {
  const shown = await ollama.show({ model: MODEL })
  assert.ok(shown.template.includes('im_start'), shown.template)
  assert.ok(shown.modelfile.includes('FROM'))
  assert.equal(shown.details.family, 'llama')
  assert.equal(shown.model_info['general.architecture'], 'llama')
  assert.ok(shown.model_info['llama.context_length'] > 0)
  assert.ok(shown.capabilities.includes('completion'), JSON.stringify(shown.capabilities))
})

test('generate answers in one object with its counts', async () => {
  const r = await ollama.generate({ model: MODEL, prompt: 'What is the capital of France?', options: GREEDY })
  assert.equal(r.model, MODEL)
  assert.ok(r.response.trim().length > 0)
  assert.equal(r.done, true)
  assert.ok(['stop', 'length'].includes(r.done_reason), r.done_reason)
  assert.ok(r.eval_count > 0 && r.eval_count <= GREEDY.num_predict, String(r.eval_count))
  assert.ok(r.prompt_eval_count > 5)
  assert.ok(r.total_duration >= r.eval_duration && r.eval_duration > 0)
  assert.ok(Array.isArray(r.context) && Number.isInteger(r.context[0]))
})

test('generate streams parts that add up to the whole answer', async () => {
  const request = { model: MODEL, prompt: 'Count from one to five.', options: GREEDY }
  const whole = await ollama.generate(request)
  const parts = []
  for await (const part of await ollama.generate({ ...request, stream: true })) parts.push(part)
  assert.ok(parts.length > 3, `only ${parts.length} parts`)
  assert.ok(parts.slice(0, -1).every((p) => !p.done))
  const last = parts.at(-1)
  assert.equal(last.done, true)
  assert.equal(last.done_reason, whole.done_reason)
  assert.equal(last.eval_count, whole.eval_count)
  assert.equal(parts.map((p) => p.response).join(''), whole.response)
})

test('num_predict ends a generation with done_reason length', async () => {
  const r = await ollama.generate({ model: MODEL, prompt: 'Tell me a long story.', options: { num_predict: 5 } })
  assert.equal(r.done_reason, 'length')
  assert.equal(r.eval_count, 5)
})

test('chat answers, streamed and not alike', async () => {
  const messages = [{ role: 'user', content: 'What is the capital of France?' }]
  const whole = await ollama.chat({ model: MODEL, messages, options: GREEDY })
  assert.equal(whole.message.role, 'assistant')
  assert.ok(whole.message.content.trim().length > 0)
  assert.ok(whole.eval_count > 0 && whole.prompt_eval_count > 0)
  assert.ok(['stop', 'length'].includes(whole.done_reason))
  let streamed = ''
  let last
  for await (const part of await ollama.chat({ model: MODEL, messages, options: GREEDY, stream: true })) {
    assert.equal(part.message.role, 'assistant')
    streamed += part.message.content
    last = part
  }
  assert.equal(streamed, whole.message.content)
  assert.equal(last.done, true)
  assert.equal(last.done_reason, whole.done_reason)
})

test('chat with a required tool returns a call with parsed arguments', async () => {
  const r = await ollama.chat({
    model: MODEL,
    messages: [{ role: 'user', content: 'What will the weather be like in the next 3 days?' }],
    tools: [FORECAST],
    tool_choice: 'required', // Corral's field (llama.cpp's too); the package passes it through
    options: { temperature: 0, num_predict: 64 },
  })
  const calls = r.message.tool_calls
  assert.ok(Array.isArray(calls) && calls.length >= 1, JSON.stringify(r.message))
  for (const call of calls) {
    assert.equal(call.function.name, 'get_forecast')
    assert.equal(typeof call.function.arguments, 'object') // an object on Ollama's wire, not a string
    assertForecastArguments(call.function.arguments)
  }
  // The call goes back with its result, as the package's tool examples do, and the model answers in text.
  const followUp = await ollama.chat({
    model: MODEL,
    messages: [
      { role: 'user', content: 'What will the weather be like in the next 3 days?' },
      r.message,
      { role: 'tool', tool_name: 'get_forecast', content: '{"forecast": "sunny, 21 degrees"}' },
    ],
    tools: [FORECAST],
    options: GREEDY,
  })
  assert.ok(followUp.message.content.trim().length > 0 || followUp.message.tool_calls?.length > 0)
  assert.equal(followUp.done, true)
})

test('a streamed chat with a required tool sends the call in a part', async () => {
  const calls = []
  for await (const part of await ollama.chat({
    model: MODEL,
    messages: [{ role: 'user', content: 'Forecast for the week in fahrenheit please.' }],
    tools: [FORECAST],
    tool_choice: 'required',
    options: { temperature: 0, num_predict: 64 },
    stream: true,
  })) {
    calls.push(...(part.message.tool_calls ?? []))
  }
  assert.ok(calls.length >= 1)
  calls.forEach((call) => assertForecastArguments(call.function.arguments))
})

test('format with a JSON schema gives JSON that parses and fits it', async () => {
  const r = await ollama.chat({
    model: MODEL,
    messages: [{ role: 'user', content: 'Paris is the capital of France. Describe Paris as JSON.' }],
    format: CITY_SCHEMA,
    options: { temperature: 0, num_predict: 120 },
  })
  assert.equal(r.done_reason, 'stop', `cut short: ${r.message.content}`)
  assertCity(JSON.parse(r.message.content))
  const generated = await ollama.generate({
    model: MODEL,
    prompt: 'Describe Berlin as JSON.',
    format: CITY_SCHEMA,
    options: { temperature: 0, num_predict: 120 },
  })
  assertCity(JSON.parse(generated.response))
  const anyJson = await ollama.generate({ model: MODEL, prompt: 'A JSON object about cats.', format: 'json',
    options: { temperature: 0, num_predict: 60 } })
  if (anyJson.done_reason === 'stop') assert.equal(typeof JSON.parse(anyJson.response), 'object')
  else assert.ok(anyJson.response.trimStart().startsWith('{'), anyJson.response)
})

test('logprobs come with each generated token', async () => {
  const r = await ollama.generate({ model: MODEL, prompt: 'Say hello.', logprobs: true, top_logprobs: 3,
    options: { temperature: 0, num_predict: 8 } })
  assert.ok(r.logprobs.length > 0 && r.logprobs.length <= r.eval_count, `${r.logprobs.length} vs ${r.eval_count}`)
  for (const entry of r.logprobs) {
    assert.equal(typeof entry.token, 'string')
    assert.ok(entry.logprob <= 0)
    assert.equal(entry.top_logprobs.length, 3)
    assert.ok(entry.top_logprobs[0].logprob >= entry.top_logprobs[2].logprob)
  }
  assert.equal(r.logprobs.map((e) => e.token).join(''), r.response)
})

test('embed returns unit vectors, one per input', async () => {
  const r = await ollama.embed({ model: MODEL, input: ['The sky is blue.', 'Grass is green.'] })
  assert.equal(r.model, MODEL)
  assert.equal(r.embeddings.length, 2)
  for (const vector of r.embeddings) {
    assert.equal(vector.length, 576)
    const norm = Math.sqrt(vector.reduce((sum, x) => sum + x * x, 0))
    assert.ok(Math.abs(norm - 1) < 1e-4, String(norm))
  }
  assert.notDeepEqual(r.embeddings[0], r.embeddings[1])
  assert.ok(r.prompt_eval_count > 0)
  const legacy = await ollama.embeddings({ model: MODEL, prompt: 'The sky is blue.' })
  assert.equal(legacy.embedding.length, 576)
})

test('ps lists the loaded model with its size and expiry', async () => {
  await ollama.generate({ model: MODEL, prompt: 'hi', options: { num_predict: 1 } })
  const { models } = await ollama.ps()
  const loaded = models.filter((m) => m.model === MODEL)
  assert.equal(loaded.length, 1)
  assert.ok(loaded[0].size > 50_000_000)
  assert.ok(Date.parse(loaded[0].expires_at) > Date.now())
  assert.equal(loaded[0].details.family, 'llama')
})

test('create, copy and delete a model made from the bundled one', async () => {
  const created = await ollama.create({
    model: 'js-pirate', from: MODEL, system: 'You are a pirate.', parameters: { temperature: 0, num_predict: 16 },
  })
  assert.equal(created.status, 'success')
  const shown = await ollama.show({ model: 'js-pirate' })
  assert.equal(shown.system, 'You are a pirate.')
  assert.match(shown.parameters, /temperature\s+0/)
  assert.match(shown.parameters, /num_predict\s+16/)
  const r = await ollama.chat({ model: 'js-pirate', messages: [{ role: 'user', content: 'Who are you?' }] })
  assert.ok(r.message.content.trim().length > 0)
  assert.ok(r.eval_count <= 16)
  const progress = []
  for await (const part of await ollama.create({ model: 'js-parrot', from: 'js-pirate', stream: true })) {
    progress.push(part.status)
  }
  assert.equal(progress.at(-1), 'success')
  await ollama.copy({ source: 'js-parrot', destination: 'js-parrot-copy' })
  let names = (await ollama.list()).models.map((m) => m.model)
  for (const name of ['js-pirate:latest', 'js-parrot:latest', 'js-parrot-copy:latest']) assert.ok(names.includes(name), name)
  for (const name of ['js-pirate', 'js-parrot', 'js-parrot-copy']) await ollama.delete({ model: name })
  names = (await ollama.list()).models.map((m) => m.model)
  assert.ok(names.every((n) => !n.startsWith('js-')), JSON.stringify(names))
  assert.ok(names.includes(MODEL))
  await assert.rejects(ollama.delete({ model: 'js-pirate' }), (err) => err.status_code === 404)
})

test('pulling a model the registry lacks is a clear error', async () => {
  const registry = process.env.CORRAL_TEST_REGISTRY
  assert.ok(registry, 'CORRAL_TEST_REGISTRY is not set')
  const missing = `${registry}/library/no-such-model:latest`
  await assert.rejects(ollama.pull({ model: missing, insecure: true }), (err) => {
    assert.equal(err.name, 'ResponseError')
    assert.equal(err.status_code, 404)
    assert.match(err.error, /no-such-model.*not found/)
    return true
  })
  // Streamed, the error comes as the stream's last line, which the package throws.
  const stream = await ollama.pull({ model: missing, insecure: true, stream: true })
  const statuses = []
  await assert.rejects(
    (async () => {
      for await (const part of stream) statuses.push(part.status)
    })(),
    /no-such-model.*not found/,
  )
  assert.deepEqual(statuses, ['pulling manifest'])
})

test('an unknown model is a 404 ResponseError', async () => {
  await assert.rejects(ollama.chat({ model: 'no-such-model', messages: [{ role: 'user', content: 'hi' }] }), (err) => {
    assert.equal(err.status_code, 404)
    assert.match(err.error, /model 'no-such-model' not found/)
    return true
  })
})

test('abort() stops a stream, and the server goes on serving', async () => {
  const stream = await ollama.generate({ model: MODEL, prompt: 'Tell a very long story.', stream: true,
    options: { num_predict: 2000 } })
  const seen = []
  await assert.rejects(
    (async () => {
      for await (const part of stream) {
        seen.push(part.response)
        if (seen.length === 3) stream.abort()
      }
    })(),
    { name: 'AbortError' },
  )
  assert.ok(seen.length >= 3) // parts already read off the socket may still come before the abort lands
  // The client-wide abort() ends every stream the client has open.
  const chat = await ollama.chat({ model: MODEL, messages: [{ role: 'user', content: 'Tell a very long story.' }],
    stream: true, options: { num_predict: 2000 } })
  const parts = chat[Symbol.asyncIterator]()
  assert.equal((await parts.next()).done, false)
  ollama.abort()
  await assert.rejects(
    (async () => {
      while (!(await parts.next()).done) { /* parts read before the abort */ }
    })(),
    { name: 'AbortError' },
  )
  const after = await ollama.generate({ model: MODEL, prompt: 'What is the capital of France?', options: GREEDY })
  assert.ok(after.response.trim().length > 0)
  assert.equal(after.done, true)
})
