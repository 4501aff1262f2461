"""A model may carry num_keep (what a context shift keeps), as Ollama's models do: corral create stores it."""

from __future__ import annotations

from pathlib import Path

from corral.models.create import build, prepare
from corral.models.recipes import resolve, store_gguf
from corral.models.store import Store
from corral.types import CreateRequest


def test_num_keep_is_stored_with_the_model(tmp_path: Path, tiny_gguf: Path) -> None:
    store = Store(tmp_path / "models")
    store_gguf(store, "base:latest", tiny_gguf)
    request = CreateRequest.model_validate({"model": "kept", "from": "base", "parameters": {"num_keep": "24"}})
    build(store, prepare(store, request))
    assert resolve(store, "kept").options.num_keep == 24
