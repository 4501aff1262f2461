"""The HTTP server: Ollama's /api/* (and OpenAI's /v1/* routes from openai_api); errors become statuses here only."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import replace
from datetime import datetime, timezone
from typing import Any, TypeVar

import anyio
import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ValidationError

from corral import __version__
from corral.chat import prompting
from corral.chat.reply import Reply
from corral.config import Settings
from corral.errors import BadRequest, CorralError
from corral.runtime.scheduler import Scheduler, Ticket
from corral.server.security import install_security
from corral.server.service import install_service
from corral.types import (
    ChatRequest,
    ChatResponse,
    EmbeddingsRequest,
    EmbeddingsResponse,
    EmbedRequest,
    EmbedResponse,
    GenerateRequest,
    GenerateResponse,
    ListModel,
    ListResponse,
    Message,
    ProcessModel,
    ProcessResponse,
)
from corral.runtime.worker import Event

log = logging.getLogger("corral.server.app")


def now_rfc3339(ts: float | None = None) -> str:
    moment = datetime.fromtimestamp(ts, tz=timezone.utc) if ts is not None else datetime.now(timezone.utc)
    return moment.isoformat().replace("+00:00", "Z")


def error_response(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


async def parse_body(request: Request, model: type[BaseModel]) -> Any:
    """Read a JSON body into ``model``; bad JSON or a wrong field is a one-line 400."""
    raw = await request.body()
    try:
        data = json.loads(raw or b"{}")
    except json.JSONDecodeError as exc:
        raise BadRequest(f"invalid JSON in the request body: {exc.msg} at position {exc.pos}") from None
    if not isinstance(data, dict):
        raise BadRequest("the request body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "body"
        raise BadRequest(f"invalid field '{where}': {err['msg']}") from None


def done_fields(ticket: Ticket, event: Event, t_start: float) -> dict[str, Any]:
    stats = event.stats
    fields: dict[str, Any] = {
        "done_reason": event.done_reason,
        "total_duration": int((time.perf_counter() - t_start) * 1e9),
        "load_duration": int(ticket.load_duration * 1e9),
    }
    if stats is not None:
        fields.update(
            prompt_eval_count=stats.prompt_eval_count,
            prompt_eval_duration=stats.prompt_eval_duration,
            eval_count=stats.eval_count,
            eval_duration=stats.eval_duration,
        )
    return fields


T = TypeVar("T")
CLIENT_CLOSED = 499  # nginx's "client closed request": nobody reads it, but logs say what happened


class ClientGone(Exception):
    """The client disconnected while a non-streamed answer was being made."""


async def unless_disconnected(request: Request | None, work: Awaitable[T]) -> T:
    """``work``'s result, unless the client disconnects first: then ``work`` is cancelled (its own
    cleanup cancels the job and releases the model, as a closed stream's does) and ClientGone raised.
    Without this a client that gave up on a long non-streamed answer would still be generated for."""
    task = asyncio.ensure_future(work)
    if request is None:
        return await task
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


async def ndjson_or_single(
    chunks: AsyncGenerator[BaseModel, None],
    stream: bool,
    merge: Callable[[list[BaseModel]], BaseModel],
    media_type: str = "application/x-ndjson",
    request: Request | None = None,
) -> Response:
    """Stream NDJSON lines, or gather them into one object (given up if ``request``'s client leaves).
    Errors before the first chunk become a status; an error mid-stream becomes a final ``{"error": ...}`` line."""
    if not stream:
        try:
            items = await unless_disconnected(request, _gather(chunks))
        except ClientGone:
            return Response(status_code=CLIENT_CLOSED)
        if not items:
            return error_response(500, "no response")
        return JSONResponse(merge(items).model_dump(mode="json", exclude_none=True, by_alias=True))
    try:
        first = await anext(chunks)
    except StopAsyncIteration:
        return error_response(500, "no response")

    async def lines() -> AsyncIterator[bytes]:
        yield _line(first)
        try:
            async for item in chunks:
                yield _line(item)
        except CorralError as exc:
            yield json.dumps({"error": str(exc)}).encode() + b"\n"

    return ClosingStream(lines(), chunks.aclose, media_type=media_type)


async def _gather(chunks: AsyncGenerator[BaseModel, None]) -> list[BaseModel]:
    try:
        return [item async for item in chunks]
    finally:
        await chunks.aclose()


class ClosingStream(StreamingResponse):
    """A streamed body that always runs ``on_close`` (which cancels the job and releases the model),
    even when the client leaves before the body starts."""

    def __init__(self, body: AsyncIterator[bytes], on_close: Callable[[], Awaitable[None]], media_type: str) -> None:
        super().__init__(body, media_type=media_type)
        self._on_close = on_close

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            with anyio.CancelScope(shield=True):
                await self._on_close()


def _line(item: BaseModel) -> bytes:
    return item.model_dump_json(exclude_none=True, by_alias=True).encode() + b"\n"


def create_app(settings: Settings | None = None, scheduler: Scheduler | None = None) -> FastAPI:
    settings = settings or Settings()
    scheduler = scheduler or Scheduler(settings)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        await scheduler.close()

    app = FastAPI(title="Corral", version=__version__, lifespan=lifespan)
    app.state.scheduler = scheduler
    app.state.settings = settings
    install_security(app, settings)
    install_service(app, settings, scheduler)  # probes, /metrics, draining: corral.server.service

    @app.exception_handler(CorralError)
    async def _corral_error(request: Request, exc: CorralError) -> Response:
        if request.url.path.startswith("/v1/"):
            return openai_error(exc.status_code, str(exc))
        return error_response(exc.status_code, str(exc))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> Response:
        err = exc.errors()[0]
        message = f"invalid field '{'.'.join(str(p) for p in err['loc'])}': {err['msg']}"
        if request.url.path.startswith("/v1/"):
            return openai_error(400, message)
        return error_response(400, message)

    @app.get("/", include_in_schema=True)
    @app.head("/")
    async def root() -> Response:
        return Response("Corral is running", media_type="text/plain")

    @app.get("/api/version")
    async def version() -> dict[str, str]:
        return {"version": __version__}

    @app.post("/api/generate", response_model=GenerateResponse)
    async def generate(request: Request) -> Response:
        req: GenerateRequest = await parse_body(request, GenerateRequest)
        t_start = time.perf_counter()
        ticket = await scheduler.acquire(req.model, req.options, req.keep_alive, req.backend)
        name = ticket.loaded.recipe.name.display
        if not req.prompt and not req.context:
            # An empty prompt only loads the model (and keep_alive 0 unloads it again).
            scheduler.release(ticket)
            return JSONResponse(
                GenerateResponse(model=name, created_at=now_rfc3339(), done=True, done_reason="unload" if ticket.loaded.keep_alive == 0 else "load").model_dump(exclude_none=True)
            )
        info = ticket.loaded.worker.wait_loaded().info
        try:
            reply = Reply()
            if req.raw:
                prompt = req.prompt or ""
            elif req.suffix:
                prompt = prompting.render_insert(ticket.loaded.recipe, req.prompt or "", req.suffix, template=req.template, model=name)
            else:
                msgs = prompting.generate_messages(ticket.loaded.recipe, req.prompt or "", req.system)
                prompt = prompting.render(ticket.loaded.recipe, info, msgs, template=req.template, think=req.think)
                reply = Reply.for_request(
                    think=req.think, tools=None, template=req.template or ticket.loaded.recipe.template,
                    chat_template=info.chat_template, prompt=prompt, model=name,
                )
            sampling = replace(ticket.options.sampling(), grammar=prompting.grammar_for(req.format))
        except BaseException:
            scheduler.release(ticket)
            raise

        async def chunks() -> AsyncIterator[GenerateResponse]:
            try:
                async for event in scheduler.stream(ticket, prompt, sampling=sampling, context=req.context or None):
                    thought, text, _calls = reply.feed(event.text, event.done)
                    if event.done:
                        yield GenerateResponse(
                            model=name, created_at=now_rfc3339(), response=text, thinking=thought or None, done=True,
                            context=event.tokens, **done_fields(ticket, event, t_start),
                        )
                    elif text or thought:
                        yield GenerateResponse(model=name, created_at=now_rfc3339(), response=text, thinking=thought or None, done=False)
            finally:
                scheduler.release(ticket)

        def merge(items: list[BaseModel]) -> BaseModel:
            thought = "".join(i.thinking or "" for i in items)  # type: ignore[attr-defined]
            return items[-1].model_copy(update={"response": "".join(i.response for i in items), "thinking": thought or None})  # type: ignore[attr-defined]

        return await ndjson_or_single(chunks(), req.stream, merge, request=request)

    @app.post("/api/chat", response_model=ChatResponse)
    async def chat(request: Request) -> Response:
        req: ChatRequest = await parse_body(request, ChatRequest)
        t_start = time.perf_counter()
        ticket = await scheduler.acquire(req.model, req.options, req.keep_alive, req.backend)
        name = ticket.loaded.recipe.name.display
        if not req.messages:
            scheduler.release(ticket)
            return JSONResponse(
                ChatResponse(model=name, created_at=now_rfc3339(), done=True, done_reason="unload" if ticket.loaded.keep_alive == 0 else "load").model_dump(exclude_none=True)
            )
        info = ticket.loaded.worker.wait_loaded().info
        try:
            msgs = prompting.chat_messages(ticket.loaded.recipe, list(req.messages))
            prompt = prompting.render(ticket.loaded.recipe, info, msgs, tools=req.tools, think=req.think)
            reply = Reply.for_request(
                think=req.think, tools=req.tools, template=ticket.loaded.recipe.template,
                chat_template=info.chat_template, prompt=prompt, model=name,
            )
            sampling = replace(ticket.options.sampling(), grammar=prompting.grammar_for(req.format))
        except BaseException:
            scheduler.release(ticket)
            raise

        async def chunks() -> AsyncIterator[ChatResponse]:
            try:
                async for event in scheduler.stream(ticket, prompt, sampling=sampling):
                    thought, text, calls = reply.feed(event.text, event.done)
                    message = Message(role="assistant", content=text, thinking=thought or None, tool_calls=calls or None)
                    if event.done:
                        yield ChatResponse(
                            model=name, created_at=now_rfc3339(), message=message, done=True,
                            **done_fields(ticket, event, t_start),
                        )
                    elif text or calls or thought:
                        yield ChatResponse(model=name, created_at=now_rfc3339(), message=message, done=False)
            finally:
                scheduler.release(ticket)

        def merge(items: list[BaseModel]) -> BaseModel:
            text = "".join(i.message.content for i in items)  # type: ignore[attr-defined]
            calls = [c for i in items for c in i.message.tool_calls or []]  # type: ignore[attr-defined]
            thought = "".join(i.message.thinking or "" for i in items)  # type: ignore[attr-defined]
            message = Message(role="assistant", content=text, thinking=thought or None, tool_calls=calls or None)
            return items[-1].model_copy(update={"message": message})

        return await ndjson_or_single(chunks(), req.stream, merge, request=request)

    async def embed_texts(
        model: str, texts: list[str], options: Any, keep_alive: Any, backend: str | None, truncate: bool = True
    ) -> tuple[Ticket, list[list[float]], int]:
        ticket = await scheduler.acquire(model, options, keep_alive, backend)
        try:
            vectors, count = await scheduler.embed(ticket, texts, truncate=truncate) if texts else ([], 0)
        finally:
            scheduler.release(ticket)
        return ticket, vectors, count

    @app.post("/api/embed", response_model=EmbedResponse)
    async def embed(request: Request) -> Response:
        req: EmbedRequest = await parse_body(request, EmbedRequest)
        t_start = time.perf_counter()
        texts = [req.input] if isinstance(req.input, str) else list(req.input)
        truncate = req.truncate is not False  # Ollama cuts long inputs to the context unless told not to
        ticket, vectors, count = await embed_texts(req.model, texts, req.options, req.keep_alive, req.backend, truncate)
        out = [normalise(v[: req.dimensions] if req.dimensions else v) for v in vectors]
        return JSONResponse(
            EmbedResponse(
                model=ticket.loaded.recipe.name.display, embeddings=out,
                total_duration=int((time.perf_counter() - t_start) * 1e9),
                load_duration=int(ticket.load_duration * 1e9), prompt_eval_count=count,
            ).model_dump()
        )

    @app.post("/api/embeddings", response_model=EmbeddingsResponse)
    async def embeddings(request: Request) -> Response:
        req: EmbeddingsRequest = await parse_body(request, EmbeddingsRequest)
        _ticket, vectors, _count = await embed_texts(req.model, [req.prompt] if req.prompt else [], req.options, req.keep_alive, req.backend)
        # The legacy endpoint returns the raw (unnormalised) vector, as Ollama's does.
        return JSONResponse(EmbeddingsResponse(embedding=vectors[0] if vectors else []).model_dump())

    @app.get("/api/tags", response_model=ListResponse)
    async def tags() -> ListResponse:
        from corral.models.recipes import details_of

        models = []
        for stored in scheduler.store.list():
            models.append(
                ListModel(
                    name=stored.name.display, model=stored.name.display,
                    modified_at=stored.modified_at.isoformat().replace("+00:00", "Z"),
                    size=stored.manifest.size, digest=stored.manifest_digest.removeprefix("sha256:"),
                    details=details_of(scheduler.store, stored.manifest),
                )
            )
        return ListResponse(models=models)

    @app.get("/api/ps", response_model=ProcessResponse)
    async def ps() -> ProcessResponse:
        from corral.models.recipes import details_of

        out = []
        for loaded in scheduler.ps():
            expires = loaded.expires_wall()
            runner = loaded.worker.runner
            size, vram = loaded.size, loaded.size_on_device
            out.append(
                ProcessModel(
                    name=loaded.recipe.name.display, model=loaded.recipe.name.display, size=size,
                    digest=loaded.recipe.digest.removeprefix("sha256:"),
                    details=details_of(scheduler.store, loaded.recipe.manifest),
                    expires_at=now_rfc3339(expires) if expires is not None else "0001-01-01T00:00:00Z",
                    size_vram=vram, context_length=runner.info.n_ctx if runner else None,
                    processor=loaded.plan.processor_label if loaded.plan else processor_label(size, vram, loaded.backend),
                )
            )
        return ProcessResponse(models=out)

    _include_routers(app, scheduler, settings)
    return app


def processor_label(size: int, vram: int, backend: str) -> str:
    if vram <= 0 or size <= 0:
        return "100% CPU"
    if vram >= size:
        return "100% GPU"
    gpu = round(100 * vram / size)
    return f"{100 - gpu}%/{gpu}% CPU/GPU"


def normalise(vector: list[float]) -> list[float]:
    arr = np.asarray(vector, dtype=np.float64)
    norm = float(np.linalg.norm(arr))
    return (arr / norm).tolist() if norm > 0 else arr.tolist()


def openai_error(status: int, message: str) -> JSONResponse:
    kind = {400: "invalid_request_error", 404: "invalid_request_error", 503: "server_error"}.get(status, "api_error")
    return JSONResponse({"error": {"message": message, "type": kind, "param": None, "code": None}}, status_code=status)


def _include_routers(app: FastAPI, scheduler: Scheduler, settings: Settings) -> None:
    """The OpenAI-compatible API and model management live in their own modules."""
    from corral.server import model_routes as api_models
    from corral.server import openai as openai_api

    openai_api.register(app, scheduler, settings)
    api_models.register(app, scheduler, settings)
