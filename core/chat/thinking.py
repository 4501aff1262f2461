"""Reasoning ("thinking") models: the trace they write between tags, split from the answer, as Ollama does.

With ``think`` set, a request renders the template with thinking on (Go templates' ``.Think``, Jinja
templates' ``enable_thinking``) and the reply is split: what the model writes inside the thinking
tags (``<think>``…``</think>`` unless its Go template shows others around ``.Thinking``) goes to
``thinking``, the rest to the content. A prompt that already opened the tag (templates that end
with ``<think>``) starts the reply inside the trace. A model whose template knows nothing of
thinking refuses ``think`` with a 400, as Ollama.
"""

from __future__ import annotations

import re

from corral.chat.toolcalls import overlap
from corral.errors import BadRequest

OPEN, CLOSE = "<think>", "</think>"
_GO_THINKING = re.compile(r"(\S*)\s*\{\{-?\s*\.Thinking\s*-?\}\}\s*(\S*)")


def can_think(template: str | None, chat_template: str | None) -> bool:
    """Whether the model's template (a Modelfile's Go one, else the GGUF's Jinja one) can think."""
    if template is not None:
        return ".Think" in template
    return bool(chat_template) and ("enable_thinking" in chat_template or OPEN in chat_template)  # type: ignore[operator]


def tags(template: str | None) -> tuple[str, str]:
    """The tags around a thinking trace: from a Go template's ``<tag>{{ .Thinking }}</tag>``, else <think>."""
    match = _GO_THINKING.search(template or "")
    if match:
        opening, closing = match.group(1).split("}}")[-1], match.group(2).split("{{")[0]
        if opening.startswith("<") and closing.startswith("</"):
            return opening, closing
    return OPEN, CLOSE


def wanted(think: bool | str | None) -> bool:
    """Ollama's ``think``: true, or a level ("low", "medium", "high") for models that take one."""
    return think is True or (isinstance(think, str) and think.lower() not in ("", "false", "none"))


def parser_for(
    think: bool | str | None, template: str | None, chat_template: str | None, prompt: str, model: str
) -> ThinkingParser | None:
    """The parser for a reply when the request asked to ``think``; None when it did not. ``template``
    is the Go template in use (None: the GGUF's Jinja ``chat_template``); ``prompt`` as rendered."""
    if not wanted(think):
        return None
    if not can_think(template, chat_template):
        raise BadRequest(f'"{model}" does not support thinking')
    opening, closing = tags(template)
    return ThinkingParser(opening, closing, opened=prompt.rstrip().endswith(opening))


class ThinkingParser:
    """Feeds on the reply's text; gives back (thinking, content) for each piece. Blank lines around the
    trace belong to neither, as in Ollama."""

    def __init__(self, opening: str = OPEN, closing: str = CLOSE, *, opened: bool = False) -> None:
        self.opening, self.closing = opening, closing
        # looking: for the opening tag; thinking; after: eating the blanks that follow the trace; done
        self._state = "thinking" if opened else "looking"
        self._started = False  # the trace's leading blanks are gone
        self._held = ""

    def feed(self, text: str) -> tuple[str, str]:
        self._held += text
        if self._state == "looking":
            start = self._held.lstrip()
            if start.startswith(self.opening):
                self._state, self._held = "thinking", start[len(self.opening) :]
            elif not start or self.opening.startswith(start):
                return "", ""  # only blanks, or the opening tag arriving in pieces
            else:
                self._state = "done"  # the reply does not think: all of it is content
        thought = self._thinking() if self._state == "thinking" else ""
        if self._state == "after":
            self._held = self._held.lstrip()
            if self._held:
                self._state = "done"
        if self._state == "done":
            out, self._held = self._held, ""
            return thought, out
        return thought, ""

    def finish(self) -> tuple[str, str]:
        """What is still held at the end: an unclosed trace stays thinking; a lone tag start is content."""
        held, self._held = self._held, ""
        if self._state == "after":
            return "", ""
        return (held, "") if self._state == "thinking" else ("", held)

    def _thinking(self) -> str:
        if not self._started:
            self._held = self._held.lstrip()
            self._started = bool(self._held)
        at = self._held.find(self.closing)
        if at >= 0:
            thought, self._held, self._state = self._held[:at], self._held[at + len(self.closing) :], "after"
            return thought
        keep = overlap(self._held, self.closing)  # the closing tag may be arriving in pieces
        thought, self._held = self._held[: len(self._held) - keep], self._held[len(self._held) - keep :]
        return thought
