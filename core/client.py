"""Corral's Python client: ollama-python's Client and AsyncClient, over httpx and the shared wire types.

Code written for ollama-python works unchanged (same method names, arguments and return types):

    from corral.client import Client
    for part in Client().chat("smollm2", [{"role": "user", "content": "Hi"}], stream=True):
        print(part["message"]["content"], end="")

Requests are corral.types models posted as ``model_dump(exclude_none=True, by_alias=True)``; answers
are parsed into the same models the server sends, one NDJSON line at a time when streaming. Errors are
converted here only: a non-2xx answer or an ``{"error": ...}`` line becomes ``ResponseError``, an
unreachable server ``ConnectionError``.
"""

from __future__ import annotations

import base64
import hashlib
import inspect
import json
import os
import platform
import types
import typing
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar, overload

import httpx
from pydantic import BaseModel

from corral.config import Settings, host_to_url
from corral.types import (
    ChatRequest,
    ChatResponse,
    CopyRequest,
    CreateRequest,
    DeleteRequest,
    EmbeddingsRequest,
    EmbeddingsResponse,
    EmbedRequest,
    EmbedResponse,
    GenerateRequest,
    GenerateResponse,
    ListResponse,
    Message,
    ProcessResponse,
    ProgressResponse,
    PullRequest,
    PushRequest,
    ShowRequest,
    ShowResponse,
    StatusResponse,
)
from corral.version import __version__

__all__ = [
    "AsyncClient",
    "Client",
    "ResponseError",
    # Bound to a default Client made on first use, as ollama.chat & co. are:
    "chat",
    "copy",
    "create",
    "create_blob",
    "delete",
    "embed",
    "embeddings",
    "generate",
    "list",
    "ps",
    "pull",
    "push",
    "show",
    "version",
]

T = TypeVar("T", bound=BaseModel)
HttpxClient = TypeVar("HttpxClient", httpx.Client, httpx.AsyncClient)

Think = bool | Literal["low", "medium", "high"]
Format = str | dict[str, Any]  # "" or "json", or a JSON schema
KeepAlive = float | str
OptionsArg = Mapping[str, Any] | BaseModel
MessageArg = Mapping[str, Any] | BaseModel
ImageArg = str | bytes | Path  # base64, a file's path, or the raw bytes
ToolArg = Mapping[str, Any] | BaseModel | Callable[..., Any]
Files = Mapping[str, str]  # file name -> blob digest
License = str | Sequence[str]


class ResponseError(Exception):
    """The server refused a request: a non-2xx status, or an ``{"error": ...}`` line mid-stream.

    ``str(e)`` is the server's message. ``status_code`` is the HTTP status, or -1 for an error
    reported mid-stream (after the status line had already said 200).
    """

    def __init__(self, error: Any, status_code: int = -1) -> None:
        self.error = _error_message(error)
        self.status_code = status_code
        super().__init__(self.error)

    def __str__(self) -> str:
        return self.error

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.error, self.status_code)


def _error_message(error: Any) -> str:
    """The message in an error body: Ollama's ``{"error": "..."}``, OpenAI's ``{"error": {"message": ...}}``,
    FastAPI's ``{"detail": "..."}``, or the text as it came."""
    if isinstance(error, bytes):
        error = error.decode(errors="replace")
    if isinstance(error, str):
        try:
            body = json.loads(error)
        except ValueError:
            return error
        if not (isinstance(body, dict) and ("error" in body or isinstance(body.get("detail"), str))):
            return error
        error = body
    if isinstance(error, dict) and "error" in error:
        error = error["error"]
    elif isinstance(error, dict) and isinstance(error.get("detail"), str):  # a bare FastAPI/Starlette 404 or 405
        error = error["detail"]
    if isinstance(error, dict):
        error = error.get("message", error)
    return str(error)


def _resolve_host(host: str | None) -> str:
    """``host``, else ``$CORRAL_HOST``, else config.toml's host, else http://127.0.0.1:11434."""
    if host:
        return host_to_url(host)
    if env := os.environ.get("CORRAL_HOST"):
        return host_to_url(env)
    try:
        return Settings().base_url
    except Exception:  # a broken config file must not stop the client from reaching the default
        return host_to_url("")


def _transport_error(base_url: str, exc: httpx.TransportError) -> OSError:
    if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
        return ConnectionError(
            f"could not connect to Corral at {base_url}: is the server running? Start it with `corral serve`"
        )
    if isinstance(exc, httpx.TimeoutException):
        return TimeoutError(f"Corral at {base_url} did not answer in time ({type(exc).__name__})")
    return ConnectionError(f"lost the connection to Corral at {base_url}: {exc or type(exc).__name__}")


def _raise_for_status(response: httpx.Response) -> None:
    """Raise ResponseError for a non-2xx answer; its body must already be read."""
    if not response.is_success:
        raise ResponseError(response.text or f"{response.status_code} {response.reason_phrase}", response.status_code)


def _parse(cls: type[T], data: Any) -> T:
    if isinstance(data, dict) and "error" in data:
        raise ResponseError(data)
    return cls.model_validate(data)


def _parse_body(cls: type[T], response: httpx.Response) -> T:
    try:
        data = response.json()
    except ValueError:
        raise ResponseError(f"invalid JSON from the server: {response.text[:200]!r}", response.status_code) from None
    return _parse(cls, data)


def _parse_line(cls: type[T], line: str) -> T | None:
    if not line.strip():
        return None
    try:
        data = json.loads(line)
    except ValueError:
        raise ResponseError(f"invalid JSON line from the server: {line[:200]!r}") from None
    return _parse(cls, data)


def _dump(request: BaseModel | None) -> dict[str, Any] | None:
    return None if request is None else request.model_dump(mode="json", exclude_none=True, by_alias=True)


# ---- argument conversion: accept what ollama-python accepts -----------------------------------------


def _options(options: OptionsArg | None) -> dict[str, Any] | None:
    if options is None:
        return None
    if isinstance(options, BaseModel):
        return options.model_dump(exclude_none=True)
    return dict(options)


_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif", ".tiff"}


def _image(image: ImageArg) -> str:
    if isinstance(image, bytes):
        return base64.b64encode(image).decode()
    path = Path(image).expanduser()
    try:
        is_file = path.is_file()
    except (OSError, ValueError):  # a long base64 string is no valid path
        is_file = False
    if is_file:
        return base64.b64encode(path.read_bytes()).decode()
    if isinstance(image, Path) or path.suffix.lower() in _IMAGE_SUFFIXES:  # base64 has no dots: a missing file
        raise FileNotFoundError(f"image file not found: {image}")
    return image


def _images(images: Sequence[ImageArg] | None) -> list[str] | None:
    return [_image(i) for i in images] if images else None


def _messages(messages: Sequence[MessageArg] | None) -> list[Message] | None:
    if messages is None:
        return None
    out = []
    for message in messages:
        data = message.model_dump(exclude_none=True) if isinstance(message, BaseModel) else dict(message)
        if data.get("images"):
            data["images"] = _images(data["images"])
        out.append(Message.model_validate(data))
    return out


def _tools(tools: Sequence[ToolArg] | None) -> list[dict[str, Any]] | None:
    if tools is None:
        return None
    out = []
    for tool in tools:
        if isinstance(tool, BaseModel):
            out.append(tool.model_dump(exclude_none=True))
        elif isinstance(tool, Mapping):
            out.append(dict(tool))
        elif callable(tool):
            out.append(_function_tool(tool))
        else:
            raise TypeError(f"a tool must be a JSON schema dict or a function, not {type(tool).__name__}")
    return out


_JSON_TYPES: dict[Any, str] = {
    str: "string", int: "integer", float: "number", bool: "boolean", list: "array", dict: "object",
}


def _function_tool(func: Callable[..., Any]) -> dict[str, Any]:
    """A tool schema from a function's signature and Google-style docstring, as ollama-python makes one."""
    summary, arg_docs = _parse_docstring(inspect.getdoc(func) or "")
    hints = typing.get_type_hints(func)
    properties: dict[str, Any] = {}
    required = []
    for name, param in inspect.signature(func).parameters.items():
        hint = hints.get(name, str)
        if typing.get_origin(hint) in (typing.Union, types.UnionType):
            hint = next((a for a in typing.get_args(hint) if a is not type(None)), str)
        prop = {"type": _JSON_TYPES.get(typing.get_origin(hint) or hint, "string")}
        if name in arg_docs:
            prop["description"] = arg_docs[name]
        properties[name] = prop
        if param.default is inspect.Parameter.empty:
            required.append(name)
    return {
        "type": "function",
        "function": {
            "name": func.__name__,
            "description": summary,
            "parameters": {"type": "object", "properties": properties, "required": required},
        },
    }


_DOC_SECTIONS = {
    "args", "arguments", "parameters", "returns", "return", "raises", "yields", "example", "examples", "note", "notes",
}


def _parse_docstring(doc: str) -> tuple[str, dict[str, str]]:
    summary: list[str] = []
    args: dict[str, str] = {}
    section, current = "summary", ""
    for line in doc.splitlines():
        stripped = line.strip()
        if stripped.lower().rstrip(":") in _DOC_SECTIONS and stripped.endswith(":") and not line[:1].isspace():
            section, current = stripped[:-1].lower(), ""
        elif section == "summary" and stripped:
            summary.append(stripped)
        elif section in ("args", "arguments", "parameters") and stripped:
            head, sep, text = stripped.partition(":")
            if sep and line[:1].isspace() and " " not in head.split("(")[0].strip():
                current = head.split("(")[0].strip()
                args[current] = text.strip()
            elif current:
                args[current] = f"{args[current]} {stripped}".strip()
    return " ".join(summary), args


def _sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return f"sha256:{digest.hexdigest()}"


# ---- the clients ---------------------------------------------------------------------------------


class _BaseClient(Generic[HttpxClient]):
    def __init__(
        self,
        client_cls: type[HttpxClient],
        host: str | None = None,
        *,
        follow_redirects: bool = True,
        timeout: Any = None,
        headers: Mapping[str, str] | None = None,
        **kwargs: Any,
    ) -> None:
        """``host`` as CORRAL_HOST is read (default http://127.0.0.1:11434). Other arguments go to the
        httpx client; ``timeout`` defaults to None, as a long generation must not time out."""
        self.host = _resolve_host(host)
        user_agent = (
            f"corral-python/{__version__} ({platform.machine()} {platform.system().lower()}) "
            f"Python/{platform.python_version()}"
        )
        self._client: HttpxClient = client_cls(
            base_url=self.host,
            follow_redirects=follow_redirects,
            timeout=timeout,
            headers={
                "content-type": "application/json",
                "accept": "application/json",
                "user-agent": user_agent,
                **{k.lower(): v for k, v in (headers or {}).items()},
            },
            **kwargs,
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
        body = GenerateRequest(
            model=model, prompt=prompt, suffix=suffix, system=system, template=template,
            context=[*context] if context is not None else None, stream=stream, think=think, raw=raw,
            format=format, images=_images(images), options=_options(options), keep_alive=keep_alive, backend=backend,
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
        body = ChatRequest(
            model=model, messages=_messages(messages), tools=_tools(tools), stream=stream, think=think,
            format=format, options=_options(options), keep_alive=keep_alive, backend=backend,
        )
        return self._post(ChatResponse, "/api/chat", body, stream)

    def embed(
        self, model: str = "", input: str | Sequence[str] = "", truncate: bool | None = None,
        options: OptionsArg | None = None, keep_alive: KeepAlive | None = None, dimensions: int | None = None,
        *, backend: str | None = None,
    ) -> EmbedResponse:
        body = EmbedRequest(
            model=model, input=input if isinstance(input, str) else [*input], truncate=truncate,
            dimensions=dimensions, options=_options(options), keep_alive=keep_alive, backend=backend,
        )
        return self._request(EmbedResponse, "POST", "/api/embed", body)

    def embeddings(
        self, model: str = "", prompt: str | None = None, options: OptionsArg | None = None,
        keep_alive: KeepAlive | None = None, *, backend: str | None = None,
    ) -> EmbeddingsResponse:
        """The older, one-prompt form of ``embed``."""
        body = EmbeddingsRequest(
            model=model, prompt=prompt or "", options=_options(options), keep_alive=keep_alive, backend=backend
        )
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
            model, quantize, from_, files, adapters, template, license, system, parameters, messages, modelfile, format, stream
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
        body = GenerateRequest(
            model=model, prompt=prompt, suffix=suffix, system=system, template=template,
            context=[*context] if context is not None else None, stream=stream, think=think, raw=raw,
            format=format, images=_images(images), options=_options(options), keep_alive=keep_alive, backend=backend,
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
        body = ChatRequest(
            model=model, messages=_messages(messages), tools=_tools(tools), stream=stream, think=think,
            format=format, options=_options(options), keep_alive=keep_alive, backend=backend,
        )
        return await self._post(ChatResponse, "/api/chat", body, stream)

    async def embed(
        self, model: str = "", input: str | Sequence[str] = "", truncate: bool | None = None,
        options: OptionsArg | None = None, keep_alive: KeepAlive | None = None, dimensions: int | None = None,
        *, backend: str | None = None,
    ) -> EmbedResponse:
        body = EmbedRequest(
            model=model, input=input if isinstance(input, str) else [*input], truncate=truncate,
            dimensions=dimensions, options=_options(options), keep_alive=keep_alive, backend=backend,
        )
        return await self._request(EmbedResponse, "POST", "/api/embed", body)

    async def embeddings(
        self, model: str = "", prompt: str | None = None, options: OptionsArg | None = None,
        keep_alive: KeepAlive | None = None, *, backend: str | None = None,
    ) -> EmbeddingsResponse:
        body = EmbeddingsRequest(
            model=model, prompt=prompt or "", options=_options(options), keep_alive=keep_alive, backend=backend
        )
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
            model, quantize, from_, files, adapters, template, license, system, parameters, messages, modelfile, format, stream
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


def _create_request(
    model: str, quantize: str | None, from_: str | None, files: Files | None,
    adapters: Files | None, template: str | None, license: License | None,
    system: str | None, parameters: OptionsArg | None, messages: Sequence[MessageArg] | None,
    modelfile: str | None, format: str | None, stream: bool,
) -> CreateRequest:
    return CreateRequest.model_validate(
        {
            "model": model, "quantize": quantize, "from": from_,
            "files": dict(files) if files is not None else None,
            "adapters": dict(adapters) if adapters is not None else None,
            "template": template, "license": license if license is None or isinstance(license, str) else [*license],
            "system": system, "parameters": _options(parameters), "messages": _messages(messages),
            "modelfile": modelfile, "format": format, "stream": stream,
        }
    )


# ---- module-level functions, as ollama.chat & co. ---------------------------------------------------

_CONVENIENCE = frozenset(__all__) - {"AsyncClient", "Client", "ResponseError"}

if TYPE_CHECKING:  # what __getattr__ hands out, so that type checkers know the signatures
    _typed = Client()
    chat, generate, embed, embeddings = _typed.chat, _typed.generate, _typed.embed, _typed.embeddings
    show, create, create_blob, copy, delete = _typed.show, _typed.create, _typed.create_blob, _typed.copy, _typed.delete
    pull, push, ps, version = _typed.pull, _typed.push, _typed.ps, _typed.version
    # ``list`` stays out: declaring it would shadow the builtin for the checker in this whole module.

_default_client: Client | None = None


def __getattr__(name: str) -> Any:
    """``corral.client.chat(...)`` and friends: methods of one default Client, made on first use so that
    importing this module stays cheap and CORRAL_HOST is read when it is needed, not at import."""
    global _default_client
    if name in _CONVENIENCE:
        if _default_client is None:
            _default_client = Client()
        return getattr(_default_client, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
