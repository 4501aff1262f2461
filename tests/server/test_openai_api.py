"""OpenAI's /v1 API: wire shapes over raw HTTP (in-process ASGI) and through the official openai client.

One Corral app serves a tiny random-weight llama (the ``tiny_gguf`` fixture) from a temporary store.
Raw requests go in-process through ``httpx.ASGITransport``; the ``openai`` package talks to the same
app over a real uvicorn server on a free loopback port. Both run on one background event loop, so
they share one scheduler and one loaded model. After each test no ticket may still be held.

The other engines' test modules run these same tests on their engine: ``serve_with`` serves their
backend, ``suite_for_another_engine`` hands them the tests.
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
import re
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import openai
import pytest
import uvicorn
from fastapi import FastAPI

from corral.config import Settings
from corral.errors import RunnerCrashed, ServerBusy
from corral.hookspecs import Backend, Device, LoadSpec, Probe, Runner, hookimpl
from corral.models.recipes import store_gguf
from corral.models.store import Store
from corral.plugins import Plugins
from corral.runtime.scheduler import Scheduler
from corral.runtime.worker import Event
from corral.server.app import create_app

USER = [{"role": "user", "content": "hello world"}]
CHATML_PROMPT = "<|im_start|>user\nhello world<|im_end|>\n<|im_start|>assistant\n"


class LoopThread:
    """An asyncio loop on its own thread: the server lives there, and tests submit coroutines to it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="test-loop", daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, Any], timeout: float = 120) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@dataclass
class Corral:
    app: FastAPI
    scheduler: Scheduler
    settings: Settings
    loop: LoopThread
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """One request through the in-process ASGI transport (the body is read in full)."""

        async def go() -> httpx.Response:
            transport = httpx.ASGITransport(app=self.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:11434", timeout=120) as client:
                response = await client.request(method, path, **kwargs)
                await response.aread()
                return response

        return self.loop.run(go())

    def post(self, path: str, body: Any) -> httpx.Response:
        return self.request("POST", path, json=body)

    def chat(self, **body: Any) -> dict[str, Any]:
        response = self.post("/v1/chat/completions", {"model": "tiny", "messages": USER, **body})
        assert response.status_code == 200, response.text
        return response.json()

    def chat_text(self, **body: Any) -> str:
        return self.chat(**body)["choices"][0]["message"]["content"]

    def sdk(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key="x", max_retries=0, timeout=120)

    def held(self) -> int:
        return sum(m.inflight for m in self.scheduler.loaded.values()) + self.scheduler._queued


@contextmanager
def serve(home: Path, tiny_gguf: Path, plugins: Plugins | None = None, **settings: Any) -> Iterator[Corral]:
    """The app over a store holding the tiny model (as tiny:latest and someone/tiny:v1), also served by
    uvicorn on a free loopback port; ``settings`` override the Settings fields (backend, num_parallel...)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = Settings(home=home, models=home / "models", host=f"127.0.0.1:{port}", **settings)
    store = Store(config.models_dir)
    store_gguf(store, "tiny:latest", tiny_gguf)
    store_gguf(store, "someone/tiny:v1", tiny_gguf)
    scheduler = Scheduler(config, plugins=plugins, store=store)
    app = create_app(config, scheduler)
    loop = LoopThread()
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    serving = asyncio.run_coroutine_threadsafe(server.serve(sockets=[sock]), loop.loop)
    deadline = time.monotonic() + 30
    while not server.started:
        if serving.done():
            serving.result()  # raises what stopped the server
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield Corral(app, scheduler, config, loop, port)
    finally:
        server.should_exit = True
        serving.result(60)  # the lifespan's shutdown closes the scheduler
        loop.stop()
        sock.close()


@pytest.fixture(scope="module")
def corral(tmp_path_factory: pytest.TempPathFactory, tiny_gguf: Path) -> Iterator[Corral]:
    with serve(tmp_path_factory.mktemp("corral-openai"), tiny_gguf, backend="cpu", num_parallel=2) as env:
        yield env


@dataclass
class EngineBackend:
    """A backend that loads every model with ``load`` (another engine), probing as one CPU device."""

    name: str
    load: Callable[[LoadSpec], Runner]
    priority: int = 1
    description: str = "another engine serving the API tests"

    def probe(self) -> Probe:
        device = Device(backend=self.name, index=0, name="cpu", kind="cpu", total_memory=8 << 30, free_memory=8 << 30)
        return Probe(available=True, devices=(device,))

    @hookimpl
    def corral_register_backends(self, register: Callable[[Backend], None]) -> None:
        register(self)


def serve_with(backend: EngineBackend, home: Path, tiny_gguf: Path) -> AbstractContextManager[Corral]:
    """``serve`` with ``backend`` as the only backend, loaded in this process (isolated runners would
    start processes that do not have the test's plugin)."""
    plugins = Plugins(load_entry_points=False, modules=[backend])  # type: ignore[list-item]
    return serve(home, tiny_gguf, plugins, backend=backend.name, num_parallel=2, isolate_runners=False)


def suite_for_another_engine(excluding: frozenset[str] = frozenset()) -> dict[str, Any]:
    """This module's tests (and its autouse leak check) under names an engine's test module can
    take into its globals, so they run against that module's own ``corral`` fixture."""
    tests = {f"test_api_{name[len('test_'):]}": value for name, value in globals().items()
             if name.startswith("test_") and name not in excluding}
    return {"no_leaks": no_leaks, **tests}


@pytest.fixture(autouse=True)
def no_leaks(request: pytest.FixtureRequest) -> Iterator[None]:
    """Every request gives its model back, however it ended."""
    yield
    if "corral" not in request.fixturenames:
        return
    env: Corral = request.getfixturevalue("corral")
    deadline = time.monotonic() + 5
    while env.held() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert env.held() == 0, "a request left its model held (ticket not released or job still queued)"


def sse(response: httpx.Response) -> list[Any]:
    """The ``data:`` payloads of an event stream: parsed JSON, or the string "[DONE]"."""
    assert response.headers["content-type"].startswith("text/event-stream")
    events: list[Any] = []
    for block in response.text.split("\n\n"):
        if not block.strip():
            continue
        assert block.startswith("data: "), block
        data = block[len("data: ") :]
        events.append(data if data == "[DONE]" else json.loads(data))
    return events


def assert_openai_error(response: httpx.Response, status: int, kind: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    if kind is not None:
        assert error["type"] == kind
    return error


# ---- /v1/chat/completions -----------------------------------------------------------------------


def test_chat_completion_shape(corral: Corral) -> None:
    body = corral.chat(max_tokens=8, temperature=0)
    assert body["object"] == "chat.completion"
    assert body["id"].startswith("chatcmpl-") and len(body["id"]) > len("chatcmpl-")
    assert isinstance(body["created"], int) and abs(body["created"] - time.time()) < 120
    assert body["model"] == "tiny:latest"
    assert body["system_fingerprint"] == "fp_corral"
    [choice] = body["choices"]
    assert choice["index"] == 0
    assert choice["message"]["role"] == "assistant"
    assert isinstance(choice["message"]["content"], str) and choice["message"]["content"]
    assert choice["finish_reason"] == "length"
    usage = body["usage"]
    assert usage["completion_tokens"] == 8
    assert usage["prompt_tokens"] > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_chat_stream_matches_non_stream(corral: Corral) -> None:
    whole = corral.chat_text(max_tokens=16, temperature=0)
    response = corral.post(
        "/v1/chat/completions", {"model": "tiny", "messages": USER, "max_tokens": 16, "temperature": 0, "stream": True}
    )
    assert response.status_code == 200
    events = sse(response)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert len({c["id"] for c in chunks}) == 1 and chunks[0]["id"].startswith("chatcmpl-")
    assert all(c["model"] == "tiny:latest" and c["system_fingerprint"] == "fp_corral" for c in chunks)
    assert all("usage" not in c for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert all("role" not in c["choices"][0]["delta"] for c in chunks[1:])
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1])
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert text == whole


def test_chat_stream_include_usage(corral: Corral) -> None:
    response = corral.post(
        "/v1/chat/completions",
        {"model": "tiny", "messages": USER, "max_tokens": 6, "stream": True, "stream_options": {"include_usage": True}},
    )
    events = sse(response)
    assert events[-1] == "[DONE]"
    *chunks, usage_chunk = events[:-1]
    assert usage_chunk["choices"] == []
    assert usage_chunk["object"] == "chat.completion.chunk"
    usage = usage_chunk["usage"]
    assert usage["completion_tokens"] == 6
    assert usage["total_tokens"] == usage["prompt_tokens"] + 6
    assert all(c["usage"] is None for c in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"


def test_chat_content_parts_are_text(corral: Corral) -> None:
    as_string = corral.chat_text(messages=[{"role": "user", "content": "hello\nworld"}], max_tokens=10, temperature=0)
    parts = [{"type": "text", "text": "hello"}, {"type": "text", "text": "world"}]
    as_parts = corral.chat_text(messages=[{"role": "user", "content": parts}], max_tokens=10, temperature=0)
    assert as_parts == as_string


def test_chat_system_and_developer_roles(corral: Corral) -> None:
    system = corral.chat_text(
        messages=[{"role": "system", "content": "be brief"}, *USER], max_tokens=8, temperature=0
    )
    developer = corral.chat_text(
        messages=[{"role": "developer", "content": "be brief"}, *USER], max_tokens=8, temperature=0
    )
    assert developer == system
    bad = corral.post("/v1/chat/completions", {"model": "tiny", "messages": [{"role": "wizard", "content": "x"}]})
    assert_openai_error(bad, 400, "invalid_request_error")


def test_stop_sequences(corral: Corral) -> None:
    base = corral.chat_text(max_tokens=40, temperature=0)
    stop = base[6:9]
    cut = base.find(stop)
    body = corral.chat(max_tokens=40, temperature=0, stop=stop)
    assert body["choices"][0]["message"]["content"] == base[:cut]
    assert body["choices"][0]["finish_reason"] == "stop"
    listed = corral.chat(max_tokens=40, temperature=0, stop=["\u2603 never \u2603", stop])
    assert listed["choices"][0]["message"]["content"] == base[:cut]
    assert listed["choices"][0]["finish_reason"] == "stop"
    # the same through a stream
    events = sse(
        corral.post(
            "/v1/chat/completions",
            {"model": "tiny", "messages": USER, "max_tokens": 40, "temperature": 0, "stop": stop, "stream": True},
        )
    )
    chunks = events[:-1]
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks) == base[:cut]
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


def test_max_tokens_gives_length(corral: Corral) -> None:
    body = corral.chat(max_tokens=5, temperature=0)
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 5
    # max_completion_tokens is OpenAI's newer name, and wins over max_tokens
    body = corral.chat(max_tokens=50, max_completion_tokens=3, temperature=0)
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 3
    assert_openai_error(corral.post("/v1/chat/completions", {"model": "tiny", "messages": USER, "max_tokens": 0}), 400)


def test_seed_makes_sampling_reproducible(corral: Corral) -> None:
    first = corral.chat_text(max_tokens=24, temperature=0.9, seed=1234)
    again = corral.chat_text(max_tokens=24, temperature=0.9, seed=1234)
    assert again == first
    others = {corral.chat_text(max_tokens=24, temperature=0.9, seed=seed) for seed in (1, 2, 3)}
    assert len(others | {first}) > 1, "different seeds should sample differently"


def test_options_extension(corral: Corral) -> None:
    body = corral.chat(max_tokens=4, options={"num_ctx": 256, "top_k": 5})
    assert body["choices"][0]["finish_reason"] == "length"
    # Unknown and retired Ollama options are ignored, as Ollama does; a known one of the wrong type is not.
    body = {"model": "tiny", "messages": USER, "max_tokens": 2, "options": {"bogus": 1, "mirostat": 2}}
    unknown = corral.post("/v1/chat/completions", body)
    assert unknown.status_code == 200 and unknown.json()["usage"]["completion_tokens"] == 2
    wrong_type = corral.post("/v1/chat/completions", {"model": "tiny", "messages": USER, "options": {"top_k": "many"}})
    assert "top_k" in assert_openai_error(wrong_type, 400, "invalid_request_error")["message"]
    invalid = corral.post("/v1/chat/completions", {"model": "tiny", "messages": USER, "options": {"num_ctx": 0}})
    assert "num_ctx" in assert_openai_error(invalid, 400)["message"]
    negative = corral.post("/v1/chat/completions", {"model": "tiny", "messages": USER, "temperature": -1})
    assert "temperature" in assert_openai_error(negative, 400)["message"]


def test_num_ctx_option_applies_and_errors_before_the_stream(corral: Corral) -> None:
    long_messages = [{"role": "user", "content": "hello world " * 20}]
    for stream in (False, True):
        response = corral.post(
            "/v1/chat/completions",
            {"model": "tiny", "messages": long_messages, "options": {"num_ctx": 16}, "stream": stream},
        )
        error = assert_openai_error(response, 400, "invalid_request_error")
        assert "context" in error["message"]
        assert error["code"] == "context_length_exceeded"  # the code OpenAI's clients test for


def test_n_other_than_one_is_refused(corral: Corral) -> None:
    error = assert_openai_error(
        corral.post("/v1/chat/completions", {"model": "tiny", "messages": USER, "n": 2}), 400, "invalid_request_error"
    )
    assert error["param"] == "n"
    assert corral.chat(max_tokens=2, n=1)["choices"][0]["index"] == 0
    assert_openai_error(corral.post("/v1/completions", {"model": "tiny", "prompt": "hi", "n": 3}), 400)


def test_json_object_mode_returns_json(corral: Corral) -> None:
    # Greedy: a random-weight model sampling freely may never close a JSON string within max_tokens.
    content = corral.chat_text(max_tokens=200, temperature=0, response_format={"type": "json_object"})
    assert isinstance(json.loads(content), dict)


def test_json_schema_mode_follows_the_schema(corral: Corral) -> None:
    schema = {
        "type": "object",
        "properties": {"ok": {"type": "boolean"}, "colour": {"enum": ["red", "green"]}},
        "required": ["ok", "colour"],
    }
    fmt = {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}}
    for seed in (1, 2):
        value = json.loads(corral.chat_text(max_tokens=100, seed=seed, response_format=fmt))
        assert isinstance(value["ok"], bool)
        assert value["colour"] in ("red", "green")
    assert corral.chat(max_tokens=2, response_format={"type": "text"})["choices"]
    bad = corral.post("/v1/chat/completions", {"model": "tiny", "messages": USER, "response_format": {"type": "xml"}})
    assert assert_openai_error(bad, 400)["param"] == "response_format"


def test_bad_requests_are_400_in_openai_shape(corral: Corral) -> None:
    not_json = corral.request(
        "POST", "/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert_openai_error(not_json, 400, "invalid_request_error")
    assert assert_openai_error(corral.post("/v1/chat/completions", {"model": "tiny"}), 400)["param"] == "messages"
    hot = corral.post("/v1/chat/completions", {"model": "tiny", "messages": USER, "temperature": "hot"})
    assert assert_openai_error(hot, 400)["param"] == "temperature"  # the field at fault, as OpenAI names it
    roleless = corral.post("/v1/chat/completions", {"model": "tiny", "messages": [{"content": "hi"}]})
    assert assert_openai_error(roleless, 400)["param"] == "messages.0.role"
    assert_openai_error(corral.post("/v1/chat/completions", {"model": "tiny", "messages": []}), 400)
    assert_openai_error(corral.post("/v1/chat/completions", [1, 2]), 400)
    audio = [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]
    assert_openai_error(corral.post("/v1/chat/completions", {"model": "tiny", "messages": audio}), 400)
    remote_image = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://x/y.png"}}]}]
    assert_openai_error(corral.post("/v1/chat/completions", {"model": "tiny", "messages": remote_image}), 400)


def test_unknown_model_is_404(corral: Corral) -> None:
    for stream in (False, True):
        response = corral.post("/v1/chat/completions", {"model": "missing", "messages": USER, "stream": stream})
        error = assert_openai_error(response, 404, "invalid_request_error")
        assert "missing" in error["message"] and "not found" in error["message"]
        assert error["code"] == "model_not_found"
    assert_openai_error(corral.post("/v1/completions", {"model": "missing", "prompt": "x"}), 404)
    assert_openai_error(corral.post("/v1/embeddings", {"model": "missing", "input": "x"}), 404)


def test_busy_is_503(corral: Corral, monkeypatch: pytest.MonkeyPatch) -> None:
    async def busy(*args: Any, **kwargs: Any) -> Any:
        raise ServerBusy("server busy, please try again")

    monkeypatch.setattr(corral.scheduler, "acquire", busy)
    assert_openai_error(corral.post("/v1/chat/completions", {"model": "tiny", "messages": USER}), 503, "server_error")
    assert_openai_error(corral.post("/v1/embeddings", {"model": "tiny", "input": "x"}), 503, "server_error")


def test_fault_is_500(corral: Corral, monkeypatch: pytest.MonkeyPatch) -> None:
    async def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("something broke")

    monkeypatch.setattr(corral.scheduler, "acquire", broken)
    error = assert_openai_error(corral.post("/v1/chat/completions", {"model": "tiny", "messages": USER}), 500)
    assert error["type"] == "api_error"


def crashing_stream(*args: Any, **kwargs: Any) -> AsyncIterator[Event]:
    async def events() -> AsyncIterator[Event]:
        yield Event(text="partial")
        raise RunnerCrashed("the engine died")

    return events()


def test_error_mid_stream_is_a_final_event(corral: Corral, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(corral.scheduler, "stream", crashing_stream)
    for path, body in (
        ("/v1/chat/completions", {"model": "tiny", "messages": USER, "stream": True}),
        ("/v1/completions", {"model": "tiny", "prompt": "hello", "stream": True}),
    ):
        response = corral.post(path, body)
        assert response.status_code == 200
        events = sse(response)
        assert "[DONE]" not in events
        assert events[-1]["error"]["message"] == "the engine died"
        assert events[-1]["error"]["type"] == "api_error"
        assert any("partial" in json.dumps(e) for e in events[:-1])
    # without streaming the same failure is a plain 500
    assert_openai_error(corral.post("/v1/chat/completions", {"model": "tiny", "messages": USER}), 500)


# ---- /v1/completions ----------------------------------------------------------------------------


def test_completion_shape(corral: Corral) -> None:
    body = {"model": "tiny", "prompt": "hello world", "max_tokens": 7, "temperature": 0}
    response = corral.post("/v1/completions", body)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "text_completion"
    assert body["id"].startswith("cmpl-")
    assert body["model"] == "tiny:latest"
    assert body["system_fingerprint"] == "fp_corral"
    [choice] = body["choices"]
    assert set(choice) == {"text", "index", "logprobs", "finish_reason"}
    assert choice["index"] == 0 and choice["logprobs"] is None and choice["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 7
    assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] + 7


def test_completion_prompt_is_raw(corral: Corral) -> None:
    """The completions API applies no chat template: the ChatML text itself gives the chat's answer."""
    chat = corral.chat(max_tokens=12, temperature=0)
    raw = corral.post(
        "/v1/completions", {"model": "tiny", "prompt": CHATML_PROMPT, "max_tokens": 12, "temperature": 0}
    ).json()
    assert raw["choices"][0]["text"] == chat["choices"][0]["message"]["content"]
    assert raw["usage"]["prompt_tokens"] == chat["usage"]["prompt_tokens"]
    plain = corral.post("/v1/completions", {"model": "tiny", "prompt": "hello world", "max_tokens": 1}).json()
    assert plain["usage"]["prompt_tokens"] < chat["usage"]["prompt_tokens"]


def test_completion_stream(corral: Corral) -> None:
    body = {"model": "tiny", "prompt": "hello", "max_tokens": 9, "temperature": 0}
    whole = corral.post("/v1/completions", body).json()["choices"][0]["text"]
    events = sse(corral.post("/v1/completions", {**body, "stream": True, "stream_options": {"include_usage": True}}))
    assert events[-1] == "[DONE]"
    *chunks, usage_chunk = events[:-1]
    assert all(c["object"] == "text_completion" for c in events[:-1])
    assert "".join(c["choices"][0]["text"] for c in chunks) == whole
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1])
    assert usage_chunk["choices"] == [] and usage_chunk["usage"]["completion_tokens"] == 9


def test_completion_prompt_forms(corral: Corral) -> None:
    body = {"model": "tiny", "max_tokens": 6, "temperature": 0}
    text = corral.post("/v1/completions", {**body, "prompt": "hello"}).json()["choices"][0]["text"]
    assert corral.post("/v1/completions", {**body, "prompt": ["hello"]}).json()["choices"][0]["text"] == text
    tokens = corral.post("/v1/completions", {**body, "prompt": [260, 261, 262]})
    assert tokens.status_code == 200 and tokens.json()["usage"]["prompt_tokens"] == 3
    several = corral.post("/v1/completions", {**body, "prompt": ["a", "b"]})
    assert assert_openai_error(several, 400)["param"] == "prompt"
    assert_openai_error(corral.post("/v1/completions", {**body, "prompt": ""}), 400)
    assert_openai_error(corral.post("/v1/completions", {**body, "prompt": []}), 400)
    echoed = corral.post("/v1/completions", {**body, "prompt": "hello", "echo": True}).json()["choices"][0]["text"]
    assert echoed == "hello" + text
    suffixed = corral.post("/v1/completions", {**body, "prompt": "hello", "suffix": "world"})
    assert "does not support insert" in assert_openai_error(suffixed, 400)["message"]  # no FIM template


# ---- /v1/embeddings -----------------------------------------------------------------------------


def embed(corral: Corral, **body: Any) -> dict[str, Any]:
    response = corral.post("/v1/embeddings", {"model": "tiny", **body})
    assert response.status_code == 200, response.text
    return response.json()


def test_embeddings_float(corral: Corral) -> None:
    body = embed(corral, input=["hello world", "the cat"])
    assert body["object"] == "list" and body["model"] == "tiny:latest"
    assert [d["index"] for d in body["data"]] == [0, 1]
    assert all(d["object"] == "embedding" for d in body["data"])
    for item in body["data"]:
        assert len(item["embedding"]) == 64
        assert math.isclose(float(np.linalg.norm(item["embedding"])), 1.0, rel_tol=1e-6)
    assert body["data"][0]["embedding"] != body["data"][1]["embedding"]
    assert body["usage"]["prompt_tokens"] > 0 and body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"]
    single = embed(corral, input="hello world", encoding_format="float")
    assert np.allclose(single["data"][0]["embedding"], body["data"][0]["embedding"], atol=1e-5)


def test_embeddings_base64(corral: Corral) -> None:
    floats = embed(corral, input="hello world")["data"][0]["embedding"]
    encoded = embed(corral, input="hello world", encoding_format="base64")["data"][0]["embedding"]
    assert isinstance(encoded, str)
    decoded = np.frombuffer(base64.b64decode(encoded), dtype="<f4")
    assert decoded.shape == (64,)
    assert np.allclose(decoded, floats, atol=1e-6)


def test_embeddings_dimensions(corral: Corral) -> None:
    full = np.asarray(embed(corral, input="hello world")["data"][0]["embedding"])
    short = np.asarray(embed(corral, input="hello world", dimensions=8)["data"][0]["embedding"])
    assert short.shape == (8,)
    assert math.isclose(float(np.linalg.norm(short)), 1.0, rel_tol=1e-6)
    assert np.allclose(short, full[:8] / np.linalg.norm(full[:8]), atol=1e-6)


def test_embeddings_bad_input(corral: Corral) -> None:
    bad_format = corral.post("/v1/embeddings", {"model": "tiny", "input": "x", "encoding_format": "hex"})
    assert assert_openai_error(bad_format, 400)["param"] == "encoding_format"
    assert_openai_error(corral.post("/v1/embeddings", {"model": "tiny", "input": []}), 400)
    assert_openai_error(corral.post("/v1/embeddings", {"model": "tiny", "input": [1, 2, 3]}), 400)
    assert_openai_error(corral.post("/v1/embeddings", {"model": "tiny", "input": "x", "dimensions": 0}), 400)


def test_long_inputs_are_cut_to_the_context_unless_truncate_is_false(corral: Corral) -> None:
    long = "the cat sat on the mat " * 400  # far more tokens than the tiny model's context
    cut = corral.post("/api/embed", {"model": "tiny", "input": long})
    assert cut.status_code == 200, cut.text
    [loaded] = [m for m in corral.scheduler.ps() if m.recipe.name.display == "tiny:latest"]
    info = loaded.worker.runner.info
    limit = info.embed_tokens or info.n_ctx
    assert cut.json()["prompt_eval_count"] == limit  # as many tokens as fit, no more
    refused = corral.post("/api/embed", {"model": "tiny", "input": long, "truncate": False})
    assert refused.status_code == 400 and re.match(r"input is \d+ tokens, more than the", refused.json()["error"])
    openai_cut = corral.post("/v1/embeddings", {"model": "tiny", "input": long})
    assert openai_cut.status_code == 200 and openai_cut.json()["usage"]["prompt_tokens"] == limit
    # Equal but for the last bits: where the cut input's cells land in the KV pool the slots share
    # (other sequences' idle caches, dropped or not) changes the order of the attention sums.
    assert openai_cut.json()["data"][0]["embedding"] == pytest.approx(cut.json()["embeddings"][0], rel=1e-5, abs=1e-7)


# ---- /v1/models ---------------------------------------------------------------------------------


def test_models_list(corral: Corral) -> None:
    response = corral.request("GET", "/v1/models")
    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "list"
    by_id = {m["id"]: m for m in body["data"]}
    assert {"tiny:latest", "someone/tiny:v1"} <= set(by_id)
    assert by_id["tiny:latest"] == {
        "id": "tiny:latest",
        "object": "model",
        "created": by_id["tiny:latest"]["created"],
        "owned_by": "library",
    }
    assert by_id["someone/tiny:v1"]["owned_by"] == "someone"
    stored = corral.scheduler.store.get("tiny:latest")
    assert by_id["tiny:latest"]["created"] == int(stored.modified_at.timestamp())


def test_models_get_and_404(corral: Corral) -> None:
    for name in ("tiny:latest", "tiny"):
        response = corral.request("GET", f"/v1/models/{name}")
        assert response.status_code == 200, response.text
        assert response.json()["id"] == "tiny:latest" and response.json()["object"] == "model"
    namespaced = corral.request("GET", "/v1/models/someone/tiny:v1")
    assert namespaced.status_code == 200 and namespaced.json()["owned_by"] == "someone"
    for missing in ("missing:latest", "-not-a-name", "a/b/c/d/e"):
        error = assert_openai_error(corral.request("GET", f"/v1/models/{missing}"), 404)
        assert "not found" in error["message"]


# ---- the official openai client over a real server ------------------------------------------------


def test_sdk_chat(corral: Corral) -> None:
    client = corral.sdk()
    completion = client.chat.completions.create(model="tiny", messages=USER, max_tokens=8, temperature=0)
    assert completion.object == "chat.completion"
    assert completion.model == "tiny:latest"
    assert completion.choices[0].message.role == "assistant"
    assert completion.choices[0].message.content == corral.chat_text(max_tokens=8, temperature=0)
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage is not None and completion.usage.completion_tokens == 8


def test_sdk_chat_stream_with_usage(corral: Corral) -> None:
    client = corral.sdk()
    stream = client.chat.completions.create(
        model="tiny", messages=USER, max_tokens=8, temperature=0, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == corral.chat_text(max_tokens=8, temperature=0)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 8


def test_sdk_completions_and_embeddings(corral: Corral) -> None:
    client = corral.sdk()
    completion = client.completions.create(model="tiny", prompt="hello", max_tokens=5, temperature=0)
    assert completion.object == "text_completion"
    assert completion.choices[0].finish_reason == "length"
    streamed = "".join(
        c.choices[0].text
        for c in client.completions.create(model="tiny", prompt="hello", max_tokens=5, temperature=0, stream=True)
        if c.choices
    )
    assert streamed == completion.choices[0].text
    # the client asks for base64 by default and decodes it itself
    vectors = client.embeddings.create(model="tiny", input=["hello world", "the cat"])
    assert [d.index for d in vectors.data] == [0, 1]
    floats = embed(corral, input=["hello world"])["data"][0]["embedding"]
    assert np.allclose(vectors.data[0].embedding, floats, atol=1e-6)
    short = client.embeddings.create(model="tiny", input="hello world", dimensions=16, encoding_format="float")
    assert len(short.data[0].embedding) == 16


def test_sdk_models_and_errors(corral: Corral) -> None:
    client = corral.sdk()
    ids = {m.id for m in client.models.list()}
    assert {"tiny:latest", "someone/tiny:v1"} <= ids
    model = client.models.retrieve("tiny:latest")
    assert model.id == "tiny:latest" and model.owned_by == "library"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("missing:latest")
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="missing", messages=USER)
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="tiny", messages=USER, n=2)
    assert "n=2" in str(info.value)
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="tiny", messages=USER, extra_body={"options": {"num_ctx": "big"}})
    options = client.chat.completions.create(
        model="tiny", messages=USER, max_tokens=3, extra_body={"options": {"num_ctx": 128}}
    )
    assert options.usage is not None and options.usage.completion_tokens == 3


def test_sdk_json_mode(corral: Corral) -> None:
    client = corral.sdk()
    completion = client.chat.completions.create(
        model="tiny", messages=USER, max_tokens=200, temperature=0, response_format={"type": "json_object"}
    )
    assert isinstance(json.loads(completion.choices[0].message.content or ""), dict)


def test_sdk_error_mid_stream(corral: Corral, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(corral.scheduler, "stream", crashing_stream)
    stream = corral.sdk().chat.completions.create(model="tiny", messages=USER, stream=True)
    with pytest.raises(openai.APIError, match="the engine died"):
        for _chunk in stream:
            pass


def test_client_disconnect_closes_the_job(corral: Corral, monkeypatch: pytest.MonkeyPatch) -> None:
    closed = threading.Event()

    def endless(*args: Any, **kwargs: Any) -> AsyncIterator[Event]:
        async def events() -> AsyncIterator[Event]:
            try:
                while True:
                    yield Event(text="x")
                    await asyncio.sleep(0.01)
            finally:
                closed.set()

        return events()

    monkeypatch.setattr(corral.scheduler, "stream", endless)
    with httpx.Client(base_url=corral.url, timeout=30) as client:
        with client.stream(
            "POST", "/v1/chat/completions", json={"model": "tiny", "messages": USER, "stream": True}
        ) as r:
            assert r.status_code == 200
            lines = r.iter_lines()
            seen = [line for _, line in zip(range(6), lines, strict=False)]
            assert any("chat.completion.chunk" in line for line in seen)
    assert closed.wait(10), "the event iterator was not closed after the client left"
    deadline = time.monotonic() + 5
    while corral.held() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert corral.held() == 0


def test_client_disconnect_real_model(corral: Corral) -> None:
    body = {"model": "tiny", "messages": USER, "stream": True, "max_tokens": 400}
    with httpx.Client(base_url=corral.url, timeout=30) as client:
        with client.stream("POST", "/v1/chat/completions", json=body) as r:
            assert r.status_code == 200
            next(r.iter_lines())
    # the server goes on serving
    assert corral.sdk().chat.completions.create(model="tiny", messages=USER, max_tokens=2).choices


@pytest.mark.slow
def test_smollm2_knows_paris(corral: Corral) -> None:
    client = corral.sdk()
    completion = client.chat.completions.create(
        model="smollm2:135m",
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        temperature=0,
        max_tokens=48,
    )
    assert "paris" in (completion.choices[0].message.content or "").lower()
    assert completion.model == "smollm2:135m"
    stream = client.chat.completions.create(
        model="smollm2:135m",
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        temperature=0,
        max_tokens=48,
        stream=True,
    )
    streamed = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert streamed == completion.choices[0].message.content
