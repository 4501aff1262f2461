"""A spare runner process: started before any model is needed, it has llama.cpp imported by the time
the first load comes, that load runs in it, and the scheduler starts another only once nothing is
loaded. `corral serve` starts one with the server; none outlives the server."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

import httpx
import pytest

from corral.config import Settings
from corral.models.recipes import store_gguf
from corral.models.store import Store
from corral.plugins import Plugins
from corral.runtime.isolation import SpareRunner
from corral.runtime.scheduler import Scheduler
from serverproc import running_server

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="reads the runner's memory map in /proc")

GREEDY = {"temperature": 0, "num_predict": 6, "repeat_penalty": 1.0}


def llama_mapped(pid: int, wait: float = 60.0) -> bool:
    """Whether process ``pid`` has llama.cpp's library mapped, waiting up to ``wait`` seconds for it."""
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if "libllama" in Path(f"/proc/{pid}/maps").read_text():
            return True
        time.sleep(0.05)
    return False


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] not in "ZX"
    except FileNotFoundError:
        return False


def test_the_first_load_runs_in_the_prepared_spare_and_a_new_one_waits_after_unload(
    tmp_path: Path, tiny_gguf: Path
) -> None:
    settings = Settings(home=tmp_path, models=tmp_path / "models", num_ctx=128, num_parallel=1)
    store_gguf(Store(settings.models_dir), "tiny", tiny_gguf)

    async def main() -> tuple[str, str]:
        spare = SpareRunner("cpu")
        spare.start()
        first_spare = spare.pid
        assert first_spare is not None and llama_mapped(first_spare)  # prepared before any model was asked for
        sched = Scheduler(settings, Plugins(), spare=spare)
        try:
            ticket = await sched.acquire("tiny", GREEDY)
            assert ticket.loaded.worker.runner.pid == first_spare  # type: ignore[union-attr]
            assert spare.pid is None  # taken: no second process waits while a model is loaded
            text = "".join([e.text async for e in sched.stream(ticket, "the cat sat")])
            sched.release(ticket)
            assert await sched.unload("tiny")
            assert not alive(first_spare)
            second_spare = spare.pid
            assert second_spare is not None and second_spare != first_spare and llama_mapped(second_spare)
            again = await sched.acquire("tiny", GREEDY)
            assert again.loaded.worker.runner.pid == second_spare  # type: ignore[union-attr]
            text_again = "".join([e.text async for e in sched.stream(again, "the cat sat")])
            sched.release(again)
        finally:
            await sched.close()
        assert spare.pid is None and not alive(second_spare)  # closing the scheduler leaves no process behind
        return text, text_again

    text, text_again = asyncio.run(main())
    assert text and text == text_again


def test_a_spare_that_is_never_used_exits_with_its_owner(tmp_path: Path) -> None:
    spare = SpareRunner("cpu")
    spare.start()
    pid = spare.pid
    assert pid is not None and alive(pid)
    spare.close()
    assert not alive(pid)


def runners_of(home: Path) -> list[int]:
    """Runner processes started by the server whose CORRAL_HOME is ``home``."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if b"corral.runtime.isolation" in (proc / "cmdline").read_bytes() and (
                f"CORRAL_HOME={home}".encode() in (proc / "environ").read_bytes().split(b"\0")
            ):
                found.append(int(proc.name))
        except (OSError, ValueError):
            continue
    return [pid for pid in found if alive(pid)]


def test_corral_serve_starts_a_spare_that_the_first_request_uses(tmp_path: Path, tiny_gguf: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    store_gguf(Store(home / "models"), "tiny", tiny_gguf)
    with running_server(home) as url:
        waiting = runners_of(home)
        assert len(waiting) == 1 and llama_mapped(waiting[0])
        body = {"model": "tiny", "prompt": "the cat", "stream": False, "options": GREEDY}
        reply = httpx.post(f"{url}/api/generate", json=body, timeout=120)
        assert reply.status_code == 200 and reply.json()["done"] is True
        assert runners_of(home) == waiting  # the model loaded in the spare, and no new spare waits
    deadline = time.monotonic() + 20
    while runners_of(home) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert runners_of(home) == []
