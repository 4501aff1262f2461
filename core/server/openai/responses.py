"""OpenAI's Responses API: ``POST /v1/responses``, ``GET`` and ``DELETE /v1/responses/{id}``; wire
formats only, around ``runtime.generation``, with errors answered by ``routes.openai_error``.

Input items map onto Corral's messages as Ollama's Responses layer maps them: ``instructions`` is a
system message, a ``message`` item a message (``developer`` is ``system``), a ``function_call`` an
assistant's tool call (consecutive calls make one message), a ``function_call_output`` a ``tool``
message, and an earlier ``reasoning`` item is not shown to the model again. ``tools`` (the flat
function shape), ``tool_choice`` and ``text.format`` become what /v1/chat/completions passes on, so
the same grammar forces a call or a JSON schema. Output is items too: a ``reasoning`` item (the
model's thinking, as summary text), a ``message`` with one ``output_text`` part, ``function_call``s.
A stream is OpenAI's event sequence, each event numbered: response.created, response.in_progress,
then per item output_item.added, its part and deltas, output_item.done, and response.completed (or
response.incomplete); an error after the start is an ``error`` event and response.failed.
Answers with ``store`` (the default) are kept in a bounded ``ResponseStore`` for
``previous_response_id``, which prepends that response's input and output to the new input.
"""

from __future__ import annotations

import copy
import itertools
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from corral.errors import CorralError
from corral.runtime import generation
from corral.runtime.generation import ChatPrompt, Piece, Target
from corral.runtime.render_only import render_only
from corral.runtime.worker import Event, Stats
from corral.server.http import (
    InvalidParam,
    SchedulerDep,
    answering_errors,
    event_stream,
    json_body,
    parse_body,
    sse,
    unless_disconnected,
)
from corral.server.openai.response_store import ResponseStore
from corral.server.openai.routes import openai_error
from corral.server.openai.translate import chat_messages, request_options, response_format, usage_of
from corral.server.openai.types import ChatMessageIn, ResponseFormat, ResponsesRequest, error_of
from corral.types import Message

log = logging.getLogger("corral.openai")

router = APIRouter(route_class=answering_errors(openai_error))

_ROLES = ("user", "system", "developer", "assistant")  # tuples: a fuzzed list or dict is compared, not hashed
_TEXT_PARTS = ("input_text", "output_text", "text")
Item = dict[str, Any]


# ---- request -> Corral ------------------------------------------------------------------------------


def input_items(value: str | list[Item] | None) -> list[Item]:
    """The request's ``input`` as items: a string is one user message."""
    if value is None:
        return []
    if isinstance(value, str):
        return [{"type": "message", "role": "user", "content": value}]
    return list(value)


def conversation_messages(items: list[Item], instructions: str | None = None, earlier: int = 0) -> list[Message]:
    """Items (the first ``earlier`` of them from a previous response) as Corral's messages."""
    messages: list[ChatMessageIn] = []
    labels: list[str] = []
    if instructions:
        messages.append(ChatMessageIn(role="system", content=instructions))
        labels.append("instructions")
    for i, item in enumerate(items):
        where = f"input[{i - earlier}]" if i >= earlier else "previous_response_id"
        kind = item.get("type", "message" if "role" in item else None)
        if kind == "message":
            role = item.get("role")
            if role not in _ROLES:
                raise InvalidParam(f"{where}: unknown role '{role}' (use user, system, developer or assistant)", where)
            messages.append(ChatMessageIn(role=role, content=_content(item.get("content"), where)))
        elif kind == "function_call":
            function = {"name": _string(item, "name", where), "arguments": _string(item, "arguments", where)}
            call = {"id": _string(item, "call_id", where), "type": "function", "function": function}
            last = messages[-1] if messages else None
            if last is not None and last.role == "assistant":
                last.tool_calls = [*(last.tool_calls or []), call]  # parallel calls are one assistant turn
                continue
            messages.append(ChatMessageIn(role="assistant", tool_calls=[call]))
        elif kind == "function_call_output":
            output = item.get("output")
            content = output if isinstance(output, str) else _content(output, f"{where}.output")
            messages.append(ChatMessageIn(role="tool", content=content, tool_call_id=_string(item, "call_id", where)))
        elif kind == "reasoning":
            continue  # an earlier turn's thinking is not shown to the model again
        else:
            raise InvalidParam(
                f"{where}: unsupported item type '{kind}' (use message, function_call or function_call_output)", where
            )
        labels.append(where)
    if not any(m.role != "system" for m in messages):
        raise InvalidParam("input is empty: send a string or at least one message item", "input")
    return chat_messages(messages, labels)


def _string(item: Item, key: str, where: str) -> str:
    value = item.get(key)
    if not isinstance(value, str):
        raise InvalidParam(f"{where}: '{key}' must be a string", f"{where}.{key}")
    return value


def _content(content: Any, where: str) -> str | list[dict[str, Any]]:
    """A message's content: a string, or Responses parts as the Chat parts ``chat_messages`` reads."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise InvalidParam(f"{where}: content must be a string or a list of parts", f"{where}.content")
    parts: list[dict[str, Any]] = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in _TEXT_PARTS:
            parts.append({"type": "text", "text": part.get("text")})
        elif kind == "input_image":
            parts.append({"type": "image_url", "image_url": part.get("image_url")})
        elif kind == "refusal":
            parts.append({"type": "text", "text": part.get("refusal")})
        else:
            raise InvalidParam(
                f"{where}.content[{j}]: unsupported content part type '{kind}' (use input_text or input_image)",
                f"{where}.content",
            )
    return parts


def chat_tools(tools: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
    """Responses' flat function tools as Chat's (``{"type": "function", "function": {...}}``)."""
    out = []
    for i, tool in enumerate(tools or []):
        if tool.get("type") != "function":
            raise InvalidParam(
                f"tools[{i}]: unsupported tool type '{tool.get('type')}' (Corral runs function tools)", f"tools[{i}]"
            )
        function = tool["function"] if isinstance(tool.get("function"), dict) else tool  # the Chat shape, too
        name = function.get("name")
        if not isinstance(name, str) or not name:
            raise InvalidParam(f"tools[{i}]: a function tool needs a 'name'", f"tools[{i}].name")
        parameters = function.get("parameters")
        out.append({"type": "function", "function": {
            "name": name, "description": function.get("description") or "",
            "parameters": parameters if isinstance(parameters, dict) else {"type": "object", "properties": {}},
        }})  # fmt: skip
    return out or None


def chat_tool_choice(choice: str | dict[str, Any] | None) -> str | dict[str, Any] | None:
    """Responses' ``tool_choice`` as Chat's, which generation enforces."""
    if choice is None or choice in ("auto", "none", "required"):
        return choice
    if isinstance(choice, dict) and choice.get("type") == "function" and isinstance(choice.get("name"), str):
        return {"type": "function", "function": {"name": choice["name"]}}
    raise InvalidParam(
        'invalid tool_choice: use "auto", "none", "required" or {"type": "function", "name": ...}', "tool_choice"
    )


def output_format(text: dict[str, Any] | None) -> str | dict[str, Any] | None:
    """``text.format`` as Ollama's ``format``, through the mapping /v1/chat/completions uses."""
    fmt = (text or {}).get("format")
    if fmt is None:
        return None
    if not isinstance(fmt, dict) or not isinstance(fmt.get("type"), str):
        raise InvalidParam("text.format must be an object with a 'type'", "text.format")
    if fmt["type"] == "json_schema" and not isinstance(fmt.get("schema"), dict):
        raise InvalidParam("text.format json_schema needs a 'schema' object", "text.format.schema")
    if fmt["type"] not in ("text", "json_object", "json_schema"):
        raise InvalidParam(
            f"invalid text.format type '{fmt['type']}': use text, json_object or json_schema", "text.format.type"
        )
    return response_format(ResponseFormat(type=fmt["type"], json_schema={"schema": fmt.get("schema")}))


# ---- Corral -> response items -----------------------------------------------------------------------


def _item_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(16)}"


class OutputItems:
    """A reply's output items, built piece by piece, with the stream events that build them.

    Both answers use it (a non-streamed one ignores the events), so a stream's final response is
    exactly what its events built. An item stays open while the same kind of text continues."""

    def __init__(self) -> None:
        self.items: list[Item] = []
        self._open: Item | None = None
        self._text = ""  # the open item's text so far
        self.reasoning_tokens = 0

    def feed(self, piece: Piece) -> list[tuple[str, dict[str, Any]]]:
        events: list[tuple[str, dict[str, Any]]] = []
        if piece.thinking:
            self.reasoning_tokens += 1
            if self._open is None or self._open["type"] != "reasoning":
                events += self._start({"type": "reasoning", "id": _item_id("rs"), "summary": []})
                part: dict[str, Any] = {"type": "summary_text", "text": ""}
                events.append(
                    ("response.reasoning_summary_part.added", {**self._where(), "summary_index": 0, "part": part})
                )
                self._text = ""
            self._text += piece.thinking
            events.append(
                (
                    "response.reasoning_summary_text.delta",
                    {**self._where(), "summary_index": 0, "delta": piece.thinking},
                )
            )
        if piece.content:
            if self._open is None or self._open["type"] != "message":
                events += self._start(
                    {
                        "type": "message",
                        "id": _item_id("msg"),
                        "status": "in_progress",
                        "role": "assistant",
                        "content": [],
                    }
                )
                part = {"type": "output_text", "text": "", "annotations": []}
                events.append(("response.content_part.added", {**self._where(), "content_index": 0, "part": part}))
                self._text = ""
            self._text += piece.content
            delta = {**self._where(), "content_index": 0, "delta": piece.content, "logprobs": []}
            events.append(("response.output_text.delta", delta))
        for call in piece.tool_calls:
            fn = call["function"]
            arguments = json.dumps(fn["arguments"], ensure_ascii=False)
            item = {"type": "function_call", "id": _item_id("fc"), "call_id": f"call_{secrets.token_hex(12)}",
                    "name": fn["name"], "arguments": "", "status": "in_progress"}  # fmt: skip
            events += self._start(item)
            events.append(("response.function_call_arguments.delta", {**self._where(), "delta": arguments}))
            events.append(("response.function_call_arguments.done", {**self._where(), "arguments": arguments}))
            item.update(arguments=arguments, status="completed")
            events += self._close("completed")
        return events

    def finish(self, final: Event) -> list[tuple[str, dict[str, Any]]]:
        """Close the open item: incomplete when the reply was cut at max_output_tokens."""
        return self._close("incomplete" if final.done_reason == "length" else "completed")

    def _where(self) -> dict[str, Any]:
        assert self._open is not None
        return {"item_id": self._open["id"], "output_index": len(self.items) - 1}

    def _start(self, item: Item) -> list[tuple[str, dict[str, Any]]]:
        events = self._close("completed")
        self.items.append(item)
        self._open = item
        return [
            *events,
            ("response.output_item.added", {"output_index": len(self.items) - 1, "item": copy.deepcopy(item)}),
        ]

    def _close(self, status: str) -> list[tuple[str, dict[str, Any]]]:
        item, events = self._open, []
        if item is None:
            return []
        part: dict[str, Any]
        if item["type"] == "reasoning":
            part = {"type": "summary_text", "text": self._text}
            where = {**self._where(), "summary_index": 0}
            events.append(("response.reasoning_summary_text.done", {**where, "text": self._text}))
            events.append(("response.reasoning_summary_part.done", {**where, "part": part}))
            item["summary"] = [part]
        elif item["type"] == "message":
            part = {"type": "output_text", "text": self._text, "annotations": []}
            where = {**self._where(), "content_index": 0}
            events.append(("response.output_text.done", {**where, "text": self._text, "logprobs": []}))
            events.append(("response.content_part.done", {**where, "part": part}))
            item.update(content=[part], status=status)
        events.append(("response.output_item.done", {"output_index": len(self.items) - 1, "item": copy.deepcopy(item)}))
        self._open = None
        return events


def response_usage(stats: Stats | None, reasoning_tokens: int = 0) -> dict[str, Any]:
    """Responses' usage, from the counts /v1/chat/completions reports."""
    counted = usage_of(stats)
    return {
        "input_tokens": counted["prompt_tokens"],
        "input_tokens_details": {"cached_tokens": counted["prompt_tokens_details"]["cached_tokens"],
                                 "cache_write_tokens": 0},
        "output_tokens": counted["completion_tokens"],
        "output_tokens_details": {"reasoning_tokens": min(reasoning_tokens, counted["completion_tokens"])},
        "total_tokens": counted["total_tokens"],
    }  # fmt: skip


def response_object(
    req: ResponsesRequest, rid: str, created: int, model: str, status: str, output: list[Item],
    usage: dict[str, Any] | None = None, error: dict[str, Any] | None = None,
) -> dict[str, Any]:  # fmt: skip
    """OpenAI's response object: the answer, and the request's settings echoed."""
    return {
        "id": rid, "object": "response", "created_at": created, "status": status,
        "completed_at": int(time.time()) if status == "completed" else None,
        "error": error,
        "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
        "instructions": req.instructions, "max_output_tokens": req.max_output_tokens, "model": model,
        "output": output, "parallel_tool_calls": req.parallel_tool_calls is not False,
        "previous_response_id": req.previous_response_id,
        "reasoning": {"effort": (req.reasoning or {}).get("effort"), "summary": None},
        "store": req.store is not False,
        "temperature": req.temperature if req.temperature is not None else 1.0,
        "text": req.text if req.text and req.text.get("format") else {"format": {"type": "text"}},
        "tool_choice": req.tool_choice or "auto", "tools": req.tools or [],
        "top_p": req.top_p if req.top_p is not None else 1.0,
        "truncation": "disabled", "usage": usage, "user": None, "metadata": req.metadata or {},
    }  # fmt: skip


def _status(final: Event) -> str:
    return "incomplete" if final.done_reason == "length" else "completed"


# ---- routes ---------------------------------------------------------------------------------------


def _store(request: Request) -> ResponseStore:
    store: ResponseStore = request.app.state.responses
    return store


@router.post("/v1/responses", openapi_extra=json_body(ResponsesRequest))
async def create_response(request: Request, scheduler: SchedulerDep) -> Response:
    req = await parse_body(request, ResponsesRequest)
    store = _store(request)
    earlier = (
        store.get(req.previous_response_id, "previous_response_id").conversation if req.previous_response_id else []
    )
    new_items = input_items(req.input)
    items = [*earlier, *new_items]
    messages = conversation_messages(items, req.instructions, earlier=len(earlier))
    tools, choice = chat_tools(req.tools), chat_tool_choice(req.tool_choice)
    effort = (req.reasoning or {}).get("effort")
    prompt = ChatPrompt(messages, tools=tools if choice != "none" else None,
                        think=effort if isinstance(effort, str) else None, tool_choice=choice,
                        think_if_able=True)  # fmt: skip
    fmt = output_format(req.text)
    target = Target(req.model, request_options(req, req.max_output_tokens), req.keep_alive, req.backend)
    if req.debug_render_only:
        rendered = await render_only(scheduler, target, prompt)
        debug = {"rendered_template": rendered.text, "image_count": rendered.image_count}
        return JSONResponse({"object": "response", "model": rendered.model, "_debug_info": debug})
    gen = await generation.generate(scheduler, target, prompt, format=fmt)
    rid, created = _item_id("resp"), int(time.time())
    output = OutputItems()

    def finished(final: Event) -> dict[str, Any]:
        answer = response_object(
            req,
            rid,
            created,
            gen.model,
            _status(final),
            output.items,
            response_usage(final.stats, output.reasoning_tokens),
        )
        if req.store is not False:
            store.put(answer, [*items, *output.items])
        return answer

    if not req.stream:
        pieces = await unless_disconnected(request, gen.collect())
        for piece in pieces:
            output.feed(piece)
        final = pieces[-1].event if pieces and pieces[-1].done else Event(done=True, done_reason="stop")
        output.finish(final)
        return JSONResponse(finished(final))

    async def body() -> AsyncIterator[bytes]:
        numbers = itertools.count()

        def event(kind: str, payload: dict[str, Any]) -> bytes:
            return sse({"type": kind, **payload, "sequence_number": next(numbers)}, kind)

        started = response_object(req, rid, created, gen.model, "in_progress", [])
        yield event("response.created", {"response": started})
        yield event("response.in_progress", {"response": started})
        try:
            final = Event(done=True, done_reason="stop")
            async for piece in gen.pieces():
                for kind, payload in output.feed(piece):
                    yield event(kind, payload)
                if piece.done:
                    final = piece.event
            for kind, payload in output.finish(final):
                yield event(kind, payload)
            answer = finished(final)
            yield event(f"response.{answer['status']}", {"response": answer})
        except Exception as exc:
            if not isinstance(exc, CorralError):
                log.exception("response stream failed")
            status, error = error_of(exc)
            message = error["error"]["message"]
            code = "server_error" if status >= 500 else "invalid_prompt"
            yield event("error", {"code": code, "message": message, "param": error["error"]["param"]})
            failed = response_object(req, rid, created, gen.model, "failed", output.items,
                                     error={"code": code, "message": message})  # fmt: skip
            yield event("response.failed", {"response": failed})

    return event_stream(body(), gen.close)


@router.get("/v1/responses/{response_id}")
async def get_response(request: Request, response_id: str) -> Response:
    return JSONResponse(_store(request).get(response_id).response)


@router.delete("/v1/responses/{response_id}")
async def delete_response(request: Request, response_id: str) -> Response:
    _store(request).delete(response_id)
    return JSONResponse({"id": response_id, "object": "response", "deleted": True})
