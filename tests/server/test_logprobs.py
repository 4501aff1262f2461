"""Token logprobs on /api/generate, /api/chat (Ollama's shape), /v1/chat/completions and /v1/completions
(OpenAI's), streamed and not, from a real llama.cpp runner over the tiny GGUF; and the numpy sampler's
(the ONNX and MLX engines') from the same raw logits."""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from corral.engines.logprobs import token_logprobs
from corral.engines.sampling import Sampler
from corral.hookspecs import Sampling
from serverproc import tiny_app_client

GREEDY = {"temperature": 0, "num_predict": 12, "repeat_penalty": 1.0}  # so the raw argmax is what is chosen
MESSAGES = [{"role": "user", "content": "hello world"}]


@pytest.fixture
async def client(tmp_path: Path, tiny_gguf: Path) -> AsyncIterator[httpx.AsyncClient]:
    async with tiny_app_client(tmp_path, tiny_gguf, num_ctx=512) as c:
        yield c


def check_entries(entries: list[dict], top: int, text: str, greedy: bool = True) -> None:
    assert entries, "no logprobs"
    assert bytes(b for e in entries for b in e["bytes"]).decode("utf-8", "replace") == text
    for entry in entries:
        assert entry["logprob"] <= 0 and list(entry["token"].encode()) == entry["bytes"] or "\ufffd" in entry["token"]
        alternatives = entry["top_logprobs"]
        assert len(alternatives) == top
        assert [a["logprob"] for a in alternatives] == sorted((a["logprob"] for a in alternatives), reverse=True)
        if greedy and top:  # the chosen token is the likeliest under the raw distribution
            assert alternatives[0]["bytes"] == entry["bytes"] and math.isclose(
                alternatives[0]["logprob"], entry["logprob"]
            )


def assert_same(a: list[dict], b: list[dict]) -> None:
    """The same tokens with the same logprobs, up to the float noise of a prefix-cached re-run."""
    assert [e["bytes"] for e in a] == [e["bytes"] for e in b]
    assert all(math.isclose(x["logprob"], y["logprob"], abs_tol=1e-3) for x, y in zip(a, b, strict=True))


@pytest.mark.anyio
async def test_ollama_routes_report_logprobs_streamed_and_not(client: httpx.AsyncClient) -> None:
    for route, body, text_of in (
        ("/api/generate", {"prompt": "hello world"}, lambda r: r["response"]),
        ("/api/chat", {"messages": MESSAGES}, lambda r: r["message"]["content"]),
    ):
        request = {"model": "tiny", **body, "options": GREEDY, "logprobs": True, "top_logprobs": 3}
        whole = (await client.post(route, json={**request, "stream": False})).json()
        assert len(whole["logprobs"]) == whole["eval_count"]
        check_entries(whole["logprobs"], 3, text_of(whole))
        lines = [json.loads(line) for line in (await client.post(route, json=request)).text.splitlines() if line]
        streamed = [e for line in lines for e in line.get("logprobs") or []]
        assert_same(streamed, whole["logprobs"])
        plain = (
            await client.post(route, json={**request, "logprobs": None, "top_logprobs": None, "stream": False})
        ).json()
        assert "logprobs" not in plain and text_of(plain) == text_of(whole)
    bare = (
        await client.post(
            "/api/generate",
            json={"model": "tiny", "prompt": "hi", "options": GREEDY, "logprobs": True, "stream": False},
        )
    ).json()
    check_entries(bare["logprobs"], 0, bare["response"])
    too_many = await client.post(
        "/api/chat", json={"model": "tiny", "messages": MESSAGES, "logprobs": True, "top_logprobs": 21}
    )
    assert too_many.status_code == 400 and "top_logprobs" in too_many.json()["error"]


@pytest.mark.anyio
async def test_openai_chat_reports_logprobs_streamed_and_not(client: httpx.AsyncClient) -> None:
    request = {
        "model": "tiny",
        "messages": MESSAGES,
        "temperature": 0,
        "max_tokens": 10,
        "logprobs": True,
        "top_logprobs": 2,
        "options": {"repeat_penalty": 1.0},
    }
    whole = (await client.post("/v1/chat/completions", json=request)).json()["choices"][0]
    check_entries(whole["logprobs"]["content"], 2, whole["message"]["content"])
    events = [
        json.loads(line[6:])
        for line in (await client.post("/v1/chat/completions", json={**request, "stream": True})).text.splitlines()
        if line.startswith("data: {")
    ]
    streamed = [e for event in events for e in (event["choices"][0]["logprobs"] or {}).get("content", [])]
    assert_same(streamed, whole["logprobs"]["content"])
    plain = (
        await client.post("/v1/chat/completions", json={**request, "logprobs": False, "top_logprobs": None})
    ).json()
    assert plain["choices"][0]["logprobs"] is None


@pytest.mark.anyio
async def test_openai_completions_use_the_legacy_shape(client: httpx.AsyncClient) -> None:
    request = {"model": "tiny", "prompt": "hello", "temperature": 0, "max_tokens": 8, "logprobs": 2}
    choice = (await client.post("/v1/completions", json=request)).json()["choices"][0]
    lp = choice["logprobs"]
    assert "".join(lp["tokens"]) == choice["text"] and len(lp["token_logprobs"]) == len(lp["tokens"]) == 8
    for i, alts in enumerate(lp["top_logprobs"]):  # (parts of a character all read "\ufffd" and share one key)
        assert 1 <= len(alts) <= 2 and ("\ufffd" in alts or max(alts.values()) >= lp["token_logprobs"][i] - 1e-6)
    assert lp["text_offset"][0] == 0 and lp["text_offset"][-1] == len(choice["text"]) - len(lp["tokens"][-1])
    events = [
        json.loads(line[6:])
        for line in (await client.post("/v1/completions", json={**request, "stream": True})).text.splitlines()
        if line.startswith("data: {")
    ]
    tokens = [
        t for e in events if e["choices"] and e["choices"][0]["logprobs"] for t in e["choices"][0]["logprobs"]["tokens"]
    ]
    assert tokens == lp["tokens"]


def test_the_numpy_sampler_reports_logprobs_of_the_raw_logits() -> None:
    logits = np.array([2.0, 1.0, 0.5, -1.0, 3.0], dtype=np.float32)
    expected = logits - np.log(np.exp(logits).sum())
    sampler = Sampler(Sampling(temperature=0.7, seed=5, repeat_penalty=1.5, top_k=2, logprobs=3))
    assert not sampler.plain_greedy  # an engine must hand it the logits to get them
    token = sampler.pick(logits)
    lp = sampler.last_logprobs
    assert lp is not None and lp.token == token and math.isclose(lp.logprob, expected[token], rel_tol=1e-6)
    assert [t for t, _ in lp.top] == [4, 0, 1] and math.isclose(lp.top[0][1], expected[4], rel_tol=1e-6)
    assert token_logprobs(logits, 3, 0).top == ()
    assert Sampler(Sampling(temperature=0)).pick(logits) == 4 and Sampler(Sampling(temperature=0)).last_logprobs is None


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
