"""OpenAI's requests as Corral's (options, messages, prompts) and Corral's results in OpenAI's shapes.

The mapping follows Ollama's /v1 compatibility layer: ``max_tokens`` is ``num_predict``,
``response_format`` is ``format``, temperature and top_p default to OpenAI's 1.0, and an unset
``seed`` samples randomly. Corral's own ``options`` field takes any Ollama option; the request's
OpenAI fields win over it.
"""

from __future__ import annotations

import base64
import json
import secrets
from typing import Any

from corral.models.store import StoredModel
from corral.runtime.worker import Event, Stats
from corral.server.http import InvalidParam
from corral.server.openai.types import ChatMessageIn, ResponseFormat, SamplingRequest
from corral.types import Message, Options

_ROLES = {"system", "developer", "user", "assistant", "tool", "function"}


def request_options(req: SamplingRequest, num_predict: int | None) -> Options:
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


def chat_messages(messages: list[ChatMessageIn], labels: list[str] | None = None) -> list[Message]:
    """OpenAI messages as Corral's: text parts joined, data-URL images decoded, tool calls parsed.
    ``labels``: where each message came from in the request, for errors (default ``messages[i]``)."""
    if not messages:
        raise InvalidParam("messages must hold at least one message", "messages")
    out: list[Message] = []
    for i, msg in enumerate(messages):
        where = labels[i] if labels else f"messages[{i}]"
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
            Message(
                role=role, content="\n".join(texts), images=images or None, tool_calls=tool_calls, tool_name=tool_name
            )
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


def usage_of(stats: Stats | None) -> dict[str, Any]:
    # prompt_eval_count counts what was evaluated; prefix-cached tokens were part of the prompt too,
    # and OpenAI reports them apart as prompt_tokens_details.cached_tokens.
    cached = stats.cached_tokens if stats else 0
    prompt = (stats.prompt_eval_count + cached) if stats else 0
    completion = stats.eval_count if stats else 0
    return {
        "prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached},
    }


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
        arguments = json.dumps(fn["arguments"], ensure_ascii=False)
        item = {"id": f"call_{secrets.token_hex(4)}", "type": "function",
                "function": {"name": fn["name"], "arguments": arguments}}  # fmt: skip
        out.append({"index": fn["index"], **item} if streaming else item)
    return out


def model_object(stored: StoredModel) -> dict[str, Any]:
    return {
        "id": stored.name.display,
        "object": "model",
        "created": int(stored.modified_at.timestamp()),
        "owned_by": stored.name.namespace or "library",
    }
