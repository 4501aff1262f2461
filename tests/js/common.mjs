// What the client tests share: the server under test (set by tests/server/test_js_clients.py), the
// bundled model, and the forecast tool whose arguments every forced call must validate against.
import assert from 'node:assert/strict'

export const SERVER = process.env.CORRAL_URL
if (!SERVER) {
  throw new Error('CORRAL_URL is not set: run these through tests/server/test_js_clients.py')
}
export const MODEL = 'smollm2:135m'
export const GREEDY = { temperature: 0, num_predict: 24 }

export const FORECAST_PARAMETERS = {
  type: 'object',
  properties: {
    days: { type: 'integer' },
    unit: { type: 'string', enum: ['celsius', 'fahrenheit'] },
  },
  required: ['days', 'unit'],
}
export const FORECAST = {
  type: 'function',
  function: {
    name: 'get_forecast',
    description: 'The weather forecast for the coming days',
    parameters: FORECAST_PARAMETERS,
  },
}

/** Arguments of a get_forecast call: exactly the schema's keys, an integer and one of the enum. */
export function assertForecastArguments(args) {
  assert.deepEqual(Object.keys(args).sort(), ['days', 'unit'])
  assert.ok(Number.isInteger(args.days), `days is not an integer: ${JSON.stringify(args)}`)
  assert.ok(['celsius', 'fahrenheit'].includes(args.unit), `unit is not in the enum: ${JSON.stringify(args)}`)
}

// A small record with bounded strings, so a grammar-constrained reply ends well inside its token budget.
export const CITY_SCHEMA = {
  type: 'object',
  properties: {
    name: { type: 'string', maxLength: 20 },
    country: { type: 'string', maxLength: 20 },
    population_millions: { type: 'integer' },
  },
  required: ['name', 'country', 'population_millions'],
}

export function assertCity(city) {
  assert.deepEqual(Object.keys(city).sort(), ['country', 'name', 'population_millions'])
  assert.equal(typeof city.name, 'string')
  assert.equal(typeof city.country, 'string')
  assert.ok(city.name.length <= 20 && city.country.length <= 20)
  assert.ok(Number.isInteger(city.population_millions))
}
