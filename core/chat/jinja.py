"""Chat templates: a model's Jinja ``tokenizer.chat_template`` rendered in a sandbox."""

from __future__ import annotations

import json
from datetime import datetime
from functools import lru_cache
from typing import Any

from jinja2 import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from corral.errors import BadRequest

# Used when a model carries no template of its own; ChatML is what most small instruct models speak.
CHATML = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _raise(message: str) -> None:
    raise TemplateError(message)


def _tojson(value: Any, indent: int | None = None, ensure_ascii: bool = False, **_: Any) -> str:
    return json.dumps(value, indent=indent, ensure_ascii=ensure_ascii)


@lru_cache(maxsize=32)
def _compile(source: str) -> Any:
    # Templates come from downloaded model files: the sandbox stops them reaching Python internals.
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = _raise
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    env.filters["tojson"] = _tojson
    return env.from_string(source)


def render_chat(
    template: str | None,
    messages: list[dict[str, Any]],
    *,
    add_generation_prompt: bool = True,
    bos_token: str = "",
    eos_token: str = "",
    tools: list[dict[str, Any]] | None = None,
    enable_thinking: bool | None = None,
) -> str:
    """Render a conversation into the prompt text the model was trained on. ``enable_thinking`` is
    the variable reasoning models' templates (Qwen3's) read; left undefined unless given."""
    extra = {} if enable_thinking is None else {"enable_thinking": enable_thinking}
    try:
        return _compile(template or CHATML).render(
            messages=messages,
            add_generation_prompt=add_generation_prompt,
            bos_token=bos_token,
            eos_token=eos_token,
            tools=tools,
            **extra,
        )
    except TemplateError as exc:
        raise BadRequest(f"the model's chat template failed to render: {exc}") from None
