"""Anthropic's Messages API, /v1/messages and /v1/messages/count_tokens: wire formats only, around
``runtime.generation``; ``anthropic_error`` is where errors become Anthropic's error objects.

Blocks map onto Corral's messages as Ollama's compatibility layer maps them: ``text`` is content,
``image`` (base64) an image, an assistant's ``tool_use`` a tool call, a user's ``tool_result`` a
``tool`` message named after the call it answers. ``tool_choice`` any/tool force a call (a grammar),
``none`` hides the tools; ``thinking`` enabled asks the template to think. A stream is Anthropic's
event sequence: message_start, ping, content_block_start/delta/stop per block, message_delta,
message_stop; an error after it started is a last ``error`` event.
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import AsyncIterator
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from corral.errors import BadRequest, CorralError
from corral.runtime import generation
from corral.runtime.generation import ChatPrompt, Piece, Target
from corral.runtime.worker import Event, Stats
from corral.server.http import (
    CLIENT_CLOSED,
    ClientGone,
    ClosingStream,
    SchedulerDep,
    answering_errors,
    first_error,
    json_body,
    parse_body,
    sse,
    unless_disconnected,
)
from corral.types import Message, Options

log = logging.getLogger("corral.anthropic")

_KINDS = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error", 404: "not_found_error",
          413: "request_too_large", 429: "rate_limit_error", 503: "overloaded_error"}  # fmt: skip


def anthropic_error(request: Request, exc: Exception) -> Response:
    """Anthropic's error object, ``{"type": "error", "error": {"type", "message"}}``; a bug is a logged 500."""
    if isinstance(exc, ClientGone):
        return Response(status_code=CLIENT_CLOSED)
    if isinstance(exc, RequestValidationError):
        return JSONResponse(error_object(400, first_error(exc.errors())), status_code=400)
    if not isinstance(exc, CorralError):
        log.exception("%s %s failed", request.method, request.url.path)
        return JSONResponse(error_object(500, f"internal error: {type(exc).__name__}"), status_code=500)
    return JSONResponse(error_object(exc.status_code, str(exc)), status_code=exc.status_code)


def error_object(status: int, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": _KINDS.get(status, "api_error"), "message": message}}


router = APIRouter(route_class=answering_errors(anthropic_error))


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


class MessageIn(_Body):
    role: Literal["user", "assistant"]
    content: str | list[dict[str, Any]]


class CountTokensRequest(_Body):
    model: str
    messages: list[MessageIn] = Field(min_length=1)
    system: str | list[dict[str, Any]] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: dict[str, Any] | None = None
    thinking: dict[str, Any] | None = None


class MessagesRequest(CountTokensRequest):
    max_tokens: int = Field(ge=1)
    stop_sequences: list[str] | None = None
    temperature: float | None = Field(None, ge=0, le=1)
    top_k: int | None = Field(None, ge=0)
    top_p: float | None = Field(None, ge=0, le=1)
    stream: bool = False
    # Corral's (and Ollama's) own fields
    options: dict[str, Any] | None = None
    keep_alive: float | str | None = None
    backend: str | None = None


# ---- request -> Corral ------------------------------------------------------------------------------


def _text_of(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(b.get("text", "") for b in content if isinstance(b, dict) and b.get("type") == "text")
    raise BadRequest(f"{where}: content must be a string or a list of blocks")


def chat_messages(req: CountTokensRequest) -> list[Message]:
    out: list[Message] = []
    if req.system:
        out.append(Message(role="system", content=_text_of(req.system, "system")))
    names: dict[str, str] = {}  # tool_use id -> function name, for the results that answer them
    for i, msg in enumerate(req.messages):
        where = f"messages[{i}]"
        blocks = [{"type": "text", "text": msg.content}] if isinstance(msg.content, str) else msg.content
        texts: list[str] = []
        images: list[str] = []
        calls: list[dict[str, Any]] = []
        for j, block in enumerate(blocks):
            kind = block.get("type") if isinstance(block, dict) else None
            if kind == "text" and isinstance(block.get("text"), str):
                texts.append(block["text"])
            elif kind == "image" and isinstance(block.get("source"), dict) and block["source"].get("type") == "base64":
                images.append(str(block["source"].get("data", "")))
            elif kind == "tool_use" and msg.role == "assistant" and isinstance(block.get("name"), str):
                names[str(block.get("id", ""))] = block["name"]
                arguments = block.get("input") if isinstance(block.get("input"), dict) else {}
                calls.append({"function": {"name": block["name"], "arguments": arguments}})
            elif kind == "tool_result" and msg.role == "user":
                result = block.get("content", "")
                out.append(Message(role="tool", content=_text_of(result, f"{where}.content[{j}]"), tool_name=names.get(str(block.get("tool_use_id")))))
            elif kind in ("thinking", "redacted_thinking"):
                continue  # an earlier turn's reasoning is not shown to the model again
            else:
                raise BadRequest(f"{where}.content[{j}]: unsupported block type '{kind}'")
        if texts or images or calls or not blocks:
            out.append(Message(role=msg.role, content="\n".join(texts), images=images or None, tool_calls=calls or None))
    return out


def tools_and_choice(req: CountTokensRequest) -> tuple[list[dict[str, Any]] | None, str | dict[str, Any] | None]:
    """Anthropic's tools as Ollama's, and its tool_choice as OpenAI's (which generation enforces)."""
    tools = [
        {"type": "function", "function": {"name": t.get("name"), "description": t.get("description", ""),
                                          "parameters": t.get("input_schema") or {"type": "object"}}}
        for t in req.tools or [] if isinstance(t, dict) and t.get("name")
    ]  # fmt: skip
    choice = (req.tool_choice or {}).get("type", "auto")
    if choice == "none":
        return None, None
    if choice == "any":
        return tools, "required"
    if choice == "tool":
        return tools, {"type": "function", "function": {"name": (req.tool_choice or {}).get("name")}}
    if choice != "auto":
        raise BadRequest(f"invalid tool_choice type '{choice}': use auto, any, tool or none")
    return tools or None, None


def _think(req: CountTokensRequest) -> bool | None:
    kind = (req.thinking or {}).get("type")
    return True if kind == "enabled" else False if kind == "disabled" else None


def _options(req: MessagesRequest) -> Options:
    data = dict(Options.parse(req.options).model_dump(exclude_none=True))
    fields = {"num_predict": req.max_tokens, "temperature": req.temperature, "top_k": req.top_k, "top_p": req.top_p, "stop": req.stop_sequences}
    data.update({k: v for k, v in fields.items() if v is not None})
    return Options.parse(data)


def usage_of(stats: Stats | None) -> dict[str, int]:
    cached = stats.cached_tokens if stats else 0
    return {
        "input_tokens": (stats.prompt_eval_count if stats else 0), "output_tokens": stats.eval_count if stats else 0,
        "cache_read_input_tokens": cached, "cache_creation_input_tokens": 0,
    }  # fmt: skip


def stop_reason(event: Event, called: bool) -> str:
    if called:
        return "tool_use"
    return "max_tokens" if event.done_reason == "length" else "end_turn"


# ---- routes ---------------------------------------------------------------------------------------


@router.post("/v1/messages", openapi_extra=json_body(MessagesRequest))
async def messages(request: Request, scheduler: SchedulerDep) -> Response:
    req = await parse_body(request, MessagesRequest)
    tools, choice = tools_and_choice(req)
    prompt = ChatPrompt(chat_messages(req), tools=tools, think=_think(req), tool_choice=choice)
    gen = await generation.generate(scheduler, Target(req.model, _options(req), req.keep_alive, req.backend), prompt)
    mid = f"msg_{secrets.token_hex(12)}"
    if not req.stream:
        pieces = await unless_disconnected(request, gen.collect())
        final = pieces[-1].event if pieces and pieces[-1].done else Event(done=True, done_reason="stop")
        content: list[dict[str, Any]] = []
        if thought := "".join(p.thinking for p in pieces):
            content.append({"type": "thinking", "thinking": thought, "signature": ""})
        if text := "".join(p.content for p in pieces):
            content.append({"type": "text", "text": text})
        calls = [c for p in pieces for c in p.tool_calls]
        content += [_tool_use(c) for c in calls]
        return JSONResponse({
            "id": mid, "type": "message", "role": "assistant", "model": gen.model, "content": content,
            "stop_reason": stop_reason(final, bool(calls)), "stop_sequence": None, "usage": usage_of(final.stats),
        })  # fmt: skip

    async def body() -> AsyncIterator[bytes]:
        start = {"id": mid, "type": "message", "role": "assistant", "model": gen.model, "content": [],
                 "stop_reason": None, "stop_sequence": None, "usage": usage_of(None)}  # fmt: skip
        yield sse({"type": "message_start", "message": start}, "message_start")
        yield sse({"type": "ping"}, "ping")
        blocks = _Blocks()
        called = False
        try:
            async for piece in gen.pieces():
                for kind, text in (("thinking", piece.thinking), ("text", piece.content)):
                    if text:
                        for event in blocks.delta(kind, text):
                            yield event
                for call in piece.tool_calls:
                    called = True
                    for event in blocks.tool_use(call):
                        yield event
                if piece.done:
                    for event in blocks.close():
                        yield event
                    usage = usage_of(piece.event.stats)
                    delta = {"stop_reason": stop_reason(piece.event, called), "stop_sequence": None}
                    yield sse({"type": "message_delta", "delta": delta, "usage": usage}, "message_delta")
                    yield sse({"type": "message_stop"}, "message_stop")
        except Exception as exc:
            if not isinstance(exc, CorralError):
                log.exception("messages stream failed")
            status = exc.status_code if isinstance(exc, CorralError) else 500
            yield sse(error_object(status, str(exc)), "error")

    return ClosingStream(body(), gen.close, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


def _tool_use(call: dict[str, Any]) -> dict[str, Any]:
    fn = call["function"]
    return {"type": "tool_use", "id": f"toolu_{secrets.token_hex(12)}", "name": fn["name"], "input": fn["arguments"]}


class _Blocks:
    """The open content block of a stream: a new one starts when the kind of text changes."""

    def __init__(self) -> None:
        self.index = -1
        self.open: str | None = None

    def _start(self, block: dict[str, Any]) -> list[bytes]:
        events = self.close()
        self.index += 1
        self.open = block["type"]
        return [*events, sse({"type": "content_block_start", "index": self.index, "content_block": block}, "content_block_start")]

    def delta(self, kind: str, text: str) -> list[bytes]:
        events: list[bytes] = []
        if self.open != kind:
            events = self._start({"type": "thinking", "thinking": "", "signature": ""} if kind == "thinking" else {"type": "text", "text": ""})
        delta = {"type": "thinking_delta", "thinking": text} if kind == "thinking" else {"type": "text_delta", "text": text}
        return [*events, sse({"type": "content_block_delta", "index": self.index, "delta": delta}, "content_block_delta")]

    def tool_use(self, call: dict[str, Any]) -> list[bytes]:
        block = _tool_use(call)
        arguments = json.dumps(block.pop("input"), ensure_ascii=False)
        events = self._start({**block, "input": {}})
        delta = {"type": "input_json_delta", "partial_json": arguments}
        return [*events, sse({"type": "content_block_delta", "index": self.index, "delta": delta}, "content_block_delta")]

    def close(self) -> list[bytes]:
        if self.open is None:
            return []
        self.open = None
        return [sse({"type": "content_block_stop", "index": self.index}, "content_block_stop")]


@router.post("/v1/messages/count_tokens", openapi_extra=json_body(CountTokensRequest))
async def count_tokens(request: Request, scheduler: SchedulerDep) -> Response:
    """The prompt's length in tokens: the model evaluates it (one token generated, not returned)."""
    req = await parse_body(request, CountTokensRequest)
    tools, _choice = tools_and_choice(req)
    prompt = ChatPrompt(chat_messages(req), tools=tools, think=_think(req))
    gen = await generation.generate(scheduler, Target(req.model, {"num_predict": 1}), prompt)
    pieces: list[Piece] = await unless_disconnected(request, gen.collect())
    stats = pieces[-1].event.stats if pieces and pieces[-1].done else None
    count = (stats.prompt_eval_count + stats.cached_tokens) if stats else 0
    return JSONResponse({"input_tokens": count})
