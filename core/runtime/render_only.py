"""Ollama's ``_debug_render_only``: the prompt a request would give the model, rendered without loading it.

Rendering needs three facts a loaded runner reports (the GGUF's chat template and its BOS/EOS texts);
a model that is not loaded has them read from its GGUF's metadata instead. An ONNX model folder has no
GGUF to read, so for it (only) the model is loaded, or reused if it already is.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

from corral.hookspecs import ModelInfo
from corral.models.recipes import Recipe, resolve
from corral.runtime import generation
from corral.runtime.generation import ChatPrompt, Prompt, Target
from corral.runtime.scheduler import Scheduler


@dataclass(frozen=True)
class Rendered:
    model: str
    text: str  # what the model would be given (token ids as text for a raw token prompt)
    image_count: int


async def render_only(scheduler: Scheduler, target: Target, prompt: Prompt, image_count: int = 0) -> Rendered:
    recipe = await asyncio.to_thread(resolve, scheduler.store, target.model)
    info = _loaded_info(scheduler, recipe) or await asyncio.to_thread(template_facts, recipe.model_path)
    if info is None and (recipe.template or getattr(prompt, "template", None)):
        info = _facts()  # a Go template needs none of the model's own facts
    if info is None:  # neither a GGUF nor a Go template: only the engine knows the template
        async with generation.holding(scheduler, target) as ticket:
            info = ticket.loaded.worker.wait_loaded().info
    text, _reply = generation.render_recipe(recipe, info, prompt)
    if isinstance(prompt, ChatPrompt):
        image_count = sum(len(m.images or []) for m in prompt.messages)
    return Rendered(recipe.name.display, text if isinstance(text, str) else str(text), image_count)


def _loaded_info(scheduler: Scheduler, recipe: Recipe) -> ModelInfo | None:
    for loaded in scheduler.ps():
        runner = loaded.worker.runner
        if loaded.recipe.digest == recipe.digest and runner is not None:
            return runner.info
    return None


def template_facts(path: Path) -> ModelInfo | None:
    """What rendering needs of a GGUF, from its metadata; None for a file that is not a GGUF. The other
    fields are zero: nothing that renders a prompt reads them."""
    from corral.formats.gguf import read_metadata  # gguf pulls numpy in: not at the server's start

    try:
        with open(path, "rb") as fh:
            if fh.read(4) != b"GGUF":
                return None
    except (IsADirectoryError, OSError):
        return None
    meta = read_metadata(path)
    tokens = meta.get("tokenizer.ggml.tokens") or []

    def text_of(key: str) -> str:
        index = meta.get(key)
        return tokens[index] if isinstance(index, int) and 0 <= index < len(tokens) else ""

    bos = meta.get("tokenizer.ggml.bos_token_id")
    return _facts(
        bos_token=bos if isinstance(bos, int) else None,
        add_bos=bool(meta.get("tokenizer.ggml.add_bos_token", False)),
        bos_text=text_of("tokenizer.ggml.bos_token_id"),
        eos_text=text_of("tokenizer.ggml.eos_token_id"),
        chat_template=meta.get("tokenizer.chat_template"),
    )


def _facts(
    *,
    bos_token: int | None = None,
    add_bos: bool = False,
    bos_text: str = "",
    eos_text: str = "",
    chat_template: str | None = None,
) -> ModelInfo:
    return ModelInfo(
        architecture="unknown",
        n_ctx_train=0,
        n_ctx=0,
        n_vocab=0,
        n_embd=0,
        num_parallel=1,
        bos_token=bos_token,
        add_bos=add_bos,
        bos_text=bos_text,
        eos_text=eos_text,
        chat_template=chat_template,
        size_bytes=0,
        size_on_device=0,
    )
