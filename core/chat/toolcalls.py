"""Tool calls in a model's streamed text: found, parsed and taken out of the content, as Ollama does.

Models write a tool call as text: usually a tag, then JSON with the function's name and arguments
(``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``, ``[TOOL_CALLS] [{...}]``,
``<|python_tag|>{"name": ..., "parameters": {...}}``) or the bare JSON. ``tool_tag`` finds the tag
the model's template uses (Ollama: the first text after ``{{ if .ToolCalls }}``); ``{`` when it
names none. ``ToolCallParser`` is fed the stream piece by piece: text before a tag streams on as
content at once, text from a tag is held until it is a complete JSON value, which becomes tool calls
when it names a tool the request offered, and is given back as content, unchanged, otherwise. So no
text is lost, and only a possible tool call is ever held back.
"""

from __future__ import annotations

import json
import re
from typing import Any

# Tags models put before their tool calls, for chat templates that are Jinja (the GGUF's own).
KNOWN_TAGS = (
    "<tool_call>", "<|tool_call|>", "<tool_calls>", "[TOOL_CALLS]", "<|python_tag|>", "<function_calls>",
    "<|tool_call_start|>", "<start_function_call>", "<｜tool▁calls▁begin｜>",
)  # fmt: skip
_GO_TOOL_CALLS = re.compile(r"\{\{-?\s*(?:else\s+)?if\s+\.ToolCalls\s*-?\}\}(.*?)\{\{", re.S)


def tool_tag(template: str | None, *, go: bool) -> str:
    """The text a model writes before a tool call, from its template; "{" when it names none."""
    if not template:
        return "{"
    if go:
        match = _GO_TOOL_CALLS.search(template)
        # the text up to the JSON: "<tool_call>", or "[TOOL_CALLS]" from "[TOOL_CALLS] [{...}]"
        tag = match.group(1).split("{")[0].strip().removesuffix("[").strip() if match else ""
        return tag or "{"
    return next((tag for tag in KNOWN_TAGS if tag in template), "{")


class ToolCallParser:
    """Splits one reply's text into content and tool calls (Ollama's ``message.tool_calls`` items)."""

    def __init__(self, tools: list[dict[str, Any]], tag: str) -> None:
        self.names = {str((t.get("function") or {}).get("name")) for t in tools if isinstance(t, dict)}
        self.tag = tag
        self.closing = "</" + tag[1:] if tag.startswith("<") and not tag.startswith("</") else ""
        self.calls: list[dict[str, Any]] = []
        self._buffer = ""  # text not yet given out
        self._held: str | None = None  # from a tag on: the raw text held, given back if it is no call
        self._after_call = False  # this tag's JSON was a call: what follows may be more calls, or content

    def feed(self, text: str) -> tuple[str, list[dict[str, Any]]]:
        """Content to send now, and the tool calls completed by ``text``."""
        self._buffer += text
        content: list[str] = []
        found: list[dict[str, Any]] = []
        while self._step(content, found):
            pass
        return "".join(content), found

    def finish(self) -> str:
        """The content still held at the end of the reply (an unfinished call is given back as text)."""
        rest = self._buffer if self._held is None else self._held + self._buffer
        self._buffer, self._held = "", None
        if self.calls:  # what follows complete calls is closing tags and blank lines, or real content
            rest = rest.replace(self.closing, "").replace(self.tag, "") if self.closing else rest
            return rest if rest.strip() else ""
        return rest

    # ---- the state machine -------------------------------------------------------------------------
    def _step(self, content: list[str], found: list[dict[str, Any]]) -> bool:
        """Advance once; False when more text is needed."""
        if self._held is None:
            return self._find_tag(content)
        return self._take_call(content, found)

    def _find_tag(self, content: list[str]) -> bool:
        at = self._buffer.find(self.tag)
        if at < 0:
            keep = overlap(self._buffer, self.tag)  # a tag may be arriving in pieces
            content.append(self._buffer[: len(self._buffer) - keep])
            self._buffer = self._buffer[len(self._buffer) - keep :]
            return False
        content.append(self._buffer[:at])
        start = at if self.tag in ("{", "[") else at + len(self.tag)  # a brace is part of the JSON
        self._held, self._buffer = self._buffer[at:start], self._buffer[start:]
        return True

    def _take_call(self, content: list[str], found: list[dict[str, Any]]) -> bool:
        assert self._held is not None
        text = self._skip_separators(self._buffer)
        if not text or _could_be_separator(text, (self.tag, self.closing)):
            return False
        if text[0] not in "{[":  # no JSON after the tag: content, up to the next tag
            skipped = len(self._buffer) - len(text)
            nxt = self._buffer.find(self.tag, skipped + 1)
            upto = nxt if nxt >= 0 else len(self._buffer)
            back = self._buffer[skipped:upto] if self._after_call else self._held + self._buffer[:upto]
            return self._give_back(content, back, upto)
        end = _json_end(text)
        if end is None:
            return False  # the JSON is not complete yet
        consumed = len(self._buffer) - len(text) + end
        calls = self._as_calls(text[:end])
        if calls is None:
            return self._give_back(content, self._held + self._buffer[:consumed], consumed)
        for call in calls:
            call["function"]["index"] = len(self.calls)
            self.calls.append(call)
            found.append(call)
        self._held, self._buffer, self._after_call = "", self._buffer[consumed:], True
        return True

    def _give_back(self, content: list[str], text: str, consumed: int) -> bool:
        """Not a tool call: the held text is content after all; look for the next tag after it."""
        content.append(text)
        self._held, self._buffer, self._after_call = None, self._buffer[consumed:], False
        return True

    def _skip_separators(self, text: str) -> str:
        """Whitespace and tags between calls (``</tool_call>\\n<tool_call>``)."""
        while True:
            stripped = text.lstrip()
            for tag in (self.closing, self.tag if self.tag not in ("{", "[") else ""):
                if tag and stripped.startswith(tag):
                    stripped = stripped[len(tag) :]
            if stripped == text:
                return text
            text = stripped

    def _as_calls(self, raw: str) -> list[dict[str, Any]] | None:
        try:
            value = json.loads(raw)
        except ValueError:
            return None
        items = value if isinstance(value, list) else [value]
        calls = [self._as_call(item) for item in items]
        if not calls or any(c is None for c in calls):
            return None
        return calls  # type: ignore[return-value]

    def _as_call(self, item: Any) -> dict[str, Any] | None:
        if not isinstance(item, dict):
            return None
        if isinstance(item.get("function"), dict):  # OpenAI's shape
            item = item["function"]
        name = item.get("name")
        args = item.get("arguments", item.get("parameters", {}))
        if isinstance(args, str):
            try:
                args = json.loads(args) if args.strip() else {}
            except ValueError:
                return None
        if not isinstance(name, str) or name not in self.names or not isinstance(args, dict):
            return None
        return {"function": {"name": name, "arguments": args}}


def overlap(text: str, tag: str) -> int:
    """The length of the longest end of ``text`` that begins ``tag``."""
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:n]):
            return n
    return 0


def _could_be_separator(text: str, tags: tuple[str, ...]) -> bool:
    return any(tag and tag.startswith(text) and tag != text for tag in tags)


def _json_end(text: str) -> int | None:
    """Where the JSON object or array at the start of ``text`` ends, or None if it is not closed yet."""
    depth, in_string, escaped = 0, False, False
    for i, ch in enumerate(text):
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "{[":
            depth += 1
        elif ch in "}]":
            depth -= 1
            if depth == 0:
                return i + 1
    return None


def parser_for(
    template: str | None, chat_template: str | None, tools: list[dict[str, Any]] | None
) -> ToolCallParser | None:
    """A parser for a reply to a request that offered ``tools``; None when it offered none.
    ``template``: the model's Modelfile TEMPLATE (Go), which wins over its GGUF ``chat_template`` (Jinja)."""
    if not tools:
        return None
    tag = tool_tag(template, go=True) if template is not None else tool_tag(chat_template, go=False)
    return ToolCallParser(tools, tag)
