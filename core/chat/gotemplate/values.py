"""Ollama's values: the messages, tools and tool calls ``template.Execute`` is given, and ``render``,
which collates messages and renders legacy .System/.Prompt/.Response templates as Ollama does."""

from __future__ import annotations

import json as _json
from collections.abc import Mapping, Sequence
from typing import Any

from corral.chat.gotemplate.execute import _execute
from corral.chat.gotemplate.functions import _MAX_TEXT, GoStruct, _fail, _GoMap, _GoSlice, _PropertyType, _ts_type
from corral.chat.gotemplate.parse import Node, Template, parse_template
from corral.errors import BadRequest

# ---- Ollama's values --------------------------------------------------------------------------


def _any(value: Any) -> Any:
    """JSON data as Go decodes it into ``any``: numbers become float64."""
    if isinstance(value, Mapping):
        return {str(k): _any(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_any(v) for v in value]
    return float(value) if isinstance(value, int) and not isinstance(value, bool) else value


def _plain(item: Any) -> Mapping[str, Any]:
    if isinstance(item, Mapping):
        return item
    if hasattr(item, "model_dump"):  # Corral's own pydantic models
        return dict(item.model_dump(exclude_none=True))
    raise BadRequest(f"expected an object, got {type(item).__name__}")


def _text(value: Any, what: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise BadRequest(f"{what} must be a string")
    return value


_TOOL_PROPERTY_TAGS = {
    "AnyOf": ("anyOf", True),
    "Type": ("type", True),
    "Items": ("items", True),
    "Description": ("description", True),
    "Enum": ("enum", True),
    "Properties": ("properties", True),
    "Required": ("required", True),
}


def _tool_property(raw: Any) -> GoStruct:
    prop = _plain(raw)
    kind = prop.get("type")
    nested = prop.get("properties")
    value = GoStruct(
        "api.ToolProperty",
        {
            "AnyOf": [_tool_property(p) for p in prop.get("anyOf") or ()],
            "Type": _PropertyType([kind] if isinstance(kind, str) else [str(k) for k in kind or ()]),
            "Items": _any(prop.get("items")),
            "Description": _text(prop.get("description"), "a tool property's description"),
            "Enum": _any(list(prop.get("enum") or ())),
            "Properties": None
            if nested is None
            else _GoMap({k: _tool_property(v) for k, v in _plain(nested).items()}, ordered=True),
            "Required": [str(r) for r in prop.get("required") or ()],
        },
        _TOOL_PROPERTY_TAGS,
    )
    value.methods["ToTypeScriptType"] = lambda: _ts_type(value)
    return value


def _tool(raw: Any) -> GoStruct:
    tool = _plain(raw)
    function = _plain(tool.get("function") or {})
    params = _plain(function.get("parameters") or {})
    props = params.get("properties")
    parameters = GoStruct(
        "template.templateToolFunctionParameters",
        {
            "Type": _text(params.get("type"), "a tool's parameters type"),
            "Defs": _any(params.get("$defs")),
            "Items": _any(params.get("items")),
            "Required": [str(r) for r in params.get("required") or ()],
            "Properties": _GoMap(None if props is None else {k: _tool_property(v) for k, v in _plain(props).items()}),
        },
        {
            "Type": ("type", False),
            "Defs": ("$defs", True),
            "Items": ("items", True),
            "Required": ("required", True),
            "Properties": ("properties", False),
        },
        stringer=True,
    )
    fields = {
        "Name": _text(function.get("name"), "a tool's name"),
        "Description": _text(function.get("description"), "a tool's description"),
        "Parameters": parameters,
    }
    return GoStruct(
        "template.templateTool",
        {
            "Type": _text(tool.get("type"), "a tool's type"),
            "Items": _any(tool.get("items")),
            "Function": GoStruct(
                "template.templateToolFunction", fields, {k: (k.lower(), False) for k in fields}, stringer=True
            ),
        },
        {"Type": ("type", False), "Items": ("items", True), "Function": ("function", False)},
        stringer=True,
    )


def _tool_call(raw: Any) -> GoStruct:
    call = _plain(raw)
    function = _plain(call.get("function") or {})
    arguments = function.get("arguments")
    if isinstance(arguments, str):  # OpenAI style: arguments as a JSON string
        try:
            arguments = _json.loads(arguments or "{}")
        except ValueError:
            raise BadRequest("a tool call's arguments are not valid JSON") from None
    index = function.get("index") or 0
    return GoStruct(
        "template.templateToolCall",
        {
            "ID": _text(call.get("id"), "a tool call's id"),
            "Function": GoStruct(
                "template.templateToolCallFunction",
                {
                    "Index": int(index),
                    "Name": _text(function.get("name"), "a tool call's name"),
                    "Arguments": _GoMap(_any(_plain(arguments or {}))),
                },
            ),
        },
    )


def _message(m: Mapping[str, Any]) -> GoStruct:
    """Ollama's templateMessage (a pointer, as it hands []*templateMessage to templates)."""
    return GoStruct(
        "template.templateMessage",
        {
            "Role": m["role"],
            "Content": m["content"],
            "Thinking": _text(m.get("thinking"), "a message's thinking"),
            "Images": list(m.get("images") or ()),
            "ToolCalls": [_tool_call(c) for c in m.get("tool_calls") or ()],
            "ToolName": _text(m.get("tool_name"), "a message's tool_name"),
            "ToolCallID": _text(m.get("tool_call_id"), "a message's tool_call_id"),
        },
        pointer=True,
    )


def _collate(messages: Sequence[Mapping[str, Any]]) -> tuple[str, list[dict[str, Any]]]:
    """Ollama's collate: all system contents joined, and consecutive same-role messages merged
    (content only, joined by a blank line) except tool results."""
    system: list[str] = []
    collated: list[dict[str, Any]] = []
    for raw in messages:
        m = dict(raw)
        m["role"] = _text(m.get("role"), "a message's role")
        m["content"] = _text(m.get("content"), "a message's content")
        if m["role"] == "system":
            system.append(m["content"])
        if collated and collated[-1]["role"] == m["role"] and m["role"] != "tool":
            collated[-1]["content"] += "\n\n" + m["content"]
        else:
            collated.append(m)
    return "\n\n".join(system), collated


def render(
    template: str,
    *,
    messages: Sequence[Mapping[str, Any]],
    system: str = "",
    prompt: str = "",
    response: str = "",
    tools: Sequence[Mapping[str, Any]] | None = None,
    think: bool | str | None = None,
    suffix: str = "",
) -> str:
    """Render a conversation the way Ollama's ``template.Execute`` does.

    ``system`` (if given) goes before ``messages`` as a system message and ``prompt`` after them as a
    user message, as Ollama's generate endpoint builds its messages; ``response`` is a trailing
    assistant message (a prefill). With both ``prompt`` and ``suffix`` the template gets only
    .Prompt/.Suffix (fill-in-the-middle). ``think`` is True/False or a level ("low", "medium",
    "high"), None when the client did not say. A template that reads .Messages gets the collated
    conversation; any other is run once per earlier turn with .System/.Prompt/.Response and a last
    time, cut after .Response, for the turn to generate."""
    tpl = parse_template(template)
    if think is None:
        flags: dict[str, Any] = {"Think": False, "ThinkLevel": "", "IsThinkSet": False}
    elif isinstance(think, str):
        flags = {"Think": think in ("high", "medium", "low"), "ThinkLevel": think, "IsThinkSet": True}
    else:
        flags = {"Think": bool(think), "ThinkLevel": "medium" if think else "", "IsThinkSet": True}
    try:
        if prompt and suffix:
            return _execute(tpl.nodes, {"Prompt": prompt, "Suffix": suffix, "Response": "", **flags})
        conversation = [_plain(m) for m in messages]
        if system:
            conversation.insert(0, {"role": "system", "content": system})
        if prompt:
            conversation.append({"role": "user", "content": prompt})
        if response:
            conversation.append({"role": "assistant", "content": response})
        system_text, collated = _collate(conversation)
        if tpl.uses_messages:
            values = {
                "System": system_text,
                "Messages": [_message(m) for m in collated],
                "Tools": _GoSlice((_tool(t) for t in tools or ()), nil=tools is None),
                "Response": "",
                **flags,
            }
            return _execute(tpl.nodes, values)
        return _render_legacy(tpl, collated, flags)
    except RecursionError:
        raise BadRequest("template: data nested too deeply") from None


def _render_legacy(tpl: Template, collated: list[dict[str, Any]], flags: dict[str, Any]) -> str:
    """Ollama's loop for templates without .Messages: one execution per earlier turn, then the cut tree."""
    out: list[str] = []
    turn = {"System": "", "Prompt": "", "Response": ""}

    def run(nodes: tuple[Node, ...]) -> None:
        out.append(_execute(nodes, {**turn, **flags}))
        if sum(map(len, out)) > _MAX_TEXT:
            _fail("output too large")
        turn.update(System="", Prompt="", Response="")

    for m in collated:
        role, content = m["role"], m["content"]
        if role == "system":
            if turn["Prompt"] or turn["Response"]:
                run(tpl.nodes)
            turn["System"] = content
        elif role == "user":
            if turn["Response"]:
                run(tpl.nodes)
            turn["Prompt"] = content
        elif role == "assistant":
            turn["Response"] = content
    run(tpl.legacy_tail)
    return "".join(out)
