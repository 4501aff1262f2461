"""The OpenAI API tests of ``test_openai_api``, served by the metal backend's MLX engine on mlx's CPU
device (``mlx[cpu]`` on Linux), so MLX answers every request the CPU backend answers. Skipped only
where mlx cannot be imported.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

try:
    import mlx.core  # noqa: F401

    MLX_MISSING = ""
except Exception as exc:  # ImportError without the cpu extra; OSError where glibc is older than 2.35
    MLX_MISSING = f"mlx cannot be imported here ({type(exc).__name__}: {exc}); pip install 'mlx[cpu]'"

pytestmark = [pytest.mark.metal, pytest.mark.skipif(bool(MLX_MISSING), reason=MLX_MISSING or "-")]


@pytest.fixture(scope="module")
def corral(tmp_path_factory: pytest.TempPathFactory, tiny_gguf: Path) -> Iterator[Any]:
    """test_openai_api's app, with models loaded by the MLX engine on mlx's CPU device, in-process (the
    metal backend itself runs only on a Mac)."""
    import test_openai_api as api
    from corral_backend_metal.mlx_engine import MLXRunner

    cache = tmp_path_factory.mktemp("mlx-cache")
    backend = api.EngineBackend("mlx", lambda spec: MLXRunner(spec, device="cpu", cache_root=cache))
    with api.serve_with(backend, tmp_path_factory.mktemp("corral-mlx-api"), tiny_gguf) as env:
        yield env


if not MLX_MISSING:
    import test_openai_api

    globals().update(test_openai_api.suite_for_another_engine())


def test_the_api_tests_really_run_on_the_mlx_engine(corral: Any) -> None:
    from corral_backend_metal.mlx_engine import MLXRunner

    assert corral.chat(max_tokens=2, temperature=0)["choices"]
    [loaded] = [m for m in corral.scheduler.loaded.values() if m.recipe.name.display.startswith("tiny")]
    assert loaded.backend == "mlx"
    assert isinstance(loaded.worker.runner, MLXRunner)
