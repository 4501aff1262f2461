"""Tool calls and thinking traces parsed out of streamed text: every model family's shape, text that
only looks like a call or a trace, and the same result however the stream is cut into pieces."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from corral.chat.toolcalls import ToolCallParser, tool_tag

TOOLS = [
    {"type": "function", "function": {"name": "get_weather",
                                      "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}},
    {"type": "function", "function": {"name": "add",
                                      "parameters": {"type": "object", "properties": {"a": {}, "b": {}}}}},
]  # fmt: skip
PARIS = {"function": {"index": 0, "name": "get_weather", "arguments": {"city": "Paris"}}}
ADD = {"function": {"index": 1, "name": "add", "arguments": {"a": 1, "b": 2}}}


def parse(text: str, tag: str, pieces: list[int] | None = None) -> tuple[str, list[dict[str, Any]]]:
    """Feed ``text`` cut at ``pieces`` (every character by default); the content and calls out."""
    parser = ToolCallParser(TOOLS, tag)
    cuts = pieces if pieces is not None else list(range(1, len(text)))
    content, calls, last = [], [], 0
    for cut in [*cuts, len(text)]:
        part, found = parser.feed(text[last:cut])
        content.append(part)
        calls += found
        last = cut
    content.append(parser.finish())
    assert calls == parser.calls
    return "".join(content), calls


CASES = [
    # (model output, tag, content, calls)
    ('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>', "<tool_call>", "", [PARIS]),
    ('Let me look. <tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>', "<tool_call>",
     "Let me look. ", [PARIS]),
    ('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n<tool_call>\n'
     '{"name": "add", "arguments": {"a": 1, "b": 2}}\n</tool_call>', "<tool_call>", "", [PARIS, ADD]),
    ('[TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "Paris"}}, '
     '{"name": "add", "arguments": {"a": 1, "b": 2}}]',
     "[TOOL_CALLS]", "", [PARIS, ADD]),
    ('<|python_tag|>{"name": "get_weather", "parameters": {"city": "Paris"}}', "<|python_tag|>", "", [PARIS]),
    ('{"name": "get_weather", "arguments": "{\\"city\\": \\"Paris\\"}"}', "{", "", [PARIS]),
    ('{"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}', "{", "", [PARIS]),
    ('<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call> Done, it is sunny.', "<tool_call>",
     "Done, it is sunny.", [PARIS]),  # the blank between a call and more text goes with the separators
    # not calls: given back exactly
    ('{"answer": 42, "note": "a {brace} in a string"}', "{", '{"answer": 42, "note": "a {brace} in a string"}', []),
    ("Use a dict: {x: 1} or {'y': 2}.", "{", "Use a dict: {x: 1} or {'y': 2}.", []),
    ('<tool_call>{"name": "launch_rockets", "arguments": {}}</tool_call>', "<tool_call>",
     '<tool_call>{"name": "launch_rockets", "arguments": {}}</tool_call>', []),
    ("I would use <tool_call> tags, but I will not.", "<tool_call>",
     "I would use <tool_call> tags, but I will not.", []),
    ('<tool_call>{"name": "get_weather", "arguments": {"city": "Par', "<tool_call>",
     '<tool_call>{"name": "get_weather", "arguments": {"city": "Par', []),
    ("Just text with a < and a <tool", "<tool_call>", "Just text with a < and a <tool", []),
]  # fmt: skip


@pytest.mark.parametrize("output, tag, content, calls", CASES)
def test_calls_and_content(output: str, tag: str, content: str, calls: list[dict[str, Any]]) -> None:
    assert parse(output, tag) == (content, calls)  # one character at a time
    assert parse(output, tag, []) == (content, calls)  # all at once
    rng = random.Random(output)
    for _ in range(20):
        cuts = sorted(rng.sample(range(1, len(output)), min(len(output) - 1, rng.randint(1, 6))))
        assert parse(output, tag, cuts) == (content, calls)


def test_content_before_a_tag_streams_at_once() -> None:
    parser = ToolCallParser(TOOLS, "<tool_call>")
    assert parser.feed("Checking the weather") == ("Checking the weather", [])
    assert parser.feed(" now <tool") == (" now ", [])  # the start of a tag is held
    assert parser.feed('_call>{"name": "get_weather", ') == ("", [])
    assert parser.feed('"arguments": {"city": "Paris"}}') == ("", [PARIS])
    assert parser.finish() == ""


GO_QWEN = """{{- if .Messages }}{{- range .Messages }}{{- if eq .Role "assistant" }}<|im_start|>assistant
{{ if .Content }}{{ .Content }}
{{- else if .ToolCalls }}<tool_call>
{{ range .ToolCalls }}{"name": "{{ .Function.Name }}", "arguments": {{ .Function.Arguments }}}
{{ end }}</tool_call>{{ end }}<|im_end|>{{ end }}{{ end }}{{ end }}"""
GO_MISTRAL = (
    '{{- if .ToolCalls }}[TOOL_CALLS] [{{- range .ToolCalls }}{"name": "{{ .Function.Name }}"}{{- end }}]{{- end }}'
)
JINJA_LLAMA31 = "{%- if tool_call %}<|python_tag|>{{ tool_call.function.name }}{%- endif %}"


def test_the_tag_comes_from_the_template() -> None:
    assert tool_tag(GO_QWEN, go=True) == "<tool_call>"
    assert tool_tag(GO_MISTRAL, go=True) == "[TOOL_CALLS]"
    assert tool_tag("{{ .Prompt }}", go=True) == "{"
    assert tool_tag(JINJA_LLAMA31, go=False) == "<|python_tag|>"
    assert tool_tag("{% for m in messages %}{{ m.content }}{% endfor %}", go=False) == "{"
    assert tool_tag(None, go=False) == "{"


def test_indexes_count_across_feeds() -> None:
    parser = ToolCallParser(TOOLS, "{")
    call = json.dumps({"name": "add", "arguments": {"a": 1, "b": 2}})
    _, first = parser.feed(call + "\n")
    _, second = parser.feed(call)
    assert [c["function"]["index"] for c in first + second] == [0, 1]


# ---- thinking ---------------------------------------------------------------------------------------------

from corral.chat.thinking import ThinkingParser, can_think, tags  # noqa: E402

THINKING_CASES = [
    # (reply, the prompt opened the tag, thinking, content)
    ("<think>\nLet me see.\n</think>\n\nParis.", False, "Let me see.\n", "Paris."),
    ("  <think>a</think>b", False, "a", "b"),
    ("Let me see.</think>Paris.", True, "Let me see.", "Paris."),
    ("\n\nstill thinking when it stopped", True, "still thinking when it stopped", ""),
    ("Paris. <think> is a tag", False, "", "Paris. <think> is a tag"),
    ("<thin", False, "", "<thin"),
    ("<think></think>", False, "", ""),
]  # fmt: skip


def split_thinking(reply: str, opened: bool, cuts: list[int]) -> tuple[str, str]:
    parser = ThinkingParser(opened=opened)
    thought, content, last = [], [], 0
    for cut in [*cuts, len(reply)]:
        t, c = parser.feed(reply[last:cut])
        thought.append(t)
        content.append(c)
        last = cut
    t, c = parser.finish()
    return "".join([*thought, t]), "".join([*content, c])


@pytest.mark.parametrize("reply, opened, thinking, content", THINKING_CASES)
def test_thinking_is_split_however_the_stream_is_cut(reply: str, opened: bool, thinking: str, content: str) -> None:
    assert split_thinking(reply, opened, list(range(1, len(reply)))) == (thinking, content)
    assert split_thinking(reply, opened, []) == (thinking, content)
    rng = random.Random(reply)
    for _ in range(20):
        cuts = (
            sorted(rng.sample(range(1, len(reply)), min(len(reply) - 1, rng.randint(1, 5)))) if len(reply) > 1 else []
        )
        assert split_thinking(reply, opened, cuts) == (thinking, content)


def test_which_templates_think_and_with_what_tags() -> None:
    assert can_think("{{ if .Think }}x{{ end }}", None) and not can_think("{{ .Prompt }}", "enable_thinking")
    assert can_think(None, "{% if enable_thinking %}") and can_think(None, "<think>") and not can_think(None, None)
    assert tags("{{ range .Messages }}{{ if .Thinking }}<thought>{{ .Thinking }}</thought>{{ end }}{{ end }}") == (
        "<thought>",
        "</thought>",
    )
    assert tags("{{ .Prompt }}") == ("<think>", "</think>")
