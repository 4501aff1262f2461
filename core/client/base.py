"""What both clients share: ResponseError, the argument types ollama-python accepts and their
conversion into corral.types requests, host resolution, response parsing, and the httpx setup."""

from __future__ import annotations

import base64
import hashlib
import inspect
import json
import os
import platform
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar

import httpx
from pydantic import BaseModel

from corral.config import Settings, host_to_url
from corral.types import (
    ChatRequest,
    CreateRequest,
    EmbeddingsRequest,
    EmbedRequest,
    GenerateRequest,
    Message,
)
from corral.version import __version__

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


def _auth_header() -> dict[str, str]:
    """``Authorization: Bearer $CORRAL_API_KEY`` (or config.toml's api_key) for a server that wants keys."""
    key = os.environ.get("CORRAL_API_KEY", "")
    if not key:
        try:
            key = Settings().api_key.get_secret_value()
        except Exception:  # a broken config file must not stop the client; the server will say 401
            key = ""
    return {"authorization": f"Bearer {key.strip()}"} if key.strip() else {}


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
                **_auth_header(),
                **{k.lower(): v for k, v in (headers or {}).items()},
            },
            **kwargs,
        )


# ---- request bodies: one builder per endpoint, its parameters in the public method's order ----------


def _generate_request(
    model: str, prompt: str | None, suffix: str | None, system: str | None, template: str | None,
    context: Sequence[int] | None, stream: bool, think: Think | None, raw: bool | None, format: Format | None,
    images: Sequence[ImageArg] | None, options: OptionsArg | None, keep_alive: KeepAlive | None, backend: str | None,
) -> GenerateRequest:
    return GenerateRequest(
        model=model, prompt=prompt, suffix=suffix, system=system, template=template,
        context=[*context] if context is not None else None, stream=stream, think=think, raw=raw,
        format=format, images=_images(images), options=_options(options), keep_alive=keep_alive, backend=backend,
    )


def _chat_request(
    model: str, messages: Sequence[MessageArg] | None, tools: Sequence[ToolArg] | None, stream: bool,
    think: Think | None, format: Format | None, options: OptionsArg | None, keep_alive: KeepAlive | None,
    backend: str | None,
) -> ChatRequest:
    return ChatRequest(
        model=model, messages=_messages(messages), tools=_tools(tools), stream=stream, think=think,
        format=format, options=_options(options), keep_alive=keep_alive, backend=backend,
    )


def _embed_request(
    model: str, input: str | Sequence[str], truncate: bool | None, options: OptionsArg | None,
    keep_alive: KeepAlive | None, dimensions: int | None, backend: str | None,
) -> EmbedRequest:
    return EmbedRequest(
        model=model, input=input if isinstance(input, str) else [*input], truncate=truncate,
        dimensions=dimensions, options=_options(options), keep_alive=keep_alive, backend=backend,
    )


def _embeddings_request(
    model: str, prompt: str | None, options: OptionsArg | None, keep_alive: KeepAlive | None, backend: str | None
) -> EmbeddingsRequest:
    return EmbeddingsRequest(
        model=model, prompt=prompt or "", options=_options(options), keep_alive=keep_alive, backend=backend
    )


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
