"""corral.client against an in-process, Ollama-shaped app: request bodies, NDJSON parsing, errors, hosts."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse

import corral.client as client_module
from corral.client import AsyncClient, Client, ResponseError
from corral.types import (
    ChatResponse,
    EmbedResponse,
    GenerateResponse,
    ListResponse,
    Message,
    ProcessResponse,
    ProgressResponse,
    ShowResponse,
    StatusResponse,
)
from serverproc import free_port

HOST = "http://corral.test"
KNOWN = {"tiny", "crashy"}


# ---- a small server with Ollama's wire format -----------------------------------------------------


def make_app() -> FastAPI:
    """Ollama's endpoints as the wire shows them; every request is recorded in ``app.state.seen``."""
    app = FastAPI()
    seen: list[dict[str, Any]] = []
    blobs: dict[str, bytes] = {}
    app.state.seen = seen
    app.state.blobs = blobs

    async def record(request: Request) -> dict[str, Any]:
        raw = await request.body()
        body = json.loads(raw) if raw else {}
        headers = dict(request.headers)
        seen.append({"method": request.method, "path": request.url.path, "body": body, "headers": headers})
        return body

    def ndjson(parts: list[dict[str, Any]]) -> StreamingResponse:
        return StreamingResponse((json.dumps(p) + "\n" for p in parts), media_type="application/x-ndjson")

    def not_found(name: str) -> JSONResponse:
        return JSONResponse({"error": f"model '{name}' not found"}, status_code=404)

    def answer(parts: list[dict[str, Any]], stream: bool, text_key: str) -> Response:
        if stream:
            return ndjson(parts)
        last = dict(parts[-1])
        if text_key == "response":
            last["response"] = "".join(p["response"] for p in parts)
        else:
            last["message"] = {"role": "assistant", "content": "".join(p["message"]["content"] for p in parts)}
        return JSONResponse(last)

    @app.get("/api/version")
    async def version(request: Request) -> dict[str, str]:
        await record(request)
        return {"version": "0.1.0-test"}

    @app.post("/api/generate")
    async def generate(request: Request) -> Response:
        req = await record(request)
        if req["model"] not in KNOWN:
            return not_found(req["model"])
        parts: list[dict[str, Any]] = [
            {"model": req["model"], "created_at": "2025-01-01T00:00:00Z", "response": word, "done": False}
            for word in ("Hel", "lo")
        ]
        if req["model"] == "crashy":
            return ndjson([*parts, {"error": "the runner crashed"}])
        parts.append({"model": req["model"], "created_at": "2025-01-01T00:00:01Z", "response": "", "done": True,
                      "done_reason": "stop", "eval_count": 2, "context": [1, 2, 3]})
        return answer(parts, req.get("stream", True), "response")

    @app.post("/api/chat")
    async def chat(request: Request) -> Response:
        req = await record(request)
        if req["model"] not in KNOWN:
            return not_found(req["model"])
        parts: list[dict[str, Any]] = [
            {"model": req["model"], "message": {"role": "assistant", "content": word}, "done": False}
            for word in ("Hi", " there")
        ]
        parts.append({"model": req["model"], "message": {"role": "assistant", "content": ""}, "done": True,
                      "done_reason": "stop", "eval_count": 2})
        return answer(parts, req.get("stream", True), "message")

    @app.post("/api/embed")
    async def embed(request: Request) -> Response:
        req = await record(request)
        inputs = [req["input"]] if isinstance(req["input"], str) else req["input"]
        return JSONResponse({"model": req["model"], "embeddings": [[float(len(t)), 0.5] for t in inputs]})

    @app.post("/api/embeddings")
    async def embeddings(request: Request) -> Response:
        req = await record(request)
        return JSONResponse({"embedding": [float(len(req["prompt"])), 0.5]})

    @app.get("/api/tags")
    async def tags(request: Request) -> Response:
        await record(request)
        details = {"format": "gguf", "family": "llama", "parameter_size": "135M", "quantization_level": "Q8_0"}
        model = {"name": "tiny:latest", "model": "tiny:latest", "modified_at": "2025-01-01T00:00:00Z",
                 "size": 1234, "digest": "abc", "details": details}
        return JSONResponse({"models": [model]})

    @app.get("/api/ps")
    async def ps(request: Request) -> Response:
        await record(request)
        model = {"name": "tiny:latest", "model": "tiny:latest", "size": 1234, "digest": "abc",
                 "size_vram": 0, "processor": "100% CPU", "expires_at": "2025-01-01T00:05:00Z"}
        return JSONResponse({"models": [model]})

    @app.post("/api/show")
    async def show(request: Request) -> Response:
        req = await record(request)
        if req["model"] == "broken":
            return PlainTextResponse("Internal Server Error", status_code=500)
        if req["model"] not in KNOWN:
            return not_found(req["model"])
        return JSONResponse({"modelfile": "FROM tiny", "template": "{{ .Prompt }}", "capabilities": ["completion"],
                             "details": {"family": "llama"}, "model_info": {"general.architecture": "llama"}})

    @app.post("/api/create")
    async def create(request: Request) -> Response:
        req = await record(request)
        source = req.get("from")
        if source is not None and source not in KNOWN:
            return not_found(source)
        statuses = ["reading model metadata", "writing manifest", "success"]
        if req.get("stream", True):
            return ndjson([{"status": s} for s in statuses])
        return JSONResponse({"status": "success"})

    @app.post("/api/copy")
    async def copy(request: Request) -> Response:
        req = await record(request)
        return Response(status_code=200) if req["source"] in KNOWN else not_found(req["source"])

    @app.delete("/api/delete")
    async def delete(request: Request) -> Response:
        req = await record(request)
        return Response(status_code=200) if req["model"] in KNOWN else not_found(req["model"])

    async def transfer(request: Request) -> Response:
        req = await record(request)
        if req["model"] == "nope":
            return not_found("nope")
        parts: list[dict[str, Any]] = [{"status": "pulling manifest"},
                 {"status": "pulling abc", "digest": "sha256:abc", "total": 100, "completed": 50},
                 {"status": "pulling abc", "digest": "sha256:abc", "total": 100, "completed": 100},
                 {"status": "success"}]
        return ndjson(parts) if req.get("stream", True) else JSONResponse({"status": "success"})

    app.post("/api/pull")(transfer)
    app.post("/api/push")(transfer)

    @app.post("/api/blobs/{digest}")
    async def blob(digest: str, request: Request) -> Response:
        data = await request.body()
        if f"sha256:{hashlib.sha256(data).hexdigest()}" != digest:
            return JSONResponse({"error": "digest mismatch"}, status_code=400)
        blobs[digest] = data
        return Response(status_code=201)

    return app


def sync_transport(app: FastAPI) -> httpx.MockTransport:
    """Serve a sync Client from an ASGI app: each request runs through ASGITransport on its own loop."""

    async def forward(request: httpx.Request) -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app)) as inner:
            copy = httpx.Request(request.method, request.url, headers=request.headers, content=request.read())
            response = await inner.send(copy)
            content = await response.aread()
        headers = [(k, v) for k, v in response.headers.multi_items() if k.lower() != "transfer-encoding"]
        return httpx.Response(response.status_code, headers=headers, content=content)

    return httpx.MockTransport(lambda request: asyncio.run(forward(request)))


@pytest.fixture
def app() -> FastAPI:
    return make_app()


@pytest.fixture
def client(app: FastAPI) -> Iterator[Client]:
    with Client(host=HOST, transport=sync_transport(app)) as c:
        yield c


def last_body(app: FastAPI) -> dict[str, Any]:
    body: dict[str, Any] = app.state.seen[-1]["body"]
    return body


# ---- request bodies ---------------------------------------------------------------------------------


def test_generate_sends_only_what_was_set(client: Client, app: FastAPI) -> None:
    r = client.generate("tiny", "Say hi", options={"temperature": 0}, keep_alive="5m", backend="cpu")
    assert last_body(app) == {"model": "tiny", "prompt": "Say hi", "stream": False, "options": {"temperature": 0},
                              "keep_alive": "5m", "backend": "cpu"}
    assert isinstance(r, GenerateResponse)
    assert r.response == r["response"] == "Hello"
    assert r["done"] is True and r["context"] == [1, 2, 3] and r.done_reason == "stop"


def test_generate_images_and_pydantic_options(client: Client, app: FastAPI, tmp_path: Path) -> None:
    from corral.types import Options

    picture = tmp_path / "cat.png"
    picture.write_bytes(b"\x89PNG fake")
    client.generate("tiny", "What is this?", images=[b"raw", picture, "aGk="], options=Options(top_k=5),
                    format="json", raw=True, think=False, context=(7, 8), system="Be brief")
    body = last_body(app)
    assert body["images"] == [base64.b64encode(b"raw").decode(), base64.b64encode(b"\x89PNG fake").decode(), "aGk="]
    assert body["options"] == {"top_k": 5}
    assert body["format"] == "json" and body["raw"] is True and body["think"] is False
    assert body["context"] == [7, 8] and body["system"] == "Be brief"
    with pytest.raises(FileNotFoundError, match="missing.png"):
        client.generate("tiny", "What is this?", images=[str(tmp_path / "missing.png")])


def test_chat_messages_and_tools(client: Client, app: FastAPI) -> None:
    def add(a: int, b: int | None = None) -> int:
        """Add two numbers.

        Args:
            a (int): The first number
            b: The second
                number
        """
        return a + (b or 0)

    schema = {"type": "function", "function": {"name": "now", "parameters": {"type": "object", "properties": {}}}}
    tools: list[Any] = [add, schema]
    messages: list[Any] = [
        Message(role="system", content="Be brief"), {"role": "user", "content": "Hi", "images": [b"x"]},
    ]
    r = client.chat("tiny", messages, tools=tools, think="low", format={"type": "object"}, backend="cuda")
    body = last_body(app)
    assert body["messages"] == [{"role": "system", "content": "Be brief"},
                                {"role": "user", "content": "Hi", "images": [base64.b64encode(b"x").decode()]}]
    assert body["tools"][1] == schema
    assert body["tools"][0] == {"type": "function", "function": {
        "name": "add", "description": "Add two numbers.",
        "parameters": {"type": "object", "required": ["a"], "properties": {
            "a": {"type": "integer", "description": "The first number"},
            "b": {"type": "integer", "description": "The second number"}}}}}
    assert body["think"] == "low" and body["format"] == {"type": "object"} and body["backend"] == "cuda"
    assert body["stream"] is False
    assert isinstance(r, ChatResponse)
    assert r["message"]["content"] == r.message.content == "Hi there"
    assert r["message"]["role"] == "assistant"


def test_create_sends_from_by_alias(client: Client, app: FastAPI) -> None:
    r = client.create("mine", from_="tiny", system="Talk like a pirate", parameters={"temperature": 0.5},
                      messages=[{"role": "user", "content": "Ahoy"}], license=["MIT", "extra"], quantize="q4_K_M")
    assert last_body(app) == {"model": "mine", "from": "tiny", "system": "Talk like a pirate",
                              "parameters": {"temperature": 0.5}, "messages": [{"role": "user", "content": "Ahoy"}],
                              "license": ["MIT", "extra"], "quantize": "q4_K_M", "stream": False}
    assert isinstance(r, ProgressResponse) and r["status"] == "success"

    client.create("old-style", modelfile="FROM tiny\nSYSTEM hi")
    assert last_body(app) == {"model": "old-style", "modelfile": "FROM tiny\nSYSTEM hi", "stream": False}

    statuses = [p.status for p in client.create("mine", from_="tiny", stream=True)]
    assert statuses == ["reading model metadata", "writing manifest", "success"]


def test_create_blob_uploads_and_returns_digest(client: Client, app: FastAPI, tmp_path: Path) -> None:
    blob = tmp_path / "model.gguf"
    blob.write_bytes(b"GGUF" + bytes(range(256)) * 10)
    digest = client.create_blob(blob)
    assert digest == "sha256:" + hashlib.sha256(blob.read_bytes()).hexdigest()
    assert app.state.blobs[digest] == blob.read_bytes()
    client.create("from-blob", files={"model.gguf": digest})
    assert last_body(app)["files"] == {"model.gguf": digest}


def test_embed_and_embeddings(client: Client, app: FastAPI) -> None:
    r = client.embed("tiny", ["a", "bcd"], truncate=False, dimensions=2, backend="cpu")
    assert last_body(app) == {
        "model": "tiny", "input": ["a", "bcd"], "truncate": False, "dimensions": 2, "backend": "cpu",
    }
    assert isinstance(r, EmbedResponse) and r["embeddings"] == [[1.0, 0.5], [3.0, 0.5]]

    assert client.embed("tiny", "hello").embeddings == [[5.0, 0.5]]
    assert last_body(app)["input"] == "hello"

    assert client.embeddings("tiny", "hey")["embedding"] == [3.0, 0.5]
    assert last_body(app) == {"model": "tiny", "prompt": "hey"}


def test_list_ps_show_version(client: Client, app: FastAPI) -> None:
    models = client.list()
    assert isinstance(models, ListResponse)
    assert models["models"][0]["name"] == "tiny:latest" and models.models[0].details.parameter_size == "135M"
    assert app.state.seen[-1]["method"] == "GET" and app.state.seen[-1]["path"] == "/api/tags"

    running = client.ps()
    assert isinstance(running, ProcessResponse) and running["models"][0]["processor"] == "100% CPU"

    info = client.show("tiny", verbose=True)
    assert last_body(app) == {"model": "tiny", "verbose": True}
    assert isinstance(info, ShowResponse)
    assert info["capabilities"] == ["completion"] and info["details"]["family"] == "llama"

    assert client.version() == "0.1.0-test"


def test_copy_and_delete(client: Client, app: FastAPI) -> None:
    r = client.copy("tiny", "tiny-copy")
    assert isinstance(r, StatusResponse) and r["status"] == "success"
    assert last_body(app) == {"source": "tiny", "destination": "tiny-copy"}

    assert client.delete("tiny").status == "success"
    assert app.state.seen[-1]["method"] == "DELETE" and app.state.seen[-1]["path"] == "/api/delete"
    assert last_body(app) == {"model": "tiny"}


def test_pull_and_push(client: Client, app: FastAPI) -> None:
    parts = list(client.pull("tiny", stream=True))
    assert last_body(app) == {"model": "tiny", "insecure": False, "stream": True}
    assert all(isinstance(p, ProgressResponse) for p in parts)
    assert [p["completed"] for p in parts] == [None, 50, 100, None]
    assert parts[-1].status == "success"
    assert client.pull("tiny").status == "success"
    assert client.push("tiny", insecure=True).status == "success"
    assert app.state.seen[-1]["path"] == "/api/push" and last_body(app)["insecure"] is True


def test_headers_and_httpx_kwargs(app: FastAPI) -> None:
    with Client(host=HOST, transport=sync_transport(app), headers={"X-Token": "secret"}) as c:
        c.version()
        assert c._client.timeout == httpx.Timeout(None)  # a long generation must not time out
    headers = app.state.seen[-1]["headers"]
    assert headers["x-token"] == "secret"
    assert headers["user-agent"].startswith("corral-python/")
    assert headers["accept"] == "application/json"


# ---- streaming --------------------------------------------------------------------------------------


def test_generate_stream_is_parsed_per_line(client: Client, app: FastAPI) -> None:
    parts = list(client.generate("tiny", "Hi", stream=True))
    assert last_body(app)["stream"] is True
    assert all(isinstance(p, GenerateResponse) for p in parts)
    assert [p["response"] for p in parts] == ["Hel", "lo", ""]
    assert [p.done for p in parts] == [False, False, True]
    assert parts[-1].eval_count == 2 and parts[-1]["context"] == [1, 2, 3]


def test_chat_stream_subscript_access(client: Client) -> None:
    parts = client.chat("tiny", [{"role": "user", "content": "Hi"}], stream=True)
    text = "".join(p["message"]["content"] for p in parts)
    assert text == "Hi there"


def test_stream_is_lazy_like_ollama_python(client: Client, app: FastAPI) -> None:
    stream = client.chat("tiny", [{"role": "user", "content": "Hi"}], stream=True)
    assert app.state.seen == []
    next(iter(stream))
    assert len(app.state.seen) == 1


# ---- errors ----------------------------------------------------------------------------------------


def test_missing_model_is_a_404_response_error(client: Client) -> None:
    with pytest.raises(ResponseError) as info:
        client.generate("nope", "Hi")
    assert info.value.status_code == 404
    assert str(info.value) == info.value.error == "model 'nope' not found"

    with pytest.raises(ResponseError) as info:
        list(client.chat("nope", [{"role": "user", "content": "Hi"}], stream=True))
    assert (info.value.status_code, str(info.value)) == (404, "model 'nope' not found")

    with pytest.raises(ResponseError, match="model 'nope' not found"):
        client.delete("nope")
    with pytest.raises(ResponseError, match="model 'nope' not found") as info:
        client.create("mine", from_="nope")
    assert info.value.status_code == 404


def test_error_line_mid_stream_raises_after_the_parts_before_it(client: Client) -> None:
    got = []
    with pytest.raises(ResponseError) as info:
        for part in client.generate("crashy", "Hi", stream=True):
            got.append(part.response)
    assert got == ["Hel", "lo"]
    assert str(info.value) == "the runner crashed"
    assert info.value.status_code == -1


def test_plain_text_error_body_is_the_message(client: Client) -> None:
    with pytest.raises(ResponseError) as info:
        client.show("broken")
    assert (info.value.status_code, str(info.value)) == (500, "Internal Server Error")


def test_response_error_parses_bodies() -> None:
    assert str(ResponseError('{"error": "model \'x\' not found"}', 404)) == "model 'x' not found"
    openai_shaped = '{"error": {"message": "bad thing", "type": "invalid_request_error"}}'
    assert str(ResponseError(openai_shaped, 400)) == "bad thing"
    assert str(ResponseError({"error": "mid-stream"})) == "mid-stream"
    assert str(ResponseError('{"detail": "Not Found"}', 404)) == "Not Found"
    assert str(ResponseError("not json")) == "not json"
    assert str(ResponseError('["a list"]')) == '["a list"]'
    e = ResponseError("gone", 410)
    assert (e.error, e.status_code, e.args) == ("gone", 410, ("gone",))
    import pickle

    again = pickle.loads(pickle.dumps(e))
    assert (again.error, again.status_code) == ("gone", 410)


def test_empty_error_body_names_the_status() -> None:
    transport = httpx.MockTransport(lambda request: httpx.Response(503))
    with pytest.raises(ResponseError) as info:
        Client(host=HOST, transport=transport).list()
    assert (info.value.status_code, str(info.value)) == (503, "503 Service Unavailable")


def test_closed_port_is_a_connection_error() -> None:
    port = free_port()
    message = (
        f"could not connect to Corral at http://127.0.0.1:{port}: is the server running? Start it with `corral serve`"
    )
    with Client(host=f"127.0.0.1:{port}") as c:
        with pytest.raises(ConnectionError) as info:
            c.list()
        assert str(info.value) == message
        with pytest.raises(ConnectionError, match="could not connect to Corral"):
            list(c.generate("tiny", "Hi", stream=True))

    async def main() -> None:
        async with AsyncClient(host=f"127.0.0.1:{port}") as c:
            with pytest.raises(ConnectionError) as info:
                await c.version()
            assert str(info.value) == message
            with pytest.raises(ConnectionError, match="could not connect to Corral"):
                async for _ in await c.chat("tiny", [{"role": "user", "content": "Hi"}], stream=True):
                    pass

    asyncio.run(main())


def test_dropped_connection_mid_stream_is_a_connection_error() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        def body() -> Iterator[bytes]:
            yield b'{"response": "Hel", "done": false}\n'
            raise httpx.RemoteProtocolError("peer closed connection without sending complete message body")

        return httpx.Response(200, content=body())

    got = []
    with pytest.raises(ConnectionError, match="lost the connection to Corral at http://corral.test:11434"):
        client = Client(host="corral.test", transport=httpx.MockTransport(handler))
        for part in client.generate("tiny", "Hi", stream=True):
            got.append(part.response)
    assert got == ["Hel"]


# ---- where the client connects ------------------------------------------------------------------------


def _url_called(monkeypatch: pytest.MonkeyPatch, **kwargs: Any) -> str:
    urls = []

    def handler(request: httpx.Request) -> httpx.Response:
        urls.append(str(request.url))
        return httpx.Response(200, json={"version": "x"})

    Client(transport=httpx.MockTransport(handler), **kwargs).version()
    return urls[0]


def test_host_resolution(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CORRAL_CONFIG", str(tmp_path / "absent.toml"))
    monkeypatch.delenv("CORRAL_HOST", raising=False)
    assert _url_called(monkeypatch) == "http://127.0.0.1:11434/api/version"

    config = tmp_path / "config.toml"
    config.write_text('host = "10.0.0.7:9000"\n')
    monkeypatch.setenv("CORRAL_CONFIG", str(config))
    assert _url_called(monkeypatch) == "http://10.0.0.7:9000/api/version"

    monkeypatch.setenv("CORRAL_HOST", "0.0.0.0:5555")
    assert _url_called(monkeypatch) == "http://0.0.0.0:5555/api/version"
    assert Client().host == "http://0.0.0.0:5555"
    monkeypatch.setenv("CORRAL_HOST", "https://corral.example")
    assert _url_called(monkeypatch) == "https://corral.example:11434/api/version"

    assert _url_called(monkeypatch, host="example.org:1234") == "http://example.org:1234/api/version"


def test_a_broken_config_file_does_not_stop_the_client(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text("this is = = not toml")
    monkeypatch.setenv("CORRAL_CONFIG", str(config))
    monkeypatch.delenv("CORRAL_HOST", raising=False)
    assert Client().host == "http://127.0.0.1:11434"


# ---- the async client, over ASGITransport --------------------------------------------------------------


def test_async_client(app: FastAPI, tmp_path: Path) -> None:
    async def main() -> None:
        async with AsyncClient(host=HOST, transport=httpx.ASGITransport(app=app)) as c:
            r = await c.generate("tiny", "Hi", backend="cpu")
            assert isinstance(r, GenerateResponse) and r["response"] == "Hello"
            assert last_body(app) == {"model": "tiny", "prompt": "Hi", "stream": False, "backend": "cpu"}

            parts = [p async for p in await c.chat("tiny", [{"role": "user", "content": "Hi"}], stream=True)]
            assert all(isinstance(p, ChatResponse) for p in parts)
            assert "".join(p["message"]["content"] for p in parts) == "Hi there"
            assert (await c.chat("tiny", [{"role": "user", "content": "Hi"}])).message.content == "Hi there"

            got = []
            with pytest.raises(ResponseError, match="the runner crashed"):
                async for part in await c.generate("crashy", "Hi", stream=True):
                    got.append(part.response)
            assert got == ["Hel", "lo"]

            with pytest.raises(ResponseError) as info:
                await c.show("nope")
            assert (info.value.status_code, str(info.value)) == (404, "model 'nope' not found")
            with pytest.raises(ResponseError) as info:
                async for _ in await c.pull("nope", stream=True):
                    pass
            assert info.value.status_code == 404

            assert (await c.embed("tiny", ["ab"], backend="rocm")).embeddings == [[2.0, 0.5]]
            assert last_body(app)["backend"] == "rocm"
            assert (await c.embeddings("tiny", "abc")).embedding == [3.0, 0.5]
            assert (await c.list())["models"][0]["model"] == "tiny:latest"
            assert (await c.ps()).models[0].processor == "100% CPU"
            assert (await c.version()) == "0.1.0-test"

            statuses = [p.status async for p in await c.create("mine", from_="tiny", stream=True)]
            assert statuses[-1] == "success"
            assert last_body(app)["from"] == "tiny"
            assert (await c.create("mine", modelfile="FROM tiny")).status == "success"
            assert (await c.copy("tiny", "t2")).status == "success"
            assert (await c.delete("tiny")).status == "success"
            assert app.state.seen[-1]["method"] == "DELETE" and last_body(app) == {"model": "tiny"}
            assert [p.completed async for p in await c.push("tiny", stream=True)] == [None, 50, 100, None]
            assert (await c.pull("tiny")).status == "success"

            blob = tmp_path / "b.bin"
            blob.write_bytes(b"x" * 3_000_000)
            digest = await c.create_blob(blob)
            assert app.state.blobs[digest] == blob.read_bytes()

    asyncio.run(main())


# ---- the public surface ---------------------------------------------------------------------------


def test_module_functions_use_a_default_client(monkeypatch: pytest.MonkeyPatch, app: FastAPI) -> None:
    monkeypatch.setattr(client_module, "_default_client", Client(host=HOST, transport=sync_transport(app)))
    assert client_module.version() == "0.1.0-test"
    assert client_module.chat("tiny", [{"role": "user", "content": "Hi"}])["message"]["content"] == "Hi there"
    assert client_module.list().models[0].name == "tiny:latest"


def test_default_client_is_made_on_first_use(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(client_module, "_default_client", None)
    monkeypatch.setenv("CORRAL_HOST", "127.0.0.1:4321")
    default = client_module.chat.__self__  # type: ignore[attr-defined]
    assert isinstance(default, Client) and default.host == "http://127.0.0.1:4321"
    assert client_module.generate.__self__ is default  # type: ignore[attr-defined]
    with pytest.raises(AttributeError):
        client_module.no_such_thing  # noqa: B018


def test_all_is_complete(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(client_module, "_default_client", None)
    for name in client_module.__all__:
        assert getattr(client_module, name) is not None
    methods = {"chat", "generate", "embed", "embeddings", "list", "show", "create", "create_blob", "copy", "delete",
               "pull", "push", "ps", "version"}
    assert methods <= set(client_module.__all__)
    for cls in (Client, AsyncClient):
        assert methods <= set(dir(cls))
