"""corral create refuses, before writing anything, a parameter Corral accepts in Ollama's shape but
cannot honour."""

from __future__ import annotations

from pathlib import Path

import pytest

from corral.errors import BadRequest
from corral.models.create import prepare
from corral.models.names import ModelName
from corral.models.store import Store
from corral.types import CreateRequest


def test_num_keep_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    store = Store(tmp_path / "models")
    request = CreateRequest.model_validate({"model": "kept", "from": "base", "parameters": {"num_keep": "24"}})
    with pytest.raises(BadRequest, match="num_keep is not supported: Corral never shifts the context"):
        prepare(store, request)
    assert not store.exists(ModelName.parse("kept"))
