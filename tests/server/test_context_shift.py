"""Context shift over HTTP on the bundled SmolLM2 (real llama.cpp, a runner process, a 128-token context):
a counting reply outgrows the context and keeps counting; ``shift: false`` ends at the context with
done_reason "length" (Ollama's and the OpenAI routes alike); the slot then answers as a fresh server does."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from corral.config import Settings
from corral.models.recipes import store_gguf
from corral.models.store import Store
from corral.runtime.scheduler import Scheduler
from corral.server.app import create_app

NUM_CTX = 128
COUNT = "1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,"
# num_ctx as an option too: a server's num_ctx is what llama.cpp pads it to (256), a request's is exact
OPTIONS = {"num_ctx": NUM_CTX, "temperature": 0, "repeat_penalty": 1.0, "num_predict": 300}


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory, smollm2: Path) -> Path:
    home = tmp_path_factory.mktemp("shift-home")
    store_gguf(Store(home / "models"), "smol:latest", smollm2)
    return home


@asynccontextmanager
async def server(home: Path) -> AsyncIterator[httpx.AsyncClient]:
    settings = Settings(home=home, models=home / "models", num_ctx=NUM_CTX, num_parallel=1, backend="cpu")
    scheduler = Scheduler(settings)
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=create_app(settings, scheduler)),
            base_url="http://127.0.0.1:11434",
            timeout=600,
        ) as client:
            yield client
    finally:
        await scheduler.close()


async def count(client: httpx.AsyncClient, **body: Any) -> dict[str, Any]:
    response = await client.post(
        "/api/generate", json={"model": "smol", "prompt": COUNT, "raw": True, "stream": False, **body}
    )
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def counted(text: str) -> list[int]:
    """The whole numbers the reply wrote (the last one may be cut off by num_predict)."""
    return [int(n) for n in re.findall(r"\d+", text)][:-1]


@pytest.mark.slow
@pytest.mark.anyio
async def test_a_reply_longer_than_the_context_shifts_and_keeps_counting(models: Path) -> None:
    async with server(models) as client:
        done = await count(client, options=OPTIONS)
        assert done["done_reason"] == "length" and done["eval_count"] == 300
        assert done["eval_count"] > NUM_CTX - done["prompt_eval_count"]
        numbers = counted(done["response"])
        assert numbers == list(range(13, 13 + len(numbers)))  # still counting after each shift
        assert len(numbers) > 60  # several contexts' worth

        ended = await count(client, options=OPTIONS, shift=False)
        assert ended["done_reason"] == "length"
        assert 0 < ended["eval_count"] <= NUM_CTX - ended["prompt_eval_count"]
        assert numbers[: len(counted(ended["response"]))] == counted(ended["response"])

        short = {**OPTIONS, "num_predict": 24}
        again = await count(client, options=short)
        assert again["prompt_eval_cached_count"] > 0  # the one slot's cache survived the shift, and is true
    async with server(models) as fresh:
        first = await count(fresh, options=short)
    assert again["response"] == first["response"] and first["prompt_eval_cached_count"] == 0


@pytest.mark.slow
@pytest.mark.anyio
async def test_the_openai_routes_shift_unless_told_not_to(models: Path) -> None:
    body = {"model": "smol", "prompt": COUNT, "max_tokens": 300, "temperature": 0, "options": {"num_ctx": NUM_CTX}}
    async with server(models) as client:
        shifted = (await client.post("/v1/completions", json=body)).json()
        ended = (await client.post("/v1/completions", json={**body, "shift": False})).json()
        chat = (
            await client.post(
                "/api/chat",
                json={
                    "model": "smol",
                    "messages": [
                        {"role": "system", "content": "You count."},
                        {"role": "user", "content": "Count from 1 to 500, separated by commas."},
                    ],
                    "options": {**OPTIONS, "num_keep": 0},
                    "stream": False,
                },
            )
        ).json()
    assert shifted["choices"][0]["finish_reason"] == "length" and shifted["usage"]["completion_tokens"] == 300
    assert ended["choices"][0]["finish_reason"] == "length"
    assert ended["usage"]["completion_tokens"] <= NUM_CTX - ended["usage"]["prompt_tokens"]
    assert chat["done_reason"] in ("stop", "length") and chat["eval_count"] > NUM_CTX - chat["prompt_eval_count"]
    assert "error" not in chat and chat["message"]["content"].strip()


@pytest.mark.anyio
async def test_truncate_true_cuts_a_prompt_longer_than_the_context(tmp_path: Path, tiny_gguf: Path) -> None:
    """Ollama's ``truncate``, asked for: the start a shift keeps and the latest tokens; unasked, a 400."""
    store_gguf(Store(tmp_path / "models"), "tiny:latest", tiny_gguf)
    body = {"model": "tiny", "prompt": "word " * 200, "stream": False, "options": {"num_ctx": 64, "num_predict": 4}}
    async with server(tmp_path) as client:
        cut = await client.post("/api/generate", json={**body, "truncate": True})
        refused = await client.post("/api/generate", json=body)
    assert cut.status_code == 200 and cut.json()["prompt_eval_count"] == 64 - (64 - 4 - 1) // 2  # BOS + num_keep 4
    assert refused.status_code == 400 and "more than the context of 64" in refused.json()["error"]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
