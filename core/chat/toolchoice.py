"""``tool_choice`` enforced: "required" or a named function constrains decoding to a valid tool call.

OpenAI's ``tool_choice`` is "auto" (the model decides), "none" (tools hidden), "required" (some call)
or ``{"type": "function", "function": {"name": ...}}`` (that call). The last two become a GBNF grammar:
the JSON of ``{"name": ..., "arguments": {...}}`` for the allowed tools, its arguments following each
tool's JSON schema (llama.cpp's json-schema-to-grammar converter), wrapped in the tag the model's
template writes before a call (``<tool_call>`` … ``</tool_call>``; bare JSON when it names none), so
the reply parses as a call whose arguments validate against the tool's schema.
"""

from __future__ import annotations

import json
import re
from typing import Any

from corral.errors import BadRequest

_ROOT = re.compile(r"^root ::=", re.M)


def forced_tools(
    tools: list[dict[str, Any]] | None, choice: str | dict[str, Any] | None
) -> list[dict[str, Any]] | None:
    """The tools a call must be made from (None: the model may answer in text); a bad choice is a 400."""
    if choice is None or choice == "auto" or choice == "none":
        return None
    offered = [t for t in tools or [] if isinstance(t, dict) and isinstance(t.get("function"), dict)]
    if choice == "required":
        if not offered:
            raise BadRequest("tool_choice 'required' needs at least one tool in 'tools'")
        return offered
    if isinstance(choice, dict) and choice.get("type") == "function" and isinstance(choice.get("function"), dict):
        name = choice["function"].get("name")
        named = [t for t in offered if t["function"].get("name") == name]
        if not named:
            raise BadRequest(f"tool_choice names the function '{name}', which is not in 'tools'")
        return named
    raise BadRequest(
        'invalid tool_choice: use "auto", "none", "required" or {"type": "function", "function": {"name": ...}}'
    )


def call_schema(tools: list[dict[str, Any]]) -> dict[str, Any]:
    """The JSON schema of one call to any of ``tools``."""
    options = []
    for tool in tools:
        function = tool["function"]
        parameters = function.get("parameters")
        arguments = parameters if isinstance(parameters, dict) and parameters else {"type": "object"}
        options.append({
            "type": "object",
            "properties": {"name": {"const": function.get("name", "")}, "arguments": arguments},
            "required": ["name", "arguments"],
        })  # fmt: skip
    return options[0] if len(options) == 1 else {"anyOf": options}


def tool_call_grammar(tools: list[dict[str, Any]], tag: str) -> str:
    """GBNF for one call to any of ``tools``, after ``tag`` (and before its closing tag, if it has one)."""
    from llama_cpp import llama_grammar  # GBNF is llama.cpp's grammar language; its converter is the reference

    try:
        body = str(llama_grammar.json_schema_to_gbnf(json.dumps(call_schema(tools))))
    except Exception as exc:  # the converter raises plain exceptions on schemas it cannot express
        raise BadRequest(f"invalid tool parameters: cannot turn their JSON schema into a grammar ({exc})") from None
    body = _ROOT.sub("tool-call ::=", body)
    if tag in ("{", "["):  # the model writes bare JSON
        return body + "\nroot ::= tool-call\n"
    closing = "</" + tag[1:] if tag.startswith("<") and not tag.startswith("</") else ""
    close = f' "\\n"? {_literal(closing)}' if closing else ""
    return body + f'\nroot ::= {_literal(tag)} "\\n"? tool-call{close}\n'


def _literal(text: str) -> str:
    return json.dumps(text)  # a GBNF string literal escapes as JSON does for these tags
