"""HTTP plumbing every API's routes share: tolerant bodies, OpenAPI body schemas, streams that always
clean up, a client that leaves, NDJSON framing, and routers whose errors one function answers."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Coroutine
from datetime import UTC, datetime
from typing import Annotated, Any, TypeVar

import anyio
from fastapi import Depends, FastAPI, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response, StreamingResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel, ValidationError
from pydantic.json_schema import models_json_schema

from corral.config import Settings
from corral.errors import BadRequest, CorralError
from corral.runtime.scheduler import Scheduler

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)
CLIENT_CLOSED = 499  # nginx's "client closed request": nobody reads it, but logs say what happened
_SCHEMAS_KEY = "x-corral-schemas"  # carries a body's schemas from a route to the document's components


def now_rfc3339(ts: float | None = None) -> str:
    moment = datetime.fromtimestamp(ts, tz=UTC) if ts is not None else datetime.now(UTC)
    return moment.isoformat().replace("+00:00", "Z")


# ---- what a route is given -------------------------------------------------------------------


def _scheduler(request: Request) -> Scheduler:
    return request.app.state.scheduler


def _settings(request: Request) -> Settings:
    return request.app.state.settings


SchedulerDep = Annotated[Scheduler, Depends(_scheduler)]
SettingsDep = Annotated[Settings, Depends(_settings)]


async def parse_body(request: Request, model: type[M]) -> M:
    """Read a JSON body into ``model``; bad JSON or a wrong field is a one-line 400 (not FastAPI's 422)."""
    data = decode_json(await request.body())
    if not isinstance(data, dict):
        raise BadRequest("the request body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise InvalidParam(first_error(exc.errors()), _field(exc.errors())) from None


class InvalidParam(BadRequest):
    """A 400 that names the request field at fault (OpenAI's ``error.param``)."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


def decode_json(raw: bytes) -> Any:
    """A request body as JSON, strictly: UTF-8, no NaN or Infinity, not nested past what a parser can
    follow; anything else is a one-line BadRequest (these were 500s with a traceback)."""
    try:
        text = (raw or b"{}").decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadRequest(f"the request body is not valid UTF-8 (byte {exc.start})") from None
    try:
        return json.loads(text, parse_constant=_no_constant)
    except json.JSONDecodeError as exc:
        raise BadRequest(f"invalid JSON in the request body: {exc.msg} at position {exc.pos}") from None
    except RecursionError:
        raise BadRequest("invalid JSON in the request body: nested too deeply") from None
    except ValueError as exc:  # a number of more digits than Python converts, or NaN/Infinity
        raise BadRequest(f"invalid JSON in the request body: {exc}") from None


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def first_error(errors: Any) -> str:
    err = list(errors)[0]
    return f"invalid field '{_field(errors) or 'body'}': {err['msg']}"


def _field(errors: Any) -> str | None:
    """The first error's field, as a dotted path (``messages.0.role``); None for the body as a whole."""
    return ".".join(str(p) for p in list(errors)[0]["loc"]) or None


def json_body(model: type[BaseModel]) -> dict[str, Any]:
    """``openapi_extra`` for a route that reads ``model`` with ``parse_body``: /openapi.json shows the
    body while the route keeps its own tolerant parsing."""
    refs, doc = models_json_schema([(model, "validation")], ref_template="#/components/schemas/{model}")
    schema, defs = refs[(model, "validation")], doc.get("$defs", {})
    return {
        "requestBody": {"required": True, "content": {"application/json": {"schema": schema}}},
        _SCHEMAS_KEY: defs,
    }


def install_openapi(app: FastAPI) -> None:
    """/openapi.json with the schemas that ``json_body`` routes refer to moved into its components."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            doc = get_openapi(title=app.title, version=app.version, routes=app.routes)
            components = doc.setdefault("components", {}).setdefault("schemas", {})
            for operations in doc.get("paths", {}).values():
                for operation in operations.values():
                    for name, schema in operation.pop(_SCHEMAS_KEY, {}).items():
                        components.setdefault(name, schema)
            app.openapi_schema = doc
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


# ---- errors: one function per API answers them -----------------------------------------------


class ClientGone(Exception):
    """The client disconnected while a non-streamed answer was being made."""


def answering_errors(answer: Callable[[Request, Exception], Response | None]) -> type[APIRoute]:
    """A route class whose handler's exceptions ``answer`` turns into responses (None: not ours, re-raised).
    Each API puts its routers on one of these, so its error shape is decided in one function."""

    class ErrorsAnswered(APIRoute):
        def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
            handler = super().get_route_handler()

            async def handle(request: Request) -> Response:
                try:
                    return await handler(request)
                except Exception as exc:
                    response = answer(request, exc)
                    if response is None:
                        raise
                    return response

            return handle

    return ErrorsAnswered


# ---- a client that leaves ---------------------------------------------------------------------


async def unless_disconnected(request: Request, work: Awaitable[T]) -> T:
    """``work``'s result, unless the client disconnects first: then ``work`` is cancelled (its own
    cleanup cancels the job and releases the model, as a closed stream's does) and ClientGone raised.
    Without this a client that gave up on a long non-streamed answer would still be generated for."""
    task = asyncio.ensure_future(work)
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        gone.cancel()
    if task.cancelled():
        raise ClientGone()
    return task.result()


async def _disconnected(request: Request) -> None:
    # The body has been read, so the next ASGI message is the disconnect (or never comes).
    while (await request.receive())["type"] != "http.disconnect":
        pass


class ClosingStream(StreamingResponse):
    """A streamed body that always closes itself and runs ``on_close`` (which cancels the job and
    releases the model), even when the client leaves before the body starts."""

    def __init__(
        self, body: AsyncIterator[bytes], on_close: Callable[[], Awaitable[None]], media_type: str,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(body, media_type=media_type, headers=headers)
        self._body = body
        self._on_close = on_close

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            with anyio.CancelScope(shield=True):
                aclose = getattr(self._body, "aclose", None)
                if aclose is not None:
                    with contextlib.suppress(RuntimeError):  # still running in a task being torn down
                        await aclose()
                await self._on_close()


# ---- framing: server-sent events (OpenAI's and Anthropic's streams), NDJSON (Ollama's) -----------

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}  # no proxy may hold events back


def sse(obj: Any, event: str | None = None) -> bytes:
    """One server-sent event carrying ``obj`` as compact JSON, named ``event`` where the API names them."""
    data = b"data: " + json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"
    return f"event: {event}\n".encode() + data if event else data


def event_stream(body: AsyncIterator[bytes], on_close: Callable[[], Awaitable[None]]) -> ClosingStream:
    """A text/event-stream response of ``body``'s events; ``on_close`` runs however it ends."""
    return ClosingStream(body, on_close, media_type="text/event-stream", headers=SSE_HEADERS)



def error_body(message: str, status: int) -> JSONResponse:
    """Ollama's error shape, ``{"error": "..."}``."""
    return JSONResponse({"error": message}, status_code=status)


async def ndjson_or_single(
    chunks: AsyncGenerator[BaseModel, None],
    stream: bool,
    merge: Callable[[list[BaseModel]], BaseModel],
    request: Request,
    on_close: Callable[[], Awaitable[None]] | None = None,
) -> Response:
    """Stream NDJSON lines, or gather them into one object (given up if ``request``'s client leaves).
    Errors before the first chunk become a status; an error mid-stream becomes a final ``{"error": ...}``
    line. ``chunks`` is closed, then ``on_close`` run, however the response ends."""

    async def close() -> None:
        with anyio.CancelScope(shield=True):
            await chunks.aclose()
            if on_close is not None:
                await on_close()

    if not stream:
        try:
            items = await unless_disconnected(request, _gather(chunks, close))
        except ClientGone:
            return Response(status_code=CLIENT_CLOSED)
        if not items:
            return error_body("no response", 500)
        return JSONResponse(merge(items).model_dump(mode="json", exclude_none=True, by_alias=True))
    try:
        first = await anext(chunks)
    except StopAsyncIteration:
        await close()
        return error_body("no response", 500)
    except BaseException:
        await close()
        raise

    async def lines() -> AsyncIterator[bytes]:
        yield _line(first)
        try:
            async for item in chunks:
                yield _line(item)
        except CorralError as exc:
            yield json.dumps({"error": str(exc)}).encode() + b"\n"

    return ClosingStream(lines(), close, media_type="application/x-ndjson")


async def _gather(chunks: AsyncGenerator[BaseModel, None], close: Callable[[], Awaitable[None]]) -> list[BaseModel]:
    try:
        return [item async for item in chunks]
    finally:
        await close()


def _line(item: BaseModel) -> bytes:
    return item.model_dump_json(exclude_none=True, by_alias=True).encode() + b"\n"
