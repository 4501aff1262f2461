"""OpenAI's API over Corral's models: /v1/chat/completions, /v1/completions, /v1/embeddings, /v1/models.

Wire shapes follow OpenAI's, and the mapping onto Corral follows Ollama's /v1 compatibility layer:
``max_tokens`` is ``num_predict``, ``response_format`` is ``format``, temperature and top_p default to
OpenAI's 1.0, and an unset ``seed`` samples randomly. Corral adds one field of its own, ``options``:
any Ollama option (``num_ctx``, ``top_k``, …), validated like /api/chat's; the request's OpenAI fields
win over it.

Errors use OpenAI's shape, ``{"error": {"message", "type", "param", "code"}}``. A stream reports an
error found before its first chunk as a status, and one found later as a last ``data: {"error": …}``
event. The model is released however a request ends, and a client that goes away cancels its job.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from typing import Any

import anyio
import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.types import Receive, Scope, Send

from corral.chat import prompting
from corral.chat.reply import Reply
from corral.config import Settings
from corral.errors import BadRequest, CorralError, InvalidName, ModelNotFound
from corral.models.names import ModelName
from corral.runtime.scheduler import Scheduler, Ticket
from corral.server.app import CLIENT_CLOSED, ClientGone, normalise, parse_body, unless_disconnected
from corral.models.store import StoredModel
from corral.types import Message, Options
from corral.runtime.worker import Event, Stats

log = logging.getLogger("corral.openai")

FINGERPRINT = "fp_corral"
_ROLES = {"system", "developer", "user", "assistant", "tool", "function"}
_SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


# ---- errors ------------------------------------------------------------------------------------


class InvalidParam(BadRequest):
    """A 400 that names the request field at fault (OpenAI's ``error.param``)."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


def error_object(status: int, message: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    kind = {400: "invalid_request_error", 404: "invalid_request_error", 503: "server_error"}.get(status, "api_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def error_of(exc: BaseException) -> tuple[int, dict[str, Any]]:
    """The status and OpenAI error body for an exception (a non-Corral one is a 500 fault)."""
    if isinstance(exc, CorralError):
        status = exc.status_code
        param = getattr(exc, "param", None)
        code = None
        if isinstance(exc, ModelNotFound):
            param, code = "model", "model_not_found"
        return status, error_object(status, str(exc), param, code)
    return 500, error_object(500, f"internal error: {type(exc).__name__}: {exc}")


def error_response(exc: BaseException) -> JSONResponse:
    status, body = error_of(exc)
    return JSONResponse(body, status_code=status)


def _openai_errors(handler: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
    @functools.wraps(handler)
    async def wrapper(request: Request) -> Response:
        try:
            return await handler(request)
        except CorralError as exc:
            return error_response(exc)
        except ClientGone:  # a non-streamed answer whose client left: its job is cancelled already
            return Response(status_code=CLIENT_CLOSED)
        except Exception as exc:  # a bug is still answered in OpenAI's shape, and logged
            log.exception("%s %s failed", request.method, request.url.path)
            return error_response(exc)

    return wrapper


# ---- requests ----------------------------------------------------------------------------------


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")  # OpenAI clients send fields Corral has no use for


class StreamOptions(_Body):
    include_usage: bool | None = False


class ResponseFormat(_Body):
    type: str
    json_schema: dict[str, Any] | None = None


class ChatMessageIn(_Body):
    role: str
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None


class _Generating(_Body):
    model: str
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = Field(None, ge=1)
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    n: int | None = None
    # Corral's (and Ollama's) own fields
    options: dict[str, Any] | None = None
    keep_alive: float | str | None = None
    backend: str | None = None


class ChatCompletionRequest(_Generating):
    messages: list[ChatMessageIn]
    max_completion_tokens: int | None = Field(None, ge=1)
    response_format: ResponseFormat | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None  # "none" hides the tools; others let the model choose
    # Ollama's mapping to ``think``: "high", "medium", "low" think; "none" does not; absent leaves it to the model
    reasoning_effort: str | None = None
    reasoning: dict[str, Any] | None = None  # {"effort": ...}, the Responses API's spelling


class CompletionRequest(_Generating):
    prompt: str | list[str] | list[int] | list[list[int]]
    suffix: str | None = None
    echo: bool | None = False
    best_of: int | None = None


class EmbeddingRequest(_Body):
    model: str
    input: str | list[str] | list[int] | list[list[int]]
    dimensions: int | None = Field(None, ge=1)
    encoding_format: str | None = "float"
    options: dict[str, Any] | None = None
    keep_alive: float | str | None = None
    backend: str | None = None


# ---- request → Corral --------------------------------------------------------------------------


def request_options(req: _Generating, num_predict: int | None) -> Options:
    """Corral's ``options`` extension, then the OpenAI fields on top, then OpenAI's defaults."""
    data = dict(Options.parse(req.options).model_dump(exclude_none=True))
    stops = [req.stop] if isinstance(req.stop, str) else req.stop
    openai_fields = {
        "temperature": req.temperature,
        "top_p": req.top_p,
        "seed": req.seed,
        "presence_penalty": req.presence_penalty,
        "frequency_penalty": req.frequency_penalty,
        "num_predict": num_predict,
        "stop": stops,
    }
    data.update({k: v for k, v in openai_fields.items() if v is not None})
    data.setdefault("temperature", 1.0)
    data.setdefault("top_p", 1.0)
    return Options.parse(data)


def check_n(n: int | None, best_of: int | None = None) -> None:
    if n is not None and n != 1:
        raise InvalidParam(f"n={n} is not supported: Corral returns one choice per request (n=1)", "n")
    if best_of is not None and best_of != 1:
        raise InvalidParam(f"best_of={best_of} is not supported (best_of=1)", "best_of")


def response_format(fmt: ResponseFormat | None) -> str | dict[str, Any] | None:
    """OpenAI's ``response_format`` as Ollama's ``format``."""
    if fmt is None:
        return None
    kind = fmt.type.strip().lower()
    if kind == "text":
        return None
    if kind == "json_object":
        return "json"
    if kind == "json_schema":
        schema = (fmt.json_schema or {}).get("schema")
        if not isinstance(schema, dict):
            raise InvalidParam("response_format json_schema needs a 'schema' object", "response_format")
        return schema
    raise InvalidParam(
        f"invalid response_format type '{fmt.type}': use text, json_object or json_schema", "response_format"
    )


def chat_messages(messages: list[ChatMessageIn]) -> list[Message]:
    """OpenAI messages as Corral's: text parts joined, data-URL images decoded, tool calls parsed."""
    if not messages:
        raise InvalidParam("messages must hold at least one message", "messages")
    out: list[Message] = []
    for i, msg in enumerate(messages):
        where = f"messages[{i}]"
        role = msg.role.lower()
        if role not in _ROLES:
            raise InvalidParam(f"{where}: unknown role '{msg.role}'", f"{where}.role")
        if role == "developer":  # OpenAI's newer name for the system role
            role = "system"
        elif role == "function":
            role = "tool"
        texts: list[str] = []
        images: list[str] = []
        if isinstance(msg.content, str):
            texts.append(msg.content)
        elif isinstance(msg.content, list):
            for j, part in enumerate(msg.content):
                texts_or_image = _content_part(part, f"{where}.content[{j}]")
                if texts_or_image[0] == "text":
                    texts.append(texts_or_image[1])
                else:
                    images.append(texts_or_image[1])
        elif not msg.tool_calls and role != "assistant":
            raise InvalidParam(f"{where}: content is required", f"{where}.content")
        tool_calls = _tool_calls(msg.tool_calls, where) if msg.tool_calls else None
        tool_name = None
        if role == "tool":
            tool_name = msg.name or _tool_name(messages[:i], msg.tool_call_id)
        out.append(
            Message(role=role, content="\n".join(texts), images=images or None, tool_calls=tool_calls, tool_name=tool_name)
        )
    return out


def _content_part(part: dict[str, Any], where: str) -> tuple[str, str]:
    kind = part.get("type")
    if kind == "text":
        text = part.get("text")
        if not isinstance(text, str):
            raise InvalidParam(f"{where}: a text part needs a 'text' string", where)
        return "text", text
    if kind == "image_url":
        image = part.get("image_url")
        url = image.get("url") if isinstance(image, dict) else image
        if not isinstance(url, str) or not url.startswith("data:") or ";base64," not in url:
            raise InvalidParam(f"{where}: images must be base64 data URLs (data:image/png;base64,...)", where)
        data = url.split(";base64,", 1)[1]
        try:
            base64.b64decode(data, validate=True)
        except ValueError:
            raise InvalidParam(f"{where}: the image is not valid base64", where) from None
        return "image", data
    raise InvalidParam(f"{where}: unsupported content part type '{kind}' (use text or image_url)", where)


def _tool_calls(calls: list[dict[str, Any]], where: str) -> list[dict[str, Any]]:
    out = []
    for call in calls:
        function = call.get("function") or {}
        arguments = function.get("arguments") or "{}"
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments)
            except (ValueError, RecursionError):
                raise InvalidParam(f"{where}: tool call arguments are not valid JSON", f"{where}.tool_calls") from None
        out.append({"function": {"name": function.get("name", ""), "arguments": arguments}})
    return out


def _tool_name(earlier: list[ChatMessageIn], call_id: str | None) -> str | None:
    """A tool result names its call by id; the call (last one wins) names the function."""
    if not call_id:
        return None
    for msg in reversed(earlier):
        for call in msg.tool_calls or []:
            if call.get("id") == call_id:
                return (call.get("function") or {}).get("name")
    return None


def completion_prompt(prompt: str | list[str] | list[int] | list[list[int]]) -> str | list[int]:
    """/v1/completions' prompt: one string, or one list of token ids."""
    if isinstance(prompt, str):
        return prompt
    if not prompt:
        raise InvalidParam("prompt is empty", "prompt")
    if all(isinstance(p, int) for p in prompt):
        return list(prompt)  # type: ignore[arg-type]
    if len(prompt) == 1:
        only = prompt[0]
        return only if isinstance(only, str) else list(only)  # type: ignore[arg-type]
    raise InvalidParam("only one prompt per request is supported (send a string, not a list of several)", "prompt")


# ---- responses ---------------------------------------------------------------------------------


def usage_of(stats: Stats | None) -> dict[str, int]:
    # prompt_eval_count counts what was evaluated; prefix-cached tokens were part of the prompt too.
    prompt = (stats.prompt_eval_count + stats.cached_tokens) if stats else 0
    completion = stats.eval_count if stats else 0
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def finish_reason(event: Event, called: bool = False) -> str:
    if called:
        return "tool_calls"
    return "length" if event.done_reason == "length" else "stop"


def openai_tool_calls(calls: list[dict[str, Any]], *, streaming: bool) -> list[dict[str, Any]]:
    """Ollama-shaped calls ({"function": {"index", "name", "arguments": {...}}}) as OpenAI's, whose
    arguments are a JSON string; stream deltas carry each call's index."""
    out = []
    for call in calls:
        fn = call["function"]
        item = {"id": f"call_{secrets.token_hex(4)}", "type": "function",
                "function": {"name": fn["name"], "arguments": json.dumps(fn["arguments"], ensure_ascii=False)}}  # fmt: skip
        out.append({"index": fn["index"], **item} if streaming else item)
    return out


def _sse(obj: Any) -> bytes:
    return b"data: " + json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"


SSE_DONE = b"data: [DONE]\n\n"


async def _sse_stream(chunks: AsyncIterator[bytes], generation: Generation, what: str) -> AsyncIterator[bytes]:
    """The events of one stream, then ``[DONE]``; an error mid-stream becomes a final error event
    (and no ``[DONE]``). The generation is closed however the stream ends."""
    try:
        async for piece in chunks:
            yield piece
        yield SSE_DONE
    except Exception as exc:
        if not isinstance(exc, CorralError):
            log.exception("%s stream failed", what)
        yield _sse(error_of(exc)[1])
    finally:
        await generation.close()


class Generation:
    """One held model and its running job, closed exactly once however the request ends."""

    def __init__(self, scheduler: Scheduler, ticket: Ticket, events: AsyncIterator[Event]) -> None:
        self.scheduler = scheduler
        self.ticket = ticket
        self.events = events
        self.first: Event | None = None
        self._closed = False

    async def start(self) -> None:
        """Wait for the first event, so errors found up to here still become a status."""
        try:
            self.first = await anext(self.events)
        except StopAsyncIteration:
            self.first = Event(done=True, done_reason="stop")
        except BaseException:
            await self.close()
            raise

    async def rest(self) -> AsyncIterator[Event]:
        assert self.first is not None
        yield self.first
        if self.first.done:
            return
        async for event in self.events:
            yield event
            if event.done:
                return

    async def collect(self, request: Request) -> list[Event]:
        """Every event, for a non-streamed answer; the job is cancelled if the client leaves first."""

        async def gather() -> list[Event]:
            try:
                return [event async for event in self.rest()]
            finally:
                await self.close()

        return await unless_disconnected(request, gather())

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            with anyio.CancelScope(shield=True):
                aclose = getattr(self.events, "aclose", None)
                if aclose is not None:
                    try:
                        await aclose()  # an unfinished job is cancelled
                    except RuntimeError:  # still running in a task being torn down: it cancels itself
                        pass
        finally:
            self.scheduler.release(self.ticket)


class EventStream(StreamingResponse):
    """Server-sent events that close their generation even when the body never got to run
    (a client that leaves before the first byte)."""

    def __init__(self, body: AsyncIterator[bytes], generation: Generation) -> None:
        super().__init__(body, media_type="text/event-stream", headers=_SSE_HEADERS)
        self._body = body
        self._generation = generation

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            with anyio.CancelScope(shield=True):
                aclose = getattr(self._body, "aclose", None)
                if aclose is not None:
                    try:
                        await aclose()
                    except RuntimeError:
                        pass
                await self._generation.close()


async def _generate(
    scheduler: Scheduler,
    req: _Generating,
    options: Options,
    build: Callable[[Ticket], tuple[str | list[int], Any]],
) -> tuple[Generation, str]:
    """Acquire the model, build the prompt and start the job; the model is released on any error."""
    ticket = await scheduler.acquire(req.model, options, req.keep_alive, req.backend)
    try:
        prompt, sampling = build(ticket)
        events = scheduler.stream(ticket, prompt, sampling=sampling)
    except BaseException:
        scheduler.release(ticket)
        raise
    generation = Generation(scheduler, ticket, events)
    await generation.start()
    return generation, ticket.loaded.recipe.name.display


# ---- routes ------------------------------------------------------------------------------------


def register(app: FastAPI, scheduler: Scheduler, settings: Settings) -> None:
    @app.post("/v1/chat/completions")
    @_openai_errors
    async def chat_completions(request: Request) -> Response:
        req: ChatCompletionRequest = await parse_body(request, ChatCompletionRequest)
        check_n(req.n)
        messages = chat_messages(req.messages)
        grammar = prompting.grammar_for(response_format(req.response_format))
        num_predict = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
        options = request_options(req, num_predict)
        offered = req.tools if req.tool_choice != "none" else None
        effort = req.reasoning_effort or (req.reasoning or {}).get("effort")
        replies: list[Reply] = []  # made with the prompt, once the model is loaded

        def build(ticket: Ticket) -> tuple[str, Any]:
            recipe = ticket.loaded.recipe
            info = ticket.loaded.worker.wait_loaded().info
            prompt = prompting.render(recipe, info, prompting.chat_messages(recipe, messages), tools=offered, think=effort)
            replies.append(Reply.for_request(
                think=effort, tools=offered, template=recipe.template, chat_template=info.chat_template,
                prompt=prompt, model=recipe.name.display,
            ))  # fmt: skip
            return prompt, replace(ticket.options.sampling(), grammar=grammar)

        generation, model = await _generate(scheduler, req, options, build)
        reply = replies[0]
        cid, created = f"chatcmpl-{secrets.token_hex(12)}", int(time.time())
        include_usage = bool(req.stream_options and req.stream_options.include_usage)

        if not req.stream:
            parts: list[str] = []
            thoughts: list[str] = []
            called: list[dict[str, Any]] = []
            events = await generation.collect(request)
            final = events[-1] if events and events[-1].done else Event(done=True, done_reason="stop")
            for i, event in enumerate(events):
                thought, text, calls = reply.feed(event.text, i == len(events) - 1)
                parts.append(text)
                thoughts.append(thought)
                called += calls
            message: dict[str, Any] = {"role": "assistant", "content": "".join(parts)}
            if called:
                message = {"role": "assistant", "content": message["content"] or None,
                           "tool_calls": openai_tool_calls(called, streaming=False)}  # fmt: skip
            if "".join(thoughts):
                message["reasoning"] = "".join(thoughts)  # Ollama's field for the trace
            return JSONResponse(
                {
                    "id": cid,
                    "object": "chat.completion",
                    "created": created,
                    "model": model,
                    "system_fingerprint": FINGERPRINT,
                    "choices": [
                        {
                            "index": 0,
                            "message": message,
                            "logprobs": None,
                            "finish_reason": finish_reason(final, bool(called)),
                        }
                    ],
                    "usage": usage_of(final.stats),
                }
            )

        def chunk(delta: dict[str, Any], finish: str | None) -> bytes:
            obj: dict[str, Any] = {
                "id": cid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "system_fingerprint": FINGERPRINT,
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
            }
            if include_usage:
                obj["usage"] = None
            return _sse(obj)

        async def body() -> AsyncIterator[bytes]:
            yield chunk({"role": "assistant", "content": ""}, None)
            called = False
            async for event in generation.rest():
                thought, text, calls = reply.feed(event.text, event.done)
                if thought:
                    yield chunk({"reasoning": thought}, None)
                if text:
                    yield chunk({"content": text}, None)
                if calls:
                    called = True
                    yield chunk({"tool_calls": openai_tool_calls(calls, streaming=True)}, None)
                if event.done:
                    yield chunk({}, finish_reason(event, called))
                    if include_usage:
                        yield _sse(
                            {
                                "id": cid,
                                "object": "chat.completion.chunk",
                                "created": created,
                                "model": model,
                                "system_fingerprint": FINGERPRINT,
                                "choices": [],
                                "usage": usage_of(event.stats),
                            }
                        )

        return EventStream(_sse_stream(body(), generation, "chat completion"), generation)

    @app.post("/v1/completions")
    @_openai_errors
    async def completions(request: Request) -> Response:
        req: CompletionRequest = await parse_body(request, CompletionRequest)
        check_n(req.n, req.best_of)
        prompt = completion_prompt(req.prompt)
        echo = bool(req.echo)
        if echo and not isinstance(prompt, str):
            raise InvalidParam("echo needs a text prompt, not token ids", "echo")
        options = request_options(req, req.max_tokens)

        def build(ticket: Ticket) -> tuple[str | list[int], Any]:
            info = ticket.loaded.worker.wait_loaded().info
            if not prompt and not (isinstance(prompt, str) and info.add_bos):
                raise InvalidParam("prompt is empty", "prompt")
            if req.suffix:  # fill in the middle, through the model's template
                if not isinstance(prompt, str):
                    raise InvalidParam("suffix needs a text prompt, not token ids", "suffix")
                return prompting.render_insert(ticket.loaded.recipe, prompt, req.suffix), ticket.options.sampling()
            return prompt, ticket.options.sampling()

        generation, model = await _generate(scheduler, req, options, build)
        cid, created = f"cmpl-{secrets.token_hex(12)}", int(time.time())
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        prefix = prompt if echo and isinstance(prompt, str) else ""

        def completion(text: str, finish: str | None, usage: dict[str, int] | None = None) -> dict[str, Any]:
            obj: dict[str, Any] = {
                "id": cid,
                "object": "text_completion",
                "created": created,
                "model": model,
                "system_fingerprint": FINGERPRINT,
                "choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": finish}],
            }
            if usage is not None:
                obj["usage"] = usage
            return obj

        if not req.stream:
            events = await generation.collect(request)
            final = events[-1] if events and events[-1].done else Event(done=True, done_reason="stop")
            parts = [prefix, *(event.text for event in events)]
            return JSONResponse(completion("".join(parts), finish_reason(final), usage_of(final.stats)))

        def chunk(text: str, finish: str | None) -> bytes:
            obj = completion(text, finish)
            if include_usage:
                obj["usage"] = None
            return _sse(obj)

        async def body() -> AsyncIterator[bytes]:
            if prefix:
                yield chunk(prefix, None)
            async for event in generation.rest():
                if event.text:
                    yield chunk(event.text, None)
                if event.done:
                    yield chunk("", finish_reason(event))
                    if include_usage:
                        usage_chunk = completion("", None, usage_of(event.stats))
                        usage_chunk["choices"] = []
                        yield _sse(usage_chunk)

        return EventStream(_sse_stream(body(), generation, "completion"), generation)

    @app.post("/v1/embeddings")
    @_openai_errors
    async def embeddings(request: Request) -> Response:
        req: EmbeddingRequest = await parse_body(request, EmbeddingRequest)
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
        options = Options.parse(req.options)
        ticket = await scheduler.acquire(req.model, options, req.keep_alive, req.backend)
        try:
            vectors, count = await scheduler.embed(ticket, texts)
        finally:
            scheduler.release(ticket)
        data = []
        for i, vector in enumerate(vectors):
            unit = normalise(vector[: req.dimensions] if req.dimensions else vector)
            embedding: list[float] | str = unit
            if encoding == "base64":
                embedding = base64.b64encode(np.asarray(unit, dtype="<f4").tobytes()).decode("ascii")
            data.append({"object": "embedding", "embedding": embedding, "index": i})
        return JSONResponse(
            {
                "object": "list",
                "data": data,
                "model": ticket.loaded.recipe.name.display,
                "usage": {"prompt_tokens": count, "total_tokens": count},
            }
        )

    @app.get("/v1/models")
    @_openai_errors
    async def list_models(request: Request) -> Response:
        stored = await asyncio.to_thread(scheduler.store.list)
        return JSONResponse({"object": "list", "data": [model_object(m) for m in stored]})

    @app.get("/v1/models/{model:path}")
    async def get_model(model: str) -> Response:
        try:
            try:
                name = ModelName.parse(model)
            except InvalidName:
                raise ModelNotFound(f'model "{model}" not found') from None
            try:
                stored = await asyncio.to_thread(scheduler.store.get, name)
            except ModelNotFound:
                raise ModelNotFound(f'model "{model}" not found') from None
            return JSONResponse(model_object(stored))
        except CorralError as exc:
            return error_response(exc)


def model_object(stored: StoredModel) -> dict[str, Any]:
    return {
        "id": stored.name.display,
        "object": "model",
        "created": int(stored.modified_at.timestamp()),
        "owned_by": stored.name.namespace or "library",
    }
