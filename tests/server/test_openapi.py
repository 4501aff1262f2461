"""/openapi.json describes every route of both APIs."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from corral.config import Settings
from corral.server.app import create_app

ROUTES = {
    "/", "/api/version", "/api/generate", "/api/chat", "/api/embed", "/api/embeddings", "/api/tags", "/api/show",
    "/api/create", "/api/copy", "/api/delete", "/api/pull", "/api/push", "/api/ps", "/api/blobs/{digest}",
    "/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/models", "/v1/models/{model}",
    "/v1/messages", "/v1/messages/count_tokens", "/v1/responses", "/v1/responses/{response_id}",
    "/health/live", "/health/ready",
}


@pytest.mark.anyio
async def test_openapi_lists_every_route(tmp_path: Path) -> None:
    app = create_app(Settings(home=tmp_path))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1:11434") as client:
        spec = (await client.get("/openapi.json")).json()
    assert set(spec["paths"]) == ROUTES


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
