"""The blocking client: ``Client``, ollama-python's method for method."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
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


class Client(_BaseClient[httpx.Client]):
    """Talks to a Corral (or Ollama) server; every method blocks. Use as a context manager to close it."""

    def __init__(self, host: str | None = None, **kwargs: Any) -> None:
        super().__init__(httpx.Client, host, **kwargs)

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _send(self, method: str, path: str, body: BaseModel | None = None, **kwargs: Any) -> httpx.Response:
        try:
            response = self._client.request(method, path, json=_dump(body), **kwargs)
        except httpx.TransportError as exc:
            raise _transport_error(self.host, exc) from None
        _raise_for_status(response)
        return response

    def _request(self, cls: type[T], method: str, path: str, body: BaseModel | None = None) -> T:
        return _parse_body(cls, self._send(method, path, body))

    def _post(self, cls: type[T], path: str, body: BaseModel, stream: bool) -> T | Iterator[T]:
        """POST ``body``: the parts of a stream, or the one answer."""
        return self._stream(cls, "POST", path, body) if stream else self._request(cls, "POST", path, body)

    def _stream(self, cls: type[T], method: str, path: str, body: BaseModel | None) -> Iterator[T]:
        try:
            with self._client.stream(method, path, json=_dump(body)) as response:
                if not response.is_success:
                    response.read()
                    _raise_for_status(response)
                for line in response.iter_lines():
                    if (part := _parse_line(cls, line)) is not None:
                        yield part
        except httpx.TransportError as exc:
            raise _transport_error(self.host, exc) from None

    @overload
    def generate(
        self, model: str = "", prompt: str | None = None, suffix: str | None = None, *,
        system: str | None = None, template: str | None = None, context: Sequence[int] | None = None,
        stream: Literal[False] = False, think: Think | None = None, raw: bool | None = None,
        format: Format | None = None, images: Sequence[ImageArg] | None = None, options: OptionsArg | None = None,
        keep_alive: KeepAlive | None = None, backend: str | None = None,
    ) -> GenerateResponse: ...
    @overload
    def generate(
        self, model: str = "", prompt: str | None = None, suffix: str | None = None, *,
        system: str | None = None, template: str | None = None, context: Sequence[int] | None = None,
        stream: Literal[True], think: Think | None = None, raw: bool | None = None,
        format: Format | None = None, images: Sequence[ImageArg] | None = None, options: OptionsArg | None = None,
        keep_alive: KeepAlive | None = None, backend: str | None = None,
    ) -> Iterator[GenerateResponse]: ...
    def generate(
        self, model: str = "", prompt: str | None = None, suffix: str | None = None, *,
        system: str | None = None, template: str | None = None, context: Sequence[int] | None = None,
        stream: bool = False, think: Think | None = None, raw: bool | None = None,
        format: Format | None = None, images: Sequence[ImageArg] | None = None, options: OptionsArg | None = None,
        keep_alive: KeepAlive | None = None, backend: str | None = None,
    ) -> GenerateResponse | Iterator[GenerateResponse]:
        """Complete ``prompt``. Returns one GenerateResponse, or an iterator of parts with ``stream=True``."""
        body = _generate_request(
            model, prompt, suffix, system, template, context, stream, think, raw, format, images, options,
            keep_alive, backend,
        )
        return self._post(GenerateResponse, "/api/generate", body, stream)

    @overload
    def chat(
        self, model: str = "", messages: Sequence[MessageArg] | None = None, *,
        tools: Sequence[ToolArg] | None = None, stream: Literal[False] = False, think: Think | None = None,
        format: Format | None = None, options: OptionsArg | None = None, keep_alive: KeepAlive | None = None,
        backend: str | None = None,
    ) -> ChatResponse: ...
    @overload
    def chat(
        self, model: str = "", messages: Sequence[MessageArg] | None = None, *,
        tools: Sequence[ToolArg] | None = None, stream: Literal[True], think: Think | None = None,
        format: Format | None = None, options: OptionsArg | None = None, keep_alive: KeepAlive | None = None,
        backend: str | None = None,
    ) -> Iterator[ChatResponse]: ...
    def chat(
        self, model: str = "", messages: Sequence[MessageArg] | None = None, *,
        tools: Sequence[ToolArg] | None = None, stream: bool = False, think: Think | None = None,
        format: Format | None = None, options: OptionsArg | None = None, keep_alive: KeepAlive | None = None,
        backend: str | None = None,
    ) -> ChatResponse | Iterator[ChatResponse]:
        """Answer ``messages``. ``tools`` are JSON schemas or plain functions (Google-style docstrings)."""
        body = _chat_request(model, messages, tools, stream, think, format, options, keep_alive, backend)
        return self._post(ChatResponse, "/api/chat", body, stream)

    def embed(
        self, model: str = "", input: str | Sequence[str] = "", truncate: bool | None = None,
        options: OptionsArg | None = None, keep_alive: KeepAlive | None = None, dimensions: int | None = None,
        *, backend: str | None = None,
    ) -> EmbedResponse:
        body = _embed_request(model, input, truncate, options, keep_alive, dimensions, backend)
        return self._request(EmbedResponse, "POST", "/api/embed", body)

    def embeddings(
        self, model: str = "", prompt: str | None = None, options: OptionsArg | None = None,
        keep_alive: KeepAlive | None = None, *, backend: str | None = None,
    ) -> EmbeddingsResponse:
        """The older, one-prompt form of ``embed``."""
        body = _embeddings_request(model, prompt, options, keep_alive, backend)
        return self._request(EmbeddingsResponse, "POST", "/api/embeddings", body)

    @overload
    def pull(self, model: str, *, insecure: bool = False, stream: Literal[False] = False) -> ProgressResponse: ...
    @overload
    def pull(
        self, model: str, *, insecure: bool = False, stream: Literal[True]
    ) -> Iterator[ProgressResponse]: ...
    def pull(
        self, model: str, *, insecure: bool = False, stream: bool = False
    ) -> ProgressResponse | Iterator[ProgressResponse]:
        body = PullRequest(model=model, insecure=insecure, stream=stream)
        return self._post(ProgressResponse, "/api/pull", body, stream)

    @overload
    def push(self, model: str, *, insecure: bool = False, stream: Literal[False] = False) -> ProgressResponse: ...
    @overload
    def push(
        self, model: str, *, insecure: bool = False, stream: Literal[True]
    ) -> Iterator[ProgressResponse]: ...
    def push(
        self, model: str, *, insecure: bool = False, stream: bool = False
    ) -> ProgressResponse | Iterator[ProgressResponse]:
        body = PushRequest(model=model, insecure=insecure, stream=stream)
        return self._post(ProgressResponse, "/api/push", body, stream)

    @overload
    def create(
        self, model: str, quantize: str | None = None, from_: str | None = None, files: Files | None = None,
        adapters: Files | None = None, template: str | None = None, license: License | None = None,
        system: str | None = None, parameters: OptionsArg | None = None, messages: Sequence[MessageArg] | None = None,
        *, modelfile: str | None = None, format: str | None = None, stream: Literal[False] = False,
    ) -> ProgressResponse: ...
    @overload
    def create(
        self, model: str, quantize: str | None = None, from_: str | None = None, files: Files | None = None,
        adapters: Files | None = None, template: str | None = None, license: License | None = None,
        system: str | None = None, parameters: OptionsArg | None = None, messages: Sequence[MessageArg] | None = None,
        *, modelfile: str | None = None, format: str | None = None, stream: Literal[True],
    ) -> Iterator[ProgressResponse]: ...
    def create(
        self, model: str, quantize: str | None = None, from_: str | None = None, files: Files | None = None,
        adapters: Files | None = None, template: str | None = None, license: License | None = None,
        system: str | None = None, parameters: OptionsArg | None = None, messages: Sequence[MessageArg] | None = None,
        *, modelfile: str | None = None, format: str | None = None, stream: bool = False,
    ) -> ProgressResponse | Iterator[ProgressResponse]:
        """Create ``model`` from another (``from_``), uploaded blobs (``files``: name -> digest from
        ``create_blob``), or a whole Modelfile (``modelfile``, the older API). Corral's ``format="onnx"``
        converts GGUF weights into an ONNX model (``quantize``: its precision, int4, int8 or fp32)."""
        body = _create_request(
            model, quantize, from_, files, adapters, template, license, system, parameters, messages, modelfile,
            format, stream,
        )
        return self._post(ProgressResponse, "/api/create", body, stream)

    def create_blob(self, path: str | Path) -> str:
        """Upload a file for ``create(files=...)``; returns its digest ("sha256:...")."""
        digest = _sha256_file(path)
        with open(path, "rb") as f:
            self._send("POST", f"/api/blobs/{digest}", content=f)
        return digest

    def show(self, model: str, *, verbose: bool | None = None) -> ShowResponse:
        return self._request(ShowResponse, "POST", "/api/show", ShowRequest(model=model, verbose=verbose))

    def copy(self, source: str, destination: str) -> StatusResponse:
        self._send("POST", "/api/copy", CopyRequest(source=source, destination=destination))
        return StatusResponse(status="success")

    def delete(self, model: str) -> StatusResponse:
        self._send("DELETE", "/api/delete", DeleteRequest(model=model))
        return StatusResponse(status="success")

    def ps(self) -> ProcessResponse:
        """The models loaded now."""
        return self._request(ProcessResponse, "GET", "/api/ps")

    def version(self) -> str:
        """The server's version."""
        return str(self._send("GET", "/api/version").json()["version"])

    def list(self) -> ListResponse:  # last: the name would shadow the builtin in later annotations
        """The models in the store."""
        return self._request(ListResponse, "GET", "/api/tags")
