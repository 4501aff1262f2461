"""One reply's text as it streams, split into its reasoning trace, its content and its tool calls.

The thinking parser takes the trace out first (a trace may mention a tag), then the tool-call parser
reads what is left; either may be absent when the request did not ask for it.
"""

from __future__ import annotations

from typing import Any

from corral.chat import thinking, toolcalls
from corral.chat.thinking import ThinkingParser
from corral.chat.toolcalls import ToolCallParser


class Reply:
    def __init__(self, thinker: ThinkingParser | None = None, tools: ToolCallParser | None = None) -> None:
        self.thinker, self.tools = thinker, tools

    @classmethod
    def for_request(
        cls, *, think: bool | str | None, tools: list[dict[str, Any]] | None, template: str | None,
        chat_template: str | None, prompt: str, model: str,
    ) -> Reply:
        """The parsers a request asked for (``think``, ``tools``) for a model's templates: ``template`` is
        the Go template in use, else None for the GGUF's Jinja ``chat_template``; ``prompt`` as rendered."""
        return cls(
            thinking.parser_for(think, template, chat_template, prompt, model),
            toolcalls.parser_for(template, chat_template, tools),
        )

    def feed(self, text: str, done: bool) -> tuple[str, str, list[dict[str, Any]]]:
        """(thinking, content, tool calls) of the next piece; ``done``: it is the last, flush what is held."""
        thought = ""
        if self.thinker is not None:
            thought, text = self.thinker.feed(text)
            if done:
                more_thought, more_text = self.thinker.finish()
                thought, text = thought + more_thought, text + more_text
        calls: list[dict[str, Any]] = []
        if self.tools is not None:
            text, calls = self.tools.feed(text)
            if done:
                text += self.tools.finish()
        return thought, text, calls
