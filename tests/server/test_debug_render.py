"""Ollama's ``_debug_render_only``: /api/chat and /api/generate return the rendered prompt in
``_debug_info`` and load no model (a real tiny GGUF's Jinja template; a Go TEMPLATE on the fake backend)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from corral.config import Settings
from corral.models.recipes import store_gguf
from corral.models.store import Store
from corral.plugins import Plugins
from corral.runtime.scheduler import Scheduler
from corral.server.app import create_app
from fakes import FakeBackend, FakePlugin, write_fake_model

GO_TEMPLATE = (
    "{{ if .System }}[SYS]{{ .System }}[/SYS]{{ end }}"
    "{{ range .Messages }}<{{ .Role }}>{{ .Content }}</{{ .Role }}>{{ end }}<assistant>"
)
PIXEL = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="


@pytest.fixture
async def served(tmp_path: Path, tiny_gguf: Path) -> AsyncIterator[tuple[httpx.AsyncClient, Scheduler]]:
    settings = Settings(home=tmp_path, models=tmp_path / "models", isolate_runners=False)
    store = Store(settings.models_dir)
    store_gguf(store, "tiny:latest", tiny_gguf)
    write_fake_model(settings.models_dir, "gofake:latest", template=GO_TEMPLATE)
    plugins = Plugins(load_entry_points=True)
    plugins.register(FakePlugin(FakeBackend()))  # type: ignore[arg-type]
    scheduler = Scheduler(settings, plugins, store)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=create_app(settings, scheduler)), base_url="http://127.0.0.1:11434"
    ) as client:
        yield client, scheduler
    await scheduler.close()


@pytest.mark.anyio
async def test_chat_renders_the_gguf_template_without_loading(served: tuple[httpx.AsyncClient, Scheduler]) -> None:
    client, scheduler = served
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hello world", "images": [PIXEL, PIXEL]},
    ]
    r = await client.post("/api/chat", json={"model": "tiny", "messages": messages, "_debug_render_only": True})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["_debug_info"] == {
        "rendered_template": "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nhello world<|im_end|>\n"
        "<|im_start|>assistant\n",
        "image_count": 2,
    }
    assert body["model"] == "tiny:latest" and body["done"] is True
    assert scheduler.ps() == []  # nothing was loaded to render it


@pytest.mark.anyio
async def test_generate_renders_a_go_template_with_the_system_prompt(
    served: tuple[httpx.AsyncClient, Scheduler],
) -> None:
    client, scheduler = served
    r = await client.post(
        "/api/generate",
        json={
            "model": "gofake",
            "prompt": "hi there",
            "system": "S",
            "images": [PIXEL],
            "_debug_render_only": True,
            "stream": True,
        },
    )
    assert r.json()["_debug_info"] == {
        "rendered_template": "[SYS]S[/SYS]<system>S</system><user>hi there</user><assistant>",
        "image_count": 1,
    }
    raw = await client.post(
        "/api/generate", json={"model": "tiny", "prompt": "as is", "raw": True, "_debug_render_only": True}
    )
    assert raw.json()["_debug_info"]["rendered_template"] == "as is"
    assert scheduler.ps() == []


@pytest.mark.anyio
async def test_a_loaded_model_renders_the_same(served: tuple[httpx.AsyncClient, Scheduler]) -> None:
    client, scheduler = served
    request = {"model": "tiny", "messages": [{"role": "user", "content": "hello world"}], "_debug_render_only": True}
    cold = (await client.post("/api/chat", json=request)).json()["_debug_info"]
    await client.post("/api/chat", json={"model": "tiny", "messages": [], "keep_alive": -1})  # loads it
    assert [m.recipe.name.display for m in scheduler.ps()] == ["tiny:latest"]
    warm = (await client.post("/api/chat", json=request)).json()["_debug_info"]
    assert warm == cold
    missing = await client.post("/api/chat", json={**request, "model": "nope"})
    assert missing.status_code == 404


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
