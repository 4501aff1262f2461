"""Anthropic's Messages API through the official ``anthropic`` package: a real llama.cpp runner over the
tiny GGUF in-process (wire shapes, streaming events, tools, errors), and SmolLM2 on a real `corral serve`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import anthropic
import httpx2
import jsonschema
import pytest

from corral.config import Settings
from corral.models.recipes import store_gguf
from corral.models.store import Store
from corral.runtime.scheduler import Scheduler
from corral.server.app import create_app

FORECAST = {
    "name": "get_forecast",
    "description": "The weather forecast",
    "input_schema": {"type": "object", "properties": {"days": {"type": "integer"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}}, "required": ["days", "unit"]},
}
HELLO = [{"role": "user", "content": "hello world"}]


@pytest.fixture
async def client(tmp_path: Path, tiny_gguf: Path) -> AsyncIterator[anthropic.AsyncAnthropic]:
    settings = Settings(home=tmp_path, models=tmp_path / "models", isolate_runners=False, num_ctx=1024, num_parallel=2, backend="cpu")
    store = Store(settings.models_dir)
    store_gguf(store, "tiny:latest", tiny_gguf)
    scheduler = Scheduler(settings, store=store)
    # The anthropic package speaks through httpx2 (httpx's successor), whose ASGI transport drives the app in-process.
    http = httpx2.AsyncClient(transport=httpx2.ASGITransport(app=create_app(settings, scheduler)), timeout=120)
    yield anthropic.AsyncAnthropic(base_url="http://127.0.0.1:11434", api_key="corral", http_client=http, max_retries=0)
    await http.aclose()
    await scheduler.close()


@pytest.mark.anyio
async def test_a_message_and_its_usage(client: anthropic.AsyncAnthropic) -> None:
    message = await client.messages.create(model="tiny", max_tokens=6, messages=HELLO, system="Be brief.", extra_body={"temperature": 0})  # type: ignore[arg-type]
    assert message.role == "assistant" and message.type == "message" and message.model == "tiny:latest"
    assert message.stop_reason == "max_tokens" and message.usage.output_tokens == 6
    assert [b.type for b in message.content] == ["text"] and message.content[0].text  # type: ignore[union-attr]
    again = await client.messages.create(model="tiny", max_tokens=6, messages=HELLO, system="Be brief.", extra_body={"temperature": 0})  # type: ignore[arg-type]
    assert again.content[0].text == message.content[0].text  # type: ignore[union-attr]
    assert again.usage.cache_read_input_tokens and again.usage.cache_read_input_tokens > 5  # the prefix cache served it
    count = await client.messages.count_tokens(model="tiny", messages=HELLO, system="Be brief.")  # type: ignore[arg-type]
    assert count.input_tokens == message.usage.input_tokens + (message.usage.cache_read_input_tokens or 0)


@pytest.mark.anyio
async def test_streaming_follows_anthropics_event_sequence(client: anthropic.AsyncAnthropic) -> None:
    whole = await client.messages.create(model="tiny", max_tokens=8, messages=HELLO, extra_body={"temperature": 0})  # type: ignore[arg-type]
    kinds: list[str] = []
    async with client.messages.stream(model="tiny", max_tokens=8, messages=HELLO, extra_body={"temperature": 0}) as stream:  # type: ignore[arg-type]
        async for event in stream:
            kinds.append(event.type)
        final = await stream.get_final_message()
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop" and "content_block_start" in kinds
    assert final.content[0].text == whole.content[0].text and final.stop_reason == "max_tokens"  # type: ignore[union-attr]


@pytest.mark.anyio
async def test_forced_tool_use_and_a_tool_result_turn(client: anthropic.AsyncAnthropic) -> None:
    message = await client.messages.create(
        model="tiny", max_tokens=200, messages=HELLO, tools=[FORECAST], tool_choice={"type": "any"}, extra_body={"temperature": 1.0},  # type: ignore[arg-type, list-item]
    )
    assert message.stop_reason == "tool_use"
    use = message.content[-1]
    assert use.type == "tool_use" and use.name == "get_forecast" and use.id.startswith("toolu_")
    jsonschema.validate(use.input, FORECAST["input_schema"])
    follow = await client.messages.create(
        model="tiny", max_tokens=4, tools=[FORECAST],  # type: ignore[list-item]
        messages=[*HELLO, {"role": "assistant", "content": [use.model_dump()]},  # type: ignore[list-item]
                  {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "sunny"}]}],
    )  # fmt: skip
    assert follow.stop_reason in ("max_tokens", "end_turn", "tool_use")


@pytest.mark.anyio
async def test_errors_use_anthropics_shape(client: anthropic.AsyncAnthropic) -> None:
    with pytest.raises(anthropic.NotFoundError) as missing:
        await client.messages.create(model="nope", max_tokens=4, messages=HELLO)  # type: ignore[arg-type]
    assert missing.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]
    with pytest.raises(anthropic.BadRequestError) as bad:
        await client.messages.create(model="tiny", max_tokens=4, messages=[{"role": "user", "content": [{"type": "video"}]}])  # type: ignore[list-item]
    assert bad.value.body == {"type": "error", "error": {"type": "invalid_request_error", "message": "messages[0].content[0]: unsupported block type 'video'"}}


@pytest.mark.slow
def test_the_anthropic_package_against_smollm2(corral_server: str) -> None:
    client = anthropic.Anthropic(base_url=corral_server, api_key="corral")
    message = client.messages.create(model="smollm2:135m", max_tokens=24, extra_body={"temperature": 0}, messages=[{"role": "user", "content": "What is the capital of France?"}])
    assert "Paris" in message.content[0].text  # type: ignore[union-attr]
    with client.messages.stream(model="smollm2:135m", max_tokens=24, extra_body={"temperature": 0}, messages=[{"role": "user", "content": "What is the capital of France?"}]) as stream:
        text = "".join(stream.text_stream)
    assert text == message.content[0].text  # type: ignore[union-attr]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
