"""Building the prompt a model sees: system prompt, MESSAGE history, template choice, output format."""

from __future__ import annotations

import json
from typing import Any

from corral.chat.jinja import render_chat
from corral.errors import BadRequest
from corral.hookspecs import ModelInfo
from corral.models.recipes import Recipe
from corral.types import Message


def chat_messages(recipe: Recipe, messages: list[Message]) -> list[Message]:
    """The model's MESSAGE history, then the request's; the model's SYSTEM unless the request has one."""
    msgs = [*recipe.messages, *messages]
    if recipe.system and not any(m.role == "system" for m in msgs):
        msgs.insert(0, Message(role="system", content=recipe.system))
    return msgs


def render(
    recipe: Recipe,
    info: ModelInfo,
    messages: list[Message],
    *,
    template: str | None = None,
    tools: list[dict[str, Any]] | None = None,
    think: bool | str | None = None,
) -> str:
    """Render with a Go template (Modelfile TEMPLATE or the request's), else the GGUF's Jinja one.
    ``think``: the request's choice (True/False or a level such as "high"), None when it made none."""
    go_template = template or recipe.template
    plain = [m.model_dump(exclude_none=True) for m in messages]
    if go_template:
        from corral.chat import gotemplate

        return gotemplate.render(go_template, messages=plain, tools=tools, think=think)
    from corral.chat.thinking import wanted

    return render_chat(
        info.chat_template,
        plain,
        add_generation_prompt=True,
        bos_token=info.bos_text,
        eos_token=info.eos_text,
        tools=tools,
        enable_thinking=wanted(think) if think is not None else None,
    )


def render_insert(recipe: Recipe, prompt: str, suffix: str, *, template: str | None = None, model: str = "") -> str:
    """Fill-in-the-middle (``suffix``): only a Go template that reads .Suffix knows the model's FIM tokens."""
    go_template = template or recipe.template
    if not go_template or ".Suffix" not in go_template:
        raise BadRequest(f'"{model or recipe.name.display}" does not support insert')
    from corral.chat import gotemplate

    return gotemplate.render(go_template, messages=[], prompt=prompt, suffix=suffix)


def generate_messages(recipe: Recipe, prompt: str, system: str | None) -> list[Message]:
    """/api/generate's single turn: the request's system (else the model's) and the prompt."""
    msgs: list[Message] = []
    system_text = system if system is not None else recipe.system
    if system_text:
        msgs.append(Message(role="system", content=system_text))
    msgs.append(Message(role="user", content=prompt))
    return msgs


def grammar_for(format_: str | dict[str, Any] | None) -> str | None:
    """Ollama's ``format``: "json" or a JSON schema, as a GBNF grammar for the sampler."""
    if format_ in (None, ""):
        return None
    from llama_cpp import llama_grammar  # GBNF is llama.cpp's grammar language; its converter is the reference

    if format_ == "json":
        return str(llama_grammar.JSON_GBNF)
    if isinstance(format_, dict):
        try:
            return str(llama_grammar.json_schema_to_gbnf(json.dumps(format_)))
        except Exception as exc:  # the converter raises plain exceptions on schemas it cannot express
            raise BadRequest(f"invalid format: cannot turn this JSON schema into a grammar ({exc})") from None
    raise BadRequest(f"invalid format '{format_}': use \"json\" or a JSON schema object")
