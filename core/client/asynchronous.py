"""The asyncio client: ``AsyncClient``, ollama-python's method for method."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any, Literal, overload

import httpx
from pydantic import BaseModel

from corral.client.base import (
    Files,
    Format,
    ImageArg,
    KeepAlive,
    License,
    MessageArg,
    OptionsArg,
    T,
    Think,
    ToolArg,
    _BaseClient,
    _chat_request,
    _create_request,
    _dump,
    _embed_request,
    _embeddings_request,
    _generate_request,
    _parse_body,
    _parse_line,
    _raise_for_status,
    _sha256_file,
    _transport_error,
)
from corral.types import (
    ChatResponse,
    CopyRequest,
    DeleteRequest,
    EmbeddingsResponse,
    EmbedResponse,
    GenerateResponse,
    ListResponse,
    ProcessResponse,
    ProgressResponse,
    PullRequest,
    PushRequest,
    ShowRequest,
    ShowResponse,
    StatusResponse,
)


class AsyncClient(_BaseClient[httpx.AsyncClient]):
    """Client's asynchronous twin: every method is awaited; streams are async iterators."""

    def __init__(self, host: str | None = None, **kwargs: Any) -> None:
        super().__init__(httpx.AsyncClient, host, **kwargs)

    async def close(self) -> None:
        await self._client.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def _send(self, method: str, path: str, body: BaseModel | None = None, **kwargs: Any) -> httpx.Response:
        try:
            response = await self._client.request(method, path, json=_dump(body), **kwargs)
        except httpx.TransportError as exc:
            raise _transport_error(self.host, exc) from None
        _raise_for_status(response)
        return response

    async def _request(self, cls: type[T], method: str, path: str, body: BaseModel | None = None) -> T:
        return _parse_body(cls, await self._send(method, path, body))

    async def _post(self, cls: type[T], path: str, body: BaseModel, stream: bool) -> T | AsyncIterator[T]:
        """POST ``body``: the parts of a stream, or the one answer."""
        return self._stream(cls, "POST", path, body) if stream else await self._request(cls, "POST", path, body)

    async def _stream(self, cls: type[T], method: str, path: str, body: BaseModel | None) -> AsyncIterator[T]:
        try:
            async with self._client.stream(method, path, json=_dump(body)) as response:
                if not response.is_success:
                    await response.aread()
                    _raise_for_status(response)
                async for line in response.aiter_lines():
                    if (part := _parse_line(cls, line)) is not None:
                        yield part
        except httpx.TransportError as exc:
            raise _transport_error(self.host, exc) from None

    @overload
    async def generate(
        self, model: str = "", prompt: str | None = None, suffix: str | None = None, *,
        system: str | None = None, template: str | None = None, context: Sequence[int] | None = None,
        stream: Literal[False] = False, think: Think | None = None, raw: bool | None = None,
        format: Format | None = None, images: Sequence[ImageArg] | None = None, options: OptionsArg | None = None,
        keep_alive: KeepAlive | None = None, backend: str | None = None,
    ) -> GenerateResponse: ...
    @overload
    async def generate(
        self, model: str = "", prompt: str | None = None, suffix: str | None = None, *,
        system: str | None = None, template: str | None = None, context: Sequence[int] | None = None,
        stream: Literal[True], think: Think | None = None, raw: bool | None = None,
        format: Format | None = None, images: Sequence[ImageArg] | None = None, options: OptionsArg | None = None,
        keep_alive: KeepAlive | None = None, backend: str | None = None,
    ) -> AsyncIterator[GenerateResponse]: ...
    async def generate(
        self, model: str = "", prompt: str | None = None, suffix: str | None = None, *,
        system: str | None = None, template: str | None = None, context: Sequence[int] | None = None,
        stream: bool = False, think: Think | None = None, raw: bool | None = None,
        format: Format | None = None, images: Sequence[ImageArg] | None = None, options: OptionsArg | None = None,
        keep_alive: KeepAlive | None = None, backend: str | None = None,
    ) -> GenerateResponse | AsyncIterator[GenerateResponse]:
        body = _generate_request(
            model, prompt, suffix, system, template, context, stream, think, raw, format, images, options,
            keep_alive, backend,
        )
        return await self._post(GenerateResponse, "/api/generate", body, stream)

    @overload
    async def chat(
        self, model: str = "", messages: Sequence[MessageArg] | None = None, *,
        tools: Sequence[ToolArg] | None = None, stream: Literal[False] = False, think: Think | None = None,
        format: Format | None = None, options: OptionsArg | None = None, keep_alive: KeepAlive | None = None,
        backend: str | None = None,
    ) -> ChatResponse: ...
    @overload
    async def chat(
        self, model: str = "", messages: Sequence[MessageArg] | None = None, *,
        tools: Sequence[ToolArg] | None = None, stream: Literal[True], think: Think | None = None,
        format: Format | None = None, options: OptionsArg | None = None, keep_alive: KeepAlive | None = None,
        backend: str | None = None,
    ) -> AsyncIterator[ChatResponse]: ...
    async def chat(
        self, model: str = "", messages: Sequence[MessageArg] | None = None, *,
        tools: Sequence[ToolArg] | None = None, stream: bool = False, think: Think | None = None,
        format: Format | None = None, options: OptionsArg | None = None, keep_alive: KeepAlive | None = None,
        backend: str | None = None,
    ) -> ChatResponse | AsyncIterator[ChatResponse]:
        body = _chat_request(model, messages, tools, stream, think, format, options, keep_alive, backend)
        return await self._post(ChatResponse, "/api/chat", body, stream)

    async def embed(
        self, model: str = "", input: str | Sequence[str] = "", truncate: bool | None = None,
        options: OptionsArg | None = None, keep_alive: KeepAlive | None = None, dimensions: int | None = None,
        *, backend: str | None = None,
    ) -> EmbedResponse:
        body = _embed_request(model, input, truncate, options, keep_alive, dimensions, backend)
        return await self._request(EmbedResponse, "POST", "/api/embed", body)

    async def embeddings(
        self, model: str = "", prompt: str | None = None, options: OptionsArg | None = None,
        keep_alive: KeepAlive | None = None, *, backend: str | None = None,
    ) -> EmbeddingsResponse:
        body = _embeddings_request(model, prompt, options, keep_alive, backend)
        return await self._request(EmbeddingsResponse, "POST", "/api/embeddings", body)

    @overload
    async def pull(self, model: str, *, insecure: bool = False, stream: Literal[False] = False) -> ProgressResponse: ...
    @overload
    async def pull(
        self, model: str, *, insecure: bool = False, stream: Literal[True]
    ) -> AsyncIterator[ProgressResponse]: ...
    async def pull(
        self, model: str, *, insecure: bool = False, stream: bool = False
    ) -> ProgressResponse | AsyncIterator[ProgressResponse]:
        body = PullRequest(model=model, insecure=insecure, stream=stream)
        return await self._post(ProgressResponse, "/api/pull", body, stream)

    @overload
    async def push(self, model: str, *, insecure: bool = False, stream: Literal[False] = False) -> ProgressResponse: ...
    @overload
    async def push(
        self, model: str, *, insecure: bool = False, stream: Literal[True]
    ) -> AsyncIterator[ProgressResponse]: ...
    async def push(
        self, model: str, *, insecure: bool = False, stream: bool = False
    ) -> ProgressResponse | AsyncIterator[ProgressResponse]:
        body = PushRequest(model=model, insecure=insecure, stream=stream)
        return await self._post(ProgressResponse, "/api/push", body, stream)

    @overload
    async def create(
        self, model: str, quantize: str | None = None, from_: str | None = None, files: Files | None = None,
        adapters: Files | None = None, template: str | None = None, license: License | None = None,
        system: str | None = None, parameters: OptionsArg | None = None, messages: Sequence[MessageArg] | None = None,
        *, modelfile: str | None = None, format: str | None = None, stream: Literal[False] = False,
    ) -> ProgressResponse: ...
    @overload
    async def create(
        self, model: str, quantize: str | None = None, from_: str | None = None, files: Files | None = None,
        adapters: Files | None = None, template: str | None = None, license: License | None = None,
        system: str | None = None, parameters: OptionsArg | None = None, messages: Sequence[MessageArg] | None = None,
        *, modelfile: str | None = None, format: str | None = None, stream: Literal[True],
    ) -> AsyncIterator[ProgressResponse]: ...
    async def create(
        self, model: str, quantize: str | None = None, from_: str | None = None, files: Files | None = None,
        adapters: Files | None = None, template: str | None = None, license: License | None = None,
        system: str | None = None, parameters: OptionsArg | None = None, messages: Sequence[MessageArg] | None = None,
        *, modelfile: str | None = None, format: str | None = None, stream: bool = False,
    ) -> ProgressResponse | AsyncIterator[ProgressResponse]:
        body = _create_request(
            model, quantize, from_, files, adapters, template, license, system, parameters, messages, modelfile,
            format, stream,
        )
        return await self._post(ProgressResponse, "/api/create", body, stream)

    async def create_blob(self, path: str | Path) -> str:
        import anyio  # httpx's own dependency; only blob uploads need it

        digest = await anyio.to_thread.run_sync(_sha256_file, path)

        async def chunks() -> AsyncIterator[bytes]:
            async with await anyio.open_file(path, "rb") as f:
                while chunk := await f.read(1 << 20):
                    yield chunk

        await self._send("POST", f"/api/blobs/{digest}", content=chunks())
        return digest

    async def show(self, model: str, *, verbose: bool | None = None) -> ShowResponse:
        return await self._request(ShowResponse, "POST", "/api/show", ShowRequest(model=model, verbose=verbose))

    async def copy(self, source: str, destination: str) -> StatusResponse:
        await self._send("POST", "/api/copy", CopyRequest(source=source, destination=destination))
        return StatusResponse(status="success")

    async def delete(self, model: str) -> StatusResponse:
        await self._send("DELETE", "/api/delete", DeleteRequest(model=model))
        return StatusResponse(status="success")

    async def ps(self) -> ProcessResponse:
        return await self._request(ProcessResponse, "GET", "/api/ps")

    async def version(self) -> str:
        return str((await self._send("GET", "/api/version")).json()["version"])

    async def list(self) -> ListResponse:  # last: the name would shadow the builtin in later annotations
        return await self._request(ListResponse, "GET", "/api/tags")
