"""Malformed requests are a one-line 400 on every route of both APIs, never a 500, and unknown fields
or Ollama options are ignored as Ollama ignores them (fake backend, in-process ASGI)."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from corral.config import Settings
from corral.server.app import create_app
from fakes import FakeBackend, fake_scheduler, write_fake_model

# A body that routes would otherwise accept, to carry one bad value at a time.
FIELDS = {"model": "fake", "prompt": "hi", "messages": [{"role": "user", "content": "hi"}], "input": "hi"}

BAD_BODIES: dict[str, tuple[bytes, str]] = {
    "not UTF-8": (b'{"model": "fake\xff\xfe"}', "application/json"),
    "UTF-16": ('{"model": "fake"}'.encode("utf-16"), "application/json"),
    "not JSON": (b"{nope", "application/json"),
    "a JSON array": (b"[1, 2]", "application/json"),
    "a JSON string": (b'"fake"', "application/json"),
    "nested too deeply": (b"[" * 100_000 + b"]" * 100_000, "application/json"),
    "a 5000-digit number": (b'{"model": "fake", "keep_alive": ' + b"9" * 5000 + b"}", "application/json"),
    "NaN": (b'{"model": "fake", "prompt": "hi", "options": {"temperature": NaN}}', "application/json"),
    "Infinity": (b'{"model": "fake", "prompt": "hi", "temperature": Infinity}', "application/json"),
    "huge float option": (json.dumps({**FIELDS, "options": {"top_p": 1e300}}).encode(), "application/json"),
    "huge int option": (json.dumps({**FIELDS, "options": {"num_batch": 10**30}}).encode(), "application/json"),
    "NUL in the model name": (json.dumps({**FIELDS, "model": "fa\u0000ke"}).encode(), "application/json"),
    "a form": (b"model=fake&prompt=hi", "application/x-www-form-urlencoded"),
    "plain text": (b"hello", "text/plain"),
    "wrong shape": (
        b'{"model": ["fake"], "messages": "hi", "input": {"a": 1}, "prompt": {"x": 1}}',
        "application/json",
    ),
    "wrong option type": (json.dumps({**FIELDS, "options": {"num_ctx": "big"}}).encode(), "application/json"),
}
OPTION_CASES = ("NaN", "Infinity", "huge float option", "huge int option", "wrong option type")
TAKES_OPTIONS = (
    "/api/generate",
    "/api/chat",
    "/api/embed",
    "/api/embeddings",
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/responses",
)


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    settings = Settings(home=tmp_path, models=tmp_path / "models", isolate_runners=False)
    write_fake_model(settings.models_dir, "fake:latest")
    scheduler = fake_scheduler(settings, FakeBackend())
    app = create_app(settings, scheduler)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:11434") as c:
        yield c
    await scheduler.close()


async def _routes_with_bodies(client: httpx.AsyncClient) -> list[tuple[str, str]]:
    spec = (await client.get("/openapi.json")).json()
    routes = [
        (method.upper(), path.replace("{digest}", "sha256:" + "0" * 64))
        for path, ops in spec["paths"].items()
        for method, operation in ops.items()
        if method in ("post", "delete", "put", "patch") and "requestBody" in operation
    ]
    assert len(routes) >= 14  # every body-taking route of both APIs, as /openapi.json lists them
    return routes


@pytest.mark.anyio
@pytest.mark.parametrize("case", list(BAD_BODIES))
async def test_a_malformed_body_is_a_one_line_400_on_every_route(client: httpx.AsyncClient, case: str) -> None:
    body, content_type = BAD_BODIES[case]
    for method, path in await _routes_with_bodies(client):
        if case in OPTION_CASES and path not in TAKES_OPTIONS:
            continue  # otherwise a valid body for a route with no options (pull would go to the network)
        r = await client.request(method, path, content=body, headers={"content-type": content_type})
        where = f"{method} {path} with {case}"
        if path.startswith("/api/blobs/"):  # takes raw bytes: any body is a blob, refused by its digest
            assert r.status_code == 400 and "digest" in r.json()["error"], where
            continue
        assert r.status_code == 400, f"{where}: {r.status_code} {r.text[:200]}"
        error = r.json()["error"]
        message = error["message"] if isinstance(error, dict) else error
        assert message and "\n" not in message and "Traceback" not in message, where


@pytest.mark.anyio
async def test_invalid_utf8_names_the_problem(client: httpx.AsyncClient) -> None:
    r = await client.post("/api/chat", content=b'{"model": "\xc3\x28"}')
    assert r.status_code == 400
    assert r.json() == {"error": "the request body is not valid UTF-8 (byte 11)"}
    r = await client.post("/v1/chat/completions", content=b'{"model": "\xc3\x28"}')
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    assert "not valid UTF-8" in r.json()["error"]["message"]


@pytest.mark.anyio
async def test_unknown_options_are_ignored_with_one_warning(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    retired = {"mirostat": 2, "mirostat_eta": 0.1, "mirostat_tau": 5.0, "tfs_z": 1.0, "penalize_newline": True,
               "low_vram": False, "vocab_only": False, "numa": False, "made_up": [1]}  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="corral"):
        r = await client.post(
            "/api/generate",
            json={"model": "fake", "prompt": "hi", "stream": False, "options": {**retired, "num_predict": 3}},
        )
    assert r.status_code == 200 and r.json()["response"] == "hel" and r.json()["done_reason"] == "length"
    warnings = [rec.getMessage() for rec in caplog.records if rec.levelno == logging.WARNING]
    assert warnings == ["ignoring unknown options: " + ", ".join(sorted(retired))]


@pytest.mark.anyio
async def test_known_options_of_the_wrong_type_are_still_400(client: httpx.AsyncClient) -> None:
    for route, body in (
        ("/api/generate", {"prompt": "hi"}),
        ("/api/chat", {"messages": FIELDS["messages"]}),
        ("/api/embed", {"input": "hi"}),
    ):
        r = await client.post(route, json={"model": "fake", **body, "options": {"temperature": "warm", "mirostat": 1}})
        assert r.status_code == 400 and r.json() == {
            "error": "invalid option 'temperature': Input should be a valid number, unable to parse string as a number"
        }


@pytest.mark.anyio
async def test_unknown_top_level_fields_are_ignored_on_every_route(client: httpx.AsyncClient) -> None:
    extra = {"no_such_field": {"x": 1}, "format_version": 7}
    generate = await client.post("/api/generate", json={"model": "fake", "prompt": "hi", "stream": False, **extra})
    chat = await client.post(
        "/api/chat", json={"model": "fake", "messages": FIELDS["messages"], "stream": False, **extra}
    )
    embed = await client.post("/api/embed", json={"model": "fake", "input": "hi", **extra})
    show = await client.post("/api/show", json={"model": "fake", **extra})
    openai = await client.post("/v1/chat/completions", json={"model": "fake", "messages": FIELDS["messages"], **extra})
    completion = await client.post("/v1/completions", json={"model": "fake", "prompt": "hi", **extra})
    assert generate.json()["response"] == chat.json()["message"]["content"] == "hello from fake"
    assert len(embed.json()["embeddings"]) == 1 and show.status_code == 200
    assert (
        openai.json()["choices"][0]["message"]["content"]
        == completion.json()["choices"][0]["text"]
        == "hello from fake"
    )


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
