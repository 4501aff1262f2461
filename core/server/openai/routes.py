"""OpenAI's /v1 routes: wire formats only, around ``runtime.generation``; ``openai_error`` is where
errors become OpenAI's statuses and error objects.

A stream reports an error found before its first chunk as a status, and one found later as a last
``data: {"error": …}`` event. The model is released however a request ends, and a client that goes
away cancels its job.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import secrets
import struct
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response

from corral.errors import CorralError, InvalidName, ModelNotFound
from corral.models.names import ModelName
from corral.runtime import generation
from corral.runtime.generation import ChatPrompt, Generation, InsertPrompt, Piece, RawPrompt, Target
from corral.runtime.worker import Event
from corral.server.http import (
    CLIENT_CLOSED,
    ClientGone,
    InvalidParam,
    SchedulerDep,
    answering_errors,
    event_stream,
    first_error,
    json_body,
    parse_body,
    sse,
    unless_disconnected,
)
from corral.server.openai.translate import (
    chat_messages,
    check_n,
    completion_prompt,
    finish_reason,
    model_object,
    openai_tool_calls,
    request_options,
    response_format,
    usage_of,
)
from corral.server.openai.types import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    error_object,
    error_of,
)
from corral.types import Options, logprobs_wanted

log = logging.getLogger("corral.openai")

FINGERPRINT = "fp_corral"
SSE_DONE = b"data: [DONE]\n\n"


def openai_error(request: Request, exc: Exception) -> Response:
    """OpenAI's answer to an error: its status and error object; a bug is a logged 500 in that shape too."""
    if isinstance(exc, ClientGone):  # a non-streamed answer whose client left: its job is cancelled already
        return Response(status_code=CLIENT_CLOSED)
    if isinstance(exc, RequestValidationError):
        return JSONResponse(error_object(400, first_error(exc.errors())), status_code=400)
    if not isinstance(exc, CorralError):
        log.exception("%s %s failed", request.method, request.url.path)
    status, body = error_of(exc)
    return JSONResponse(body, status_code=status)


router = APIRouter(route_class=answering_errors(openai_error))


async def _sse_stream(chunks: AsyncIterator[bytes], what: str) -> AsyncIterator[bytes]:
    """The events of one stream, then ``[DONE]``; an error mid-stream becomes a final error event
    (and no ``[DONE]``)."""
    try:
        async for piece in chunks:
            yield piece
        yield SSE_DONE
    except Exception as exc:
        if not isinstance(exc, CorralError):
            log.exception("%s stream failed", what)
        yield sse(error_of(exc)[1])


def _event_stream(body: AsyncIterator[bytes], gen: Generation, what: str) -> Response:
    return event_stream(_sse_stream(body, what), gen.close)


def _chat_logprobs(pieces: list[Piece], wanted: int | None) -> dict[str, Any] | None:
    """Chat's ``choice.logprobs``: ``{"content": [{token, logprob, bytes, top_logprobs}, ...]}``."""
    if wanted is None:
        return None
    return {"content": [entry for piece in pieces for entry in piece.event.logprobs or []], "refusal": None}


def _completion_logprobs(pieces: list[Piece], offset: int) -> dict[str, Any]:
    """The legacy completions shape: parallel lists, alternatives as ``{token: logprob}``."""
    entries = [entry for piece in pieces for entry in piece.event.logprobs or []]
    offsets = []
    for entry in entries:
        offsets.append(offset)
        offset += len(entry["token"])
    return {
        "tokens": [e["token"] for e in entries],
        "token_logprobs": [e["logprob"] for e in entries],
        "top_logprobs": [{t["token"]: t["logprob"] for t in e["top_logprobs"]} for e in entries],
        "text_offset": offsets,
    }


def _final(pieces: list[Piece]) -> Event:
    return pieces[-1].event if pieces and pieces[-1].done else Event(done=True, done_reason="stop")


@router.post("/v1/chat/completions", openapi_extra=json_body(ChatCompletionRequest))
async def chat_completions(request: Request, scheduler: SchedulerDep) -> Response:
    req = await parse_body(request, ChatCompletionRequest)
    check_n(req.n)
    messages = chat_messages(req.messages)
    fmt = response_format(req.response_format)
    num_predict = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
    target = Target(req.model, request_options(req, num_predict), req.keep_alive, req.backend)
    offered = req.tools if req.tool_choice != "none" else None
    effort = req.reasoning_effort or (req.reasoning or {}).get("effort")
    prompt = ChatPrompt(messages, tools=offered, think=effort, tool_choice=req.tool_choice)
    wanted = logprobs_wanted(req.logprobs, req.top_logprobs)
    shift = req.shift is not False
    gen = await generation.generate(scheduler, target, prompt, format=fmt, logprobs=wanted, shift=shift)
    cid, created = f"chatcmpl-{secrets.token_hex(12)}", int(time.time())
    include_usage = bool(req.stream_options and req.stream_options.include_usage)

    if not req.stream:
        pieces = await unless_disconnected(request, gen.collect())
        called = [call for piece in pieces for call in piece.tool_calls]
        message: dict[str, Any] = {"role": "assistant", "content": "".join(piece.content for piece in pieces)}
        if called:
            message = {"role": "assistant", "content": message["content"] or None,
                       "tool_calls": openai_tool_calls(called, streaming=False)}  # fmt: skip
        if thought := "".join(piece.thinking for piece in pieces):
            message["reasoning"] = thought  # Ollama's field for the trace
        final = _final(pieces)
        return JSONResponse(
            {
                "id": cid,
                "object": "chat.completion",
                "created": created,
                "model": gen.model,
                "system_fingerprint": FINGERPRINT,
                "choices": [
                    {
                        "index": 0,
                        "message": message,
                        "logprobs": _chat_logprobs(pieces, wanted),
                        "finish_reason": finish_reason(final, bool(called)),
                    }
                ],
                "usage": usage_of(final.stats),
            }
        )

    held: list[Piece] = []  # pieces whose token logprobs have not gone out yet

    def chunk(delta: dict[str, Any], finish: str | None, usage: dict[str, int] | None = None) -> bytes:
        logprobs = _chat_logprobs(held, wanted) if delta.get("content") or finish else None
        if logprobs is not None:
            held.clear()
        obj: dict[str, Any] = {
            "id": cid,
            "object": "chat.completion.chunk",
            "created": created,
            "model": gen.model,
            "system_fingerprint": FINGERPRINT,
            "choices": [{"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish}],
        }
        if include_usage:
            obj["usage"] = None
        if usage is not None:
            obj["choices"], obj["usage"] = [], usage
        return sse(obj)

    async def body() -> AsyncIterator[bytes]:
        yield chunk({"role": "assistant", "content": ""}, None)
        called = False
        async for piece in gen.pieces():
            held.append(piece)
            if piece.thinking:
                yield chunk({"reasoning": piece.thinking}, None)
            if piece.content:
                yield chunk({"content": piece.content}, None)
            if piece.tool_calls:
                called = True
                yield chunk({"tool_calls": openai_tool_calls(piece.tool_calls, streaming=True)}, None)
            if piece.done:
                yield chunk({}, finish_reason(piece.event, called))
                if include_usage:
                    yield chunk({}, None, usage=usage_of(piece.event.stats))

    return _event_stream(body(), gen, "chat completion")


@router.post("/v1/completions", openapi_extra=json_body(CompletionRequest))
async def completions(request: Request, scheduler: SchedulerDep) -> Response:
    req = await parse_body(request, CompletionRequest)
    check_n(req.n, req.best_of)
    prompt = completion_prompt(req.prompt)
    echo = bool(req.echo)
    if echo and not isinstance(prompt, str):
        raise InvalidParam("echo needs a text prompt, not token ids", "echo")
    what: generation.Prompt = RawPrompt(prompt, required=True)
    if req.suffix:  # fill in the middle, through the model's template
        if not isinstance(prompt, str):
            raise InvalidParam("suffix needs a text prompt, not token ids", "suffix")
        what = InsertPrompt(prompt, req.suffix)
    target = Target(req.model, request_options(req, req.max_tokens), req.keep_alive, req.backend)
    gen = await generation.generate(scheduler, target, what, logprobs=req.logprobs, shift=req.shift is not False)
    cid, created = f"cmpl-{secrets.token_hex(12)}", int(time.time())
    include_usage = bool(req.stream_options and req.stream_options.include_usage)
    prefix = prompt if echo and isinstance(prompt, str) else ""

    def completion(
        text: str,
        finish: str | None,
        usage: dict[str, Any] | None = None,
        pieces: list[Piece] | None = None,
        offset: int = 0,
    ) -> dict[str, Any]:
        logprobs = _completion_logprobs(pieces or [], offset) if req.logprobs is not None else None
        obj: dict[str, Any] = {
            "id": cid,
            "object": "text_completion",
            "created": created,
            "model": gen.model,
            "system_fingerprint": FINGERPRINT,
            "choices": [{"text": text, "index": 0, "logprobs": logprobs, "finish_reason": finish}],
        }
        if usage is not None:
            obj["usage"] = usage
        return obj

    if not req.stream:
        pieces = await unless_disconnected(request, gen.collect())
        final = _final(pieces)
        text = prefix + "".join(piece.content for piece in pieces)
        return JSONResponse(completion(text, finish_reason(final), usage_of(final.stats), pieces, len(prefix)))

    sent = [len(prefix)]  # characters streamed so far, for text_offset

    def chunk(text: str, finish: str | None, piece: Piece | None = None) -> bytes:
        obj = completion(text, finish, pieces=[piece] if piece else [], offset=sent[0])
        sent[0] += len(text)
        if include_usage:
            obj["usage"] = None
        return sse(obj)

    async def body() -> AsyncIterator[bytes]:
        if prefix:
            yield chunk(prefix, None)
        async for piece in gen.pieces():
            if piece.content or (piece.event.logprobs and not piece.done):
                yield chunk(piece.content, None, piece)
            if piece.done:
                yield chunk("", finish_reason(piece.event), piece if not piece.content else None)
                if include_usage:
                    usage_chunk = completion("", None, usage_of(piece.event.stats))
                    usage_chunk["choices"] = []
                    yield sse(usage_chunk)

    return _event_stream(body(), gen, "completion")


@router.post("/v1/embeddings", openapi_extra=json_body(EmbeddingRequest))
async def embeddings(request: Request, scheduler: SchedulerDep) -> Response:
    req = await parse_body(request, EmbeddingRequest)
    if isinstance(req.input, str):
        texts = [req.input]
    elif all(isinstance(t, str) for t in req.input):
        texts = list(req.input)  # type: ignore[arg-type]
    else:
        raise InvalidParam("token-id inputs are not supported: send text", "input")
    if not texts:
        raise InvalidParam("input is empty", "input")
    encoding = (req.encoding_format or "float").lower()
    if encoding not in ("float", "base64"):
        raise InvalidParam(f"invalid encoding_format '{req.encoding_format}': use float or base64", "encoding_format")
    target = Target(req.model, Options.parse(req.options), req.keep_alive, req.backend)
    done = await generation.embed(scheduler, target, texts)
    data = []
    for i, vector in enumerate(done.vectors):
        unit = generation.normalise(vector, req.dimensions)
        embedding: list[float] | str = unit
        if encoding == "base64":
            embedding = base64.b64encode(struct.pack(f"<{len(unit)}f", *unit)).decode("ascii")
        data.append({"object": "embedding", "embedding": embedding, "index": i})
    usage = {"prompt_tokens": done.prompt_tokens, "total_tokens": done.prompt_tokens}
    return JSONResponse({"object": "list", "data": data, "model": done.model, "usage": usage})


@router.get("/v1/models")
async def list_models(scheduler: SchedulerDep) -> Response:
    stored = await asyncio.to_thread(scheduler.store.list)
    return JSONResponse({"object": "list", "data": [model_object(m) for m in stored]})


@router.get("/v1/models/{model:path}")
async def get_model(model: str, scheduler: SchedulerDep) -> Response:
    try:
        name = ModelName.parse(model)
        stored = await asyncio.to_thread(scheduler.store.get, name)
    except (InvalidName, ModelNotFound):
        raise ModelNotFound(f'model "{model}" not found') from None
    return JSONResponse(model_object(stored))
