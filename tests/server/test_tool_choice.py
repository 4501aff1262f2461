"""``tool_choice`` enforced on /v1/chat/completions and /api/chat: "required" and a named function make
every reply a call whose arguments validate against the tool's schema, even from random weights (the
tiny GGUF, in-process) and from the bundled SmolLM2 (50 of 50, on a real `corral serve`)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import jsonschema
import openai
import pytest

from corral.models.names import ModelName
from corral.models.recipes import store_gguf
from corral.models.store import MEDIA_TEMPLATE, Store
from serverproc import tiny_app_client

FORECAST = {
    "type": "function",
    "function": {
        "name": "get_forecast",
        "description": "The weather forecast for the coming days",
        "parameters": {
            "type": "object",
            "properties": {"days": {"type": "integer"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
            "required": ["days", "unit"],
        },
    },
}
ALARM = {
    "type": "function",
    "function": {
        "name": "set_alarm",
        "parameters": {
            "type": "object",
            "properties": {"hour": {"type": "integer"}, "loud": {"type": "boolean"}},
            "required": ["hour", "loud"],
        },
    },
}
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in (FORECAST, ALARM)}
# A Go template whose tool calls are tagged, as Qwen's: a forced call is wrapped in the tags.
TAGGED = (
    "{{ range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}<|im_start|>assistant\n"
    "{{ if .ToolCalls }}<tool_call>\n{{ range .ToolCalls }}{{ .Function }}{{ end }}</tool_call>{{ end }}"
)


def assert_valid_calls(calls: list[dict], allowed: set[str]) -> None:
    assert calls, "no tool call"
    for call in calls:
        name = call["function"]["name"]
        assert name in allowed
        arguments = call["function"]["arguments"]
        jsonschema.validate(json.loads(arguments) if isinstance(arguments, str) else arguments, SCHEMAS[name])


@pytest.fixture
async def client(tmp_path: Path, tiny_gguf: Path) -> AsyncIterator[httpx.AsyncClient]:
    store = Store(tmp_path / "models")
    manifest = store_gguf(store, "tagged:latest", tiny_gguf)
    manifest.layers.append(store.write_blob_bytes(TAGGED.encode(), MEDIA_TEMPLATE))
    store.write_manifest(ModelName.parse("tagged:latest"), manifest)
    async with tiny_app_client(tmp_path, tiny_gguf, num_ctx=1024) as c:
        yield c


def _chat(model: str, choice: object, seed: int, **extra: object) -> dict:
    return {
        "model": model, "messages": [{"role": "user", "content": f"question {seed}"}], "tools": [FORECAST, ALARM],
        "tool_choice": choice, "max_tokens": 200, "seed": seed, "temperature": 1.0, **extra,
    }  # fmt: skip


@pytest.mark.anyio
@pytest.mark.parametrize("model", ["tiny", "tagged"])
async def test_random_weights_still_make_valid_calls_when_required(client: httpx.AsyncClient, model: str) -> None:
    for seed in range(6):
        body = (await client.post("/v1/chat/completions", json=_chat(model, "required", seed))).json()
        choice = body["choices"][0]
        assert choice["finish_reason"] == "tool_calls", body
        assert choice["message"]["content"] is None
        assert_valid_calls(choice["message"]["tool_calls"], {"get_forecast", "set_alarm"})


@pytest.mark.anyio
async def test_a_named_function_is_the_one_called(client: httpx.AsyncClient) -> None:
    named = {"type": "function", "function": {"name": "set_alarm"}}
    for seed in range(4):
        reply = await client.post("/v1/chat/completions", json=_chat("tiny", named, seed))
        calls = reply.json()["choices"][0]["message"]["tool_calls"]
        assert_valid_calls(calls, {"set_alarm"})
    streamed = await client.post("/v1/chat/completions", json=_chat("tagged", named, 9, stream=True))
    events = [json.loads(line[6:]) for line in streamed.text.splitlines() if line.startswith("data: {")]
    deltas = [d for e in events for d in e["choices"][0]["delta"].get("tool_calls", [])] if events else []
    assert_valid_calls(deltas, {"set_alarm"})
    assert events[-1]["choices"][0]["finish_reason"] == "tool_calls"


@pytest.mark.anyio
async def test_api_chat_takes_the_same_field(client: httpx.AsyncClient) -> None:
    body = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "tools": [FORECAST], "stream": False,
            "tool_choice": "required", "options": {"num_predict": 200, "seed": 3, "temperature": 1.0}}  # fmt: skip
    message = (await client.post("/api/chat", json=body)).json()["message"]
    assert_valid_calls(message["tool_calls"], {"get_forecast"})
    hidden = (await client.post("/api/chat", json={**body, "tool_choice": "none", "_debug_render_only": True})).json()
    assert "get_forecast" not in hidden["_debug_info"]["rendered_template"]


@pytest.mark.anyio
async def test_bad_choices_are_400(client: httpx.AsyncClient) -> None:
    cases = [("nope", "invalid tool_choice"), ({"type": "function", "function": {"name": "launch"}}, "'launch'")]
    for choice, words in cases:
        r = await client.post("/v1/chat/completions", json=_chat("tiny", choice, 1))
        assert r.status_code == 400 and words in r.json()["error"]["message"]
    no_tools = await client.post("/v1/chat/completions", json={**_chat("tiny", "required", 1), "tools": []})
    assert no_tools.status_code == 400 and "at least one tool" in no_tools.json()["error"]["message"]
    with_format = await client.post(
        "/api/chat",
        json={
            "model": "tiny",
            "messages": [{"role": "user", "content": "x"}],
            "tools": [FORECAST],
            "tool_choice": "required",
            "format": "json",
        },
    )
    assert with_format.status_code == 400 and "format" in with_format.json()["error"]


PROMPTS = [
    "What's the weather going to be like this week?",
    "Will it rain tomorrow in Paris?",
    "Give me the forecast.",
    "I need to know if I should bring a jacket for the next 3 days.",
    "Forecast for Berlin in fahrenheit please.",
    "Is it sunny next weekend?",
    "How cold will it get over the next ten days?",
    "Tell me a joke.",
    "What is 2 + 2?",
    "Plan my trip: what weather should I expect?",
]


@pytest.mark.slow
@pytest.mark.timeout(1800)  # 50 generations of ~25 tokens: seconds on an idle machine, minutes on a busy one
def test_smollm2_makes_50_valid_calls_of_50_when_required(corral_server: str) -> None:
    client = openai.OpenAI(base_url=f"{corral_server}/v1", api_key="corral", timeout=300)
    valid = 0
    for i in range(50):
        completion = client.chat.completions.create(
            model="smollm2:135m",
            messages=[{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}],
            tools=[FORECAST],  # type: ignore[list-item]
            tool_choice="required",
            max_tokens=64,  # room for a 16-digit integer, the most the grammar allows
            seed=i,
            temperature=0.9,
        )
        calls = completion.choices[0].message.tool_calls or []
        assert completion.choices[0].finish_reason == "tool_calls", completion
        assert_valid_calls([c.model_dump() for c in calls], {"get_forecast"})
        valid += 1
    assert valid == 50


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
