"""/openapi.json describes the body of every route that reads one, and every reference in it resolves."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from corral.config import Settings
from corral.server.app import create_app

READS_A_BODY = {"post", "put", "patch", "delete"}
NAMED_BY_PATH = {("delete", "/v1/responses/{response_id}")}  # OpenAI's DELETE of a stored response has no body


async def _spec(tmp_path: Path) -> dict[str, Any]:
    app = create_app(Settings(home=tmp_path))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1:11434") as client:
        response = await client.get("/openapi.json")
    assert response.status_code == 200
    return response.json()  # type: ignore[no-any-return]


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [ref for value in node.values() for ref in _refs(value)]
    if isinstance(node, list):
        return [ref for value in node for ref in _refs(value)]
    return []


@pytest.mark.anyio
async def test_every_route_that_reads_a_body_declares_its_schema(tmp_path: Path) -> None:
    spec = await _spec(tmp_path)
    schemas = spec["components"]["schemas"]
    declared = {}
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            if (method, path) in NAMED_BY_PATH:
                assert "requestBody" not in operation, f"{method.upper()} {path}"
                continue
            if method not in READS_A_BODY:
                continue
            content = operation.get("requestBody", {}).get("content", {})
            assert content, f"{method.upper()} {path} has no requestBody"
            (media_type, body), = content.items()
            declared[f"{method.upper()} {path}"] = body["schema"]
            if media_type == "application/json":
                name = body["schema"]["$ref"].removeprefix("#/components/schemas/")
                assert schemas[name]["type"] == "object" and schemas[name]["properties"], f"{path}: {name} is empty"
    assert declared["POST /api/chat"] == {"$ref": "#/components/schemas/ChatRequest"}
    assert declared["POST /v1/chat/completions"] == {"$ref": "#/components/schemas/ChatCompletionRequest"}
    assert declared["POST /api/blobs/{digest}"] == {"type": "string", "format": "binary"}
    assert "messages" in schemas["ChatRequest"]["properties"] and "model" in schemas["ChatRequest"]["required"]
    assert "x-corral-schemas" not in str(spec["paths"])  # the carrier key is moved into the components


@pytest.mark.anyio
async def test_every_reference_in_the_document_resolves(tmp_path: Path) -> None:
    spec = await _spec(tmp_path)
    refs = set(_refs(spec))
    assert "#/components/schemas/Message" in refs  # ChatRequest's messages point at the shared type
    for ref in refs:
        assert ref.startswith("#/components/schemas/"), ref
        assert ref.removeprefix("#/components/schemas/") in spec["components"]["schemas"], ref


@pytest.mark.anyio
async def test_a_body_the_schema_declares_is_still_parsed_tolerantly(tmp_path: Path) -> None:
    """Declaring the body changes the document only: bad JSON is still a one-line 400, not FastAPI's 422."""
    app = create_app(Settings(home=tmp_path))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1:11434") as client:
        ollama_bad = await client.post("/api/chat", content=b"{not json")
        openai_bad = await client.post("/v1/chat/completions", json={"model": "m", "messages": "nope"})
    assert ollama_bad.status_code == 400 and ollama_bad.json()["error"].startswith("invalid JSON in the request body")
    assert openai_bad.status_code == 400
    assert openai_bad.json()["error"]["type"] == "invalid_request_error"
    assert openai_bad.json()["error"]["message"].startswith("invalid field 'messages'")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
