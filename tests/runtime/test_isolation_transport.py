"""The runner process's two ways to connect: a socket pair (POSIX) and a loopback socket with a key (Windows).

Both run here for real, so the Windows path is exercised on every system rather than only on Windows.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from corral.hookspecs import LoadSpec
from corral.runtime.isolation import ProcessWorker


@pytest.mark.parametrize("transport", ["socketpair", "loopback"])
def test_runner_process_loads_and_stops(tiny_gguf: Path, transport: str) -> None:
    worker = ProcessWorker(
        "cpu", LoadSpec(model_path=tiny_gguf, num_ctx=128, num_parallel=1), "tiny", transport=transport
    )
    try:
        runner = worker.wait_loaded(120)
        assert runner.info.n_vocab > 0 and runner.pid != 0
        assert worker.alive
    finally:
        worker.stop()
        worker.join(30)
    assert not worker.alive
