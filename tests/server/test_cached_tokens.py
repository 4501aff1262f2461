"""Prompt tokens read from the prefix cache are reported: ``prompt_eval_cached_count`` on Ollama's routes
(``prompt_eval_count`` counting the whole prompt, as Ollama), ``usage.prompt_tokens_details.cached_tokens``
on OpenAI's (a real llama.cpp runner over the tiny GGUF, in-process)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from serverproc import tiny_app_client

HISTORY = [{"role": "system", "content": "You answer in one short sentence about the weather. " * 4}]


@pytest.fixture
async def client(tmp_path: Path, tiny_gguf: Path) -> AsyncIterator[httpx.AsyncClient]:
    async with tiny_app_client(tmp_path, tiny_gguf, num_parallel=2, num_ctx=512) as c:
        yield c


@pytest.mark.anyio
async def test_ollama_reports_the_cached_part_of_the_prompt(client: httpx.AsyncClient) -> None:
    options = {"temperature": 0, "num_predict": 2}

    async def ask(question: str) -> dict:
        messages = [*HISTORY, {"role": "user", "content": question}]
        body = {"model": "tiny", "messages": messages, "stream": False, "options": options}
        return (await client.post("/api/chat", json=body)).json()

    first = await ask("Monday?")
    assert first["prompt_eval_cached_count"] == 0 and first["prompt_eval_count"] > 40
    second = await ask("Tuesday?")
    assert 40 < second["prompt_eval_cached_count"] < second["prompt_eval_count"]
    assert abs(second["prompt_eval_count"] - first["prompt_eval_count"]) <= 2  # the whole prompt, cached or not
    streamed = [
        line
        for line in (
            await client.post("/api/generate", json={"model": "tiny", "prompt": "x", "options": options})
        ).text.splitlines()
        if line
    ]
    assert '"prompt_eval_cached_count"' in streamed[-1]


@pytest.mark.anyio
async def test_openai_reports_cached_tokens(client: httpx.AsyncClient) -> None:
    body = {"model": "tiny", "max_tokens": 2, "temperature": 0}
    first = (
        await client.post(
            "/v1/chat/completions", json={**body, "messages": [*HISTORY, {"role": "user", "content": "Monday?"}]}
        )
    ).json()
    second = (
        await client.post(
            "/v1/chat/completions", json={**body, "messages": [*HISTORY, {"role": "user", "content": "Friday?"}]}
        )
    ).json()
    assert first["usage"]["prompt_tokens_details"] == {"cached_tokens": 0}
    cached = second["usage"]["prompt_tokens_details"]["cached_tokens"]
    assert 40 < cached < second["usage"]["prompt_tokens"]


@pytest.mark.anyio
async def test_one_slot_reuses_its_cache_for_a_repeated_prompt(tmp_path: Path, tiny_gguf: Path) -> None:
    """With num_parallel 1 the slot's own cache is the new request's start, not an idle cache to evict."""
    body = {
        "model": "tiny",
        "messages": [*HISTORY, {"role": "user", "content": "Monday?"}],
        "stream": False,
        "options": {"temperature": 0, "num_predict": 4},
    }
    async with tiny_app_client(tmp_path, tiny_gguf, num_parallel=1, num_ctx=512) as c:
        first = (await c.post("/api/chat", json=body)).json()
        second = (await c.post("/api/chat", json=body)).json()
    assert first["prompt_eval_cached_count"] == 0
    assert second["prompt_eval_cached_count"] == second["prompt_eval_count"] - 1  # all but the last prompt token
    assert second["message"] == first["message"]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
