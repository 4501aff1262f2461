"""Ollama's API, /api/*: generate, chat, embed, tags, ps, version. Wire formats only; each request's
life is ``runtime.generation``'s, and ``ollama_error`` is where errors become Ollama's statuses."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel

from corral import __version__
from corral.errors import CorralError
from corral.models.recipes import details_of
from corral.runtime import generation
from corral.runtime.generation import ChatPrompt, GeneratePrompt, Generation, InsertPrompt, RawPrompt, Target
from corral.runtime.render_only import render_only
from corral.runtime.worker import Event
from corral.server.http import (
    CLIENT_CLOSED,
    ClientGone,
    SchedulerDep,
    answering_errors,
    error_body,
    first_error,
    json_body,
    ndjson_or_single,
    now_rfc3339,
    parse_body,
)
from corral.types import (
    ChatRequest,
    ChatResponse,
    DebugInfo,
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
    logprobs_wanted,
)

log = logging.getLogger("corral.server.ollama")


def ollama_error(_request: Request, exc: Exception) -> Response | None:
    """Ollama's answer to an error: ``{"error": "..."}`` with the error's status (None: a fault, re-raised)."""
    if isinstance(exc, CorralError):
        return error_body(str(exc), exc.status_code)
    if isinstance(exc, RequestValidationError):
        return error_body(first_error(exc.errors()), 400)
    if isinstance(exc, ClientGone):  # a non-streamed answer whose client left: its job is cancelled already
        return Response(status_code=CLIENT_CLOSED)
    return None


OllamaRoute = answering_errors(ollama_error)
router = APIRouter(route_class=OllamaRoute)


@router.get("/api/version")
async def version() -> dict[str, str]:
    return {"version": __version__}


def _done_fields(gen: Generation, event: Event) -> dict[str, Any]:
    stats = event.stats
    fields: dict[str, Any] = {
        "done_reason": event.done_reason,
        "total_duration": gen.total_duration_ns(),
        "load_duration": int(gen.load_duration * 1e9),
    }
    if stats is not None:
        fields.update(
            # As Ollama: the whole prompt, of which prompt_eval_cached_count were read from the prefix cache.
            prompt_eval_count=stats.prompt_eval_count + stats.cached_tokens,
            prompt_eval_cached_count=stats.cached_tokens,
            prompt_eval_duration=stats.prompt_eval_duration,
            eval_count=stats.eval_count,
            eval_duration=stats.eval_duration,
        )
    return fields


async def _loaded_only(
    scheduler: SchedulerDep, target: Target, response: type[GenerateResponse | ChatResponse]
) -> Response:
    loaded = await generation.load(scheduler, target)
    answer = response(
        model=loaded.model, created_at=now_rfc3339(), done=True, done_reason="unload" if loaded.unloading else "load"
    )
    return JSONResponse(answer.model_dump(exclude_none=True))


async def _rendered_only(
    scheduler: SchedulerDep, target: Target, prompt: generation.Prompt, response: type[GenerateResponse | ChatResponse],
    image_count: int = 0,
) -> Response:
    """``_debug_render_only``: the rendered prompt in ``_debug_info``, and no model loaded to get it."""
    rendered = await render_only(scheduler, target, prompt, image_count)
    debug = DebugInfo(rendered_template=rendered.text, image_count=rendered.image_count)
    answer = response(model=rendered.model, created_at=now_rfc3339(), done=True, debug_info=debug)
    return JSONResponse(answer.model_dump(mode="json", exclude_none=True, by_alias=True))


class _PendingLogprobs:
    """Token logprobs not yet sent: a line goes out only with text, so tokens held back (a tool call
    being read, a possible stop sequence) bring theirs in a later line."""

    def __init__(self, wanted: int | None) -> None:
        self.items: list[dict[str, Any]] | None = [] if wanted is not None else None

    def add(self, event: Event) -> None:
        if self.items is not None and event.logprobs:
            self.items.extend(event.logprobs)

    def take(self) -> list[dict[str, Any]] | None:
        taken = self.items
        if taken is not None:
            self.items = []
        return taken


def _joined(items: list[BaseModel]) -> list[dict[str, Any]] | None:
    found = [i.logprobs for i in items if i.logprobs is not None]  # type: ignore[attr-defined]
    return [entry for part in found for entry in part] if found else None


@router.post("/api/generate", response_model=GenerateResponse, openapi_extra=json_body(GenerateRequest))
async def generate(request: Request, scheduler: SchedulerDep) -> Response:
    req = await parse_body(request, GenerateRequest)
    target = Target(req.model, req.options, req.keep_alive, req.backend)
    if not req.prompt and not req.context:  # an empty prompt only loads the model (keep_alive 0: unloads it)
        return await _loaded_only(scheduler, target, GenerateResponse)
    prompt: generation.Prompt
    if req.raw:
        prompt = RawPrompt(req.prompt or "")
    elif req.suffix:
        prompt = InsertPrompt(req.prompt or "", req.suffix, template=req.template)
    else:
        prompt = GeneratePrompt(req.prompt or "", req.system, think=req.think, template=req.template)
    if req.debug_render_only:
        return await _rendered_only(scheduler, target, prompt, GenerateResponse, len(req.images or []))
    wanted = logprobs_wanted(req.logprobs, req.top_logprobs)
    shift, truncate = req.shift is not False, req.truncate is True  # Ollama's shift default; Corral's truncate
    gen = await generation.generate(
        scheduler, target, prompt, format=req.format, context=req.context, logprobs=wanted, shift=shift,
        truncate=truncate,
    )  # fmt: skip
    pending = _PendingLogprobs(wanted)

    async def chunks() -> AsyncGenerator[BaseModel, None]:
        async for piece in gen.pieces():
            thinking = piece.thinking or None
            pending.add(piece.event)
            if piece.done:
                yield GenerateResponse(
                    model=gen.model,
                    created_at=now_rfc3339(),
                    response=piece.content,
                    thinking=thinking,
                    done=True,
                    context=piece.event.tokens,
                    logprobs=pending.take(),
                    **_done_fields(gen, piece.event),
                )
            elif piece.content or piece.thinking:
                yield GenerateResponse(
                    model=gen.model, created_at=now_rfc3339(), response=piece.content, thinking=thinking, done=False,
                    logprobs=pending.take(),
                )

    def merge(items: list[BaseModel]) -> BaseModel:
        thought = "".join(i.thinking or "" for i in items)  # type: ignore[attr-defined]
        text = "".join(i.response for i in items)  # type: ignore[attr-defined]
        return items[-1].model_copy(update={"response": text, "thinking": thought or None, "logprobs": _joined(items)})

    return await ndjson_or_single(chunks(), req.stream, merge, request, on_close=gen.close)


@router.post("/api/chat", response_model=ChatResponse, openapi_extra=json_body(ChatRequest))
async def chat(request: Request, scheduler: SchedulerDep) -> Response:
    req = await parse_body(request, ChatRequest)
    target = Target(req.model, req.options, req.keep_alive, req.backend)
    if not req.messages:
        return await _loaded_only(scheduler, target, ChatResponse)
    tools = None if req.tool_choice == "none" else req.tools
    prompt = ChatPrompt(list(req.messages), tools=tools, think=req.think, tool_choice=req.tool_choice)
    if req.debug_render_only:
        return await _rendered_only(scheduler, target, prompt, ChatResponse)
    wanted = logprobs_wanted(req.logprobs, req.top_logprobs)
    shift, truncate = req.shift is not False, req.truncate is True  # Ollama's shift default; Corral's truncate
    gen = await generation.generate(
        scheduler, target, prompt, format=req.format, logprobs=wanted, shift=shift, truncate=truncate
    )
    pending = _PendingLogprobs(wanted)

    async def chunks() -> AsyncGenerator[BaseModel, None]:
        async for piece in gen.pieces():
            pending.add(piece.event)
            message = Message(
                role="assistant",
                content=piece.content,
                thinking=piece.thinking or None,
                tool_calls=piece.tool_calls or None,
            )
            if piece.done:
                yield ChatResponse(
                    model=gen.model,
                    created_at=now_rfc3339(),
                    message=message,
                    done=True,
                    logprobs=pending.take(),
                    **_done_fields(gen, piece.event),
                )
            elif piece.content or piece.tool_calls or piece.thinking:
                yield ChatResponse(
                    model=gen.model, created_at=now_rfc3339(), message=message, done=False, logprobs=pending.take()
                )

    def merge(items: list[BaseModel]) -> BaseModel:
        text = "".join(i.message.content for i in items)  # type: ignore[attr-defined]
        calls = [c for i in items for c in i.message.tool_calls or []]  # type: ignore[attr-defined]
        thought = "".join(i.message.thinking or "" for i in items)  # type: ignore[attr-defined]
        message = Message(role="assistant", content=text, thinking=thought or None, tool_calls=calls or None)
        return items[-1].model_copy(update={"message": message, "logprobs": _joined(items)})

    return await ndjson_or_single(chunks(), req.stream, merge, request, on_close=gen.close)


@router.post("/api/embed", response_model=EmbedResponse, openapi_extra=json_body(EmbedRequest))
async def embed(request: Request, scheduler: SchedulerDep) -> Response:
    req = await parse_body(request, EmbedRequest)
    started = time.perf_counter()
    texts = [req.input] if isinstance(req.input, str) else list(req.input)
    truncate = req.truncate is not False  # Ollama cuts long inputs to the context unless told not to
    target = Target(req.model, req.options, req.keep_alive, req.backend)
    done = await generation.embed(scheduler, target, texts, truncate=truncate)
    return JSONResponse(
        EmbedResponse(
            model=done.model,
            embeddings=[generation.normalise(v, req.dimensions) for v in done.vectors],
            total_duration=int((time.perf_counter() - started) * 1e9),
            load_duration=int(done.load_duration * 1e9),
            prompt_eval_count=done.prompt_tokens,
        ).model_dump()
    )


@router.post("/api/embeddings", response_model=EmbeddingsResponse, openapi_extra=json_body(EmbeddingsRequest))
async def embeddings(request: Request, scheduler: SchedulerDep) -> Response:
    req = await parse_body(request, EmbeddingsRequest)
    target = Target(req.model, req.options, req.keep_alive, req.backend)
    done = await generation.embed(scheduler, target, [req.prompt] if req.prompt else [])
    # The legacy endpoint returns the raw (unnormalised) vector, as Ollama's does.
    return JSONResponse(EmbeddingsResponse(embedding=done.vectors[0] if done.vectors else []).model_dump())


@router.get("/api/tags", response_model=ListResponse)
async def tags(scheduler: SchedulerDep) -> ListResponse:
    store = scheduler.store
    models = [
        ListModel(
            name=stored.name.display,
            model=stored.name.display,
            modified_at=stored.modified_at.isoformat().replace("+00:00", "Z"),
            size=stored.manifest.size,
            digest=stored.manifest_digest.removeprefix("sha256:"),
            details=details_of(store, stored.manifest),
        )
        for stored in await asyncio.to_thread(store.list)
    ]
    return ListResponse(models=models)


@router.get("/api/ps", response_model=ProcessResponse)
async def ps(scheduler: SchedulerDep) -> ProcessResponse:
    out = []
    for loaded in scheduler.ps():
        expires = loaded.expires_wall()
        runner = loaded.worker.runner
        size, vram = loaded.size, loaded.size_on_device
        out.append(
            ProcessModel(
                name=loaded.recipe.name.display,
                model=loaded.recipe.name.display,
                size=size,
                digest=loaded.recipe.digest.removeprefix("sha256:"),
                details=details_of(scheduler.store, loaded.recipe.manifest),
                expires_at=now_rfc3339(expires) if expires is not None else "0001-01-01T00:00:00Z",
                size_vram=vram,
                context_length=runner.info.n_ctx if runner else None,
                processor=loaded.plan.processor_label if loaded.plan else processor_label(size, vram, loaded.backend),
            )
        )
    return ProcessResponse(models=out)


def processor_label(size: int, vram: int, backend: str) -> str:
    if vram <= 0 or size <= 0:
        return "100% CPU"
    if vram >= size:
        return "100% GPU"
    gpu = round(100 * vram / size)
    return f"{100 - gpu}%/{gpu}% CPU/GPU"
