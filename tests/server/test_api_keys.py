"""API keys: every route but /, /api/version and the probes needs one; the official clients send theirs."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import ollama
import openai
import pytest

from corral.client import Client
from corral.config import Settings
from corral.errors import CorralError
from corral.runtime.scheduler import Scheduler
from corral.server.app import create_app
from corral.server.service import check_exposure
from fakes import FakeBackend, fake_scheduler, write_fake_model
from serverproc import app_in_thread

KEY = "sk-corral-test-0123456789"
OTHER = "second-key"
OPEN = {
    ("GET", "/"),
    ("HEAD", "/"),
    ("GET", "/api/version"),
    ("GET", "/ui"),
    ("HEAD", "/ui"),
    ("GET", "/ui/{name}"),
    ("HEAD", "/ui/{name}"),
}


def _app(tmp_path: Path, **settings_fields: object) -> tuple[httpx.AsyncClient, Scheduler]:
    settings = Settings(home=tmp_path, models=tmp_path / "models", isolate_runners=False, **settings_fields)  # type: ignore[arg-type]
    write_fake_model(settings.models_dir, "fake:latest")
    scheduler = fake_scheduler(settings, FakeBackend(script=b"hello world"))
    app = create_app(settings, scheduler)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1"), scheduler


def _protected_routes(tmp_path: Path) -> list[tuple[str, str]]:
    app = create_app(Settings(home=tmp_path, api_keys=KEY))  # type: ignore[arg-type]
    routes = []
    for route in _flatten(app.routes):
        for method in sorted(getattr(route, "methods", None) or []):
            path = route.path.replace("{digest}", "sha256:" + "0" * 64)  # type: ignore[attr-defined]
            if (method, path) not in OPEN and not path.startswith("/health/"):
                routes.append((method, path))
    return routes


def _flatten(routes: list[Any]) -> Iterator[Any]:
    """Routes, with those of included routers (FastAPI includes them lazily) listed in place."""
    for route in routes:
        included = getattr(route, "original_router", None)
        if included is not None:
            prefix = getattr(route, "include_context", None)
            assert not getattr(prefix, "prefix", ""), "routers here are included without a prefix"
            yield from _flatten(included.routes)
        else:
            yield route


def test_every_protected_route_answers_401_without_a_key(tmp_path: Path) -> None:
    routes = _protected_routes(tmp_path)
    assert {("POST", "/api/chat"), ("POST", "/v1/chat/completions"), ("GET", "/metrics"), ("POST", "/api/pull")} <= set(
        routes
    )

    async def go() -> None:
        client, scheduler = _app(tmp_path, api_keys=KEY)
        async with client:
            for method, path in routes:
                refused: list[dict[str, str]] = [{}, {"authorization": "Bearer wrong"}, {"authorization": KEY}]
                # Anthropic's route takes its key as x-api-key (as its clients send it); the others refuse it.
                refused.append({"x-api-key": "wrong"} if path.startswith("/v1/messages") else {"x-api-key": KEY})
                for headers in refused:
                    r = await client.request(method, path, headers=headers, json={"model": "fake", "prompt": "x"})
                    assert r.status_code == 401, (method, path, headers, r.text)
                    if method == "HEAD":
                        continue
                    if path.startswith("/v1/"):
                        assert r.json()["error"]["message"] == "unauthorized"
                    else:
                        assert r.json() == {"error": "unauthorized"}
            # a key in the query string is not a key
            r = await client.post(f"/api/generate?api_key={KEY}&key={KEY}", json={"model": "fake", "prompt": "x"})
            assert r.status_code == 401
        assert scheduler.ps() == []  # nothing was loaded for a refused request

    asyncio.run(go())


def test_open_routes_answer_without_a_key_and_a_key_opens_the_rest(tmp_path: Path) -> None:
    async def go() -> None:
        client, _ = _app(tmp_path, api_keys=f"{KEY}, {OTHER}")
        async with client:
            assert (await client.get("/")).status_code == 200
            assert (await client.get("/api/version")).status_code == 200
            assert (await client.get("/health/live")).status_code == 200
            assert (await client.get("/health/ready")).status_code == 200
            assert (await client.get("/ui")).status_code == 200  # the chat page, which then asks for a key
            assert (await client.get("/ui/app.js")).status_code == 200
            assert (await client.post("/ui/app.js")).status_code == 401
            for key in (KEY, OTHER):
                r = await client.post(
                    "/api/generate",
                    headers={"authorization": f"Bearer {key}"},
                    json={"model": "fake", "prompt": "x", "stream": False},
                )
                assert r.status_code == 200 and r.json()["response"] == "hello world"
            r = await client.post("/v1/messages", headers={"x-api-key": KEY}, json={})
            assert r.status_code != 401
            r = await client.post("/v1/messages", json={})
            assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"

    asyncio.run(go())


def test_the_key_file_is_reread_when_it_changes(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text(f"# rotated monthly\n{KEY}\n")

    async def go() -> None:
        client, _ = _app(tmp_path, api_keys_file=keys)
        async with client:
            assert (await client.get("/api/tags", headers={"authorization": f"Bearer {KEY}"})).status_code == 200
            assert (await client.get("/api/tags", headers={"authorization": f"Bearer {OTHER}"})).status_code == 401
            keys.write_text(f"{OTHER}\n")
            os.utime(keys, ns=(time.time_ns(), time.time_ns() + 10**9))  # a new mtime even on a coarse clock
            assert (await client.get("/api/tags", headers={"authorization": f"Bearer {OTHER}"})).status_code == 200
            assert (await client.get("/api/tags", headers={"authorization": f"Bearer {KEY}"})).status_code == 401
            keys.write_text("")  # an emptied file locks the server rather than opening it
            os.utime(keys, ns=(time.time_ns(), time.time_ns() + 2 * 10**9))
            assert (await client.get("/api/tags", headers={"authorization": f"Bearer {OTHER}"})).status_code == 401

    asyncio.run(go())


def test_keys_never_reach_the_log(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)

    async def go() -> None:
        client, _ = _app(tmp_path, api_keys=KEY)
        async with client:
            await client.get("/api/tags", headers={"authorization": "Bearer wrong-key-xyz"})
            await client.get("/api/tags", headers={"authorization": f"Bearer {KEY}"})

    asyncio.run(go())
    assert KEY not in caplog.text and "wrong-key-xyz" not in caplog.text
    assert KEY not in repr(Settings(api_keys=KEY))  # type: ignore[arg-type]


def test_serve_refuses_an_open_non_loopback_bind(tmp_path: Path) -> None:
    with pytest.raises(CorralError, match="without API keys"):
        check_exposure(Settings(home=tmp_path, host="0.0.0.0:11434"))
    check_exposure(Settings(home=tmp_path, host="0.0.0.0:11434", api_keys=KEY))  # type: ignore[arg-type]
    check_exposure(Settings(home=tmp_path, host="0.0.0.0:11434", insecure_no_auth=True))
    check_exposure(Settings(home=tmp_path, host="127.0.0.1:11434"))


@pytest.fixture
def keyed_server(tmp_path: Path) -> Iterator[str]:
    settings = Settings(home=tmp_path, models=tmp_path / "models", isolate_runners=False, api_keys=KEY)  # type: ignore[arg-type]
    write_fake_model(settings.models_dir, "fake:latest")
    scheduler = fake_scheduler(settings, FakeBackend(script=b"hello world"))
    with app_in_thread(create_app(settings, scheduler)) as url:
        yield url


def test_the_official_clients_work_with_a_key(keyed_server: str) -> None:
    answer = ollama.Client(host=keyed_server, headers={"Authorization": f"Bearer {KEY}"}).generate(
        model="fake", prompt="hi"
    )
    assert answer.response == "hello world"
    with pytest.raises(ollama.ResponseError) as refused:
        ollama.Client(host=keyed_server).generate(model="fake", prompt="hi")
    assert refused.value.status_code == 401

    chat = openai.OpenAI(base_url=f"{keyed_server}/v1", api_key=KEY).chat.completions.create(
        model="fake", messages=[{"role": "user", "content": "hi"}]
    )
    assert chat.choices[0].message.content == "hello world"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{keyed_server}/v1", api_key="wrong").chat.completions.create(
            model="fake", messages=[{"role": "user", "content": "hi"}]
        )


def test_corral_client_sends_corral_api_key(keyed_server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CORRAL_API_KEY", KEY)
    assert Client(host=keyed_server).generate("fake", "hi")["response"] == "hello world"
    monkeypatch.delenv("CORRAL_API_KEY")
    with pytest.raises(Exception, match="unauthorized"):
        Client(host=keyed_server).generate("fake", "hi")
