"""Runner isolation: a model whose engine aborts takes down only its own runner process."""

from __future__ import annotations

import asyncio
import os
import textwrap
from pathlib import Path

import pytest

from corral.config import Settings
from corral.errors import RunnerCrashed
from corral.models.recipes import store_gguf
from corral.models.store import Store
from corral.plugins import Plugins
from corral.runtime.scheduler import Scheduler
from fakes import write_fake_model

CRASHY = """
import os
from corral.hookspecs import ModelInfo, Probe, hookimpl

class Runner:
    def __init__(self, spec):
        self.info = ModelInfo("crashy", 128, 128, 257, 4, spec.num_parallel, None, False, "", "", None, 10, 0)
    def tokenize(self, text, *, special=True, add_bos=False): return list(text.encode())
    def token_bytes(self, token): return b"x"
    def is_end_of_generation(self, token): return False
    def set_sampling(self, seq, sampling): pass
    def cached(self, seq): return 0
    def truncate(self, seq, keep): return 0
    def step(self, batch):
        os.abort()  # what llama.cpp does on some malformed vocabularies
    def embed(self, texts): return []
    def close(self): pass

class Crashy:
    name, priority, description = "crashy", 1, "aborts on the first decode"
    def probe(self): return Probe(available=True)
    def load(self, spec): return Runner(spec)

@hookimpl
def corral_register_backends(register):
    register(Crashy())
"""


@pytest.fixture
def crashy_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "corral_crashy.py").write_text(textwrap.dedent(CRASHY))
    info = site / "crashy-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: crashy\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[corral]\ncrashy = corral_crashy\n")
    monkeypatch.syspath_prepend(str(site))
    # Runner processes are fresh interpreters: they find the plugin through PYTHONPATH.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")])))


def test_a_crashing_runner_fails_its_request_and_the_server_goes_on(
    tmp_path: Path, tiny_gguf: Path, crashy_plugin: None
) -> None:
    settings = Settings(home=tmp_path, models=tmp_path / "models", isolate_runners=True, num_ctx=128, num_parallel=1)
    write_fake_model(settings.models_dir, "doomed:latest")
    store_gguf(Store(settings.models_dir), "tiny", tiny_gguf)

    async def main() -> tuple[str, str, int]:
        sched = Scheduler(settings, Plugins())
        try:
            ticket = await sched.acquire("doomed", backend="crashy")
            crashed_pid = ticket.loaded.worker.runner.pid  # type: ignore[union-attr]
            with pytest.raises(RunnerCrashed, match="SIGABRT") as err:
                async for _ in sched.stream(ticket, "hello"):
                    pass
            sched.release(ticket)
            healthy = await sched.acquire("tiny", {"temperature": 0, "num_predict": 4}, backend="cpu")
            text = "".join([e.text async for e in sched.stream(healthy, "hello world")])
            sched.release(healthy)
            again = await sched.acquire("doomed", backend="crashy")  # a crashed runner is replaced
            new_pid = again.loaded.worker.runner.pid  # type: ignore[union-attr]
            sched.release(again)
            assert new_pid != crashed_pid and new_pid != os.getpid()
            return str(err.value), text, len(sched.ps())
        finally:
            await sched.close()

    message, text, loaded = asyncio.run(main())
    assert "the model runner for 'doomed:latest' crashed (killed by signal SIGABRT)" in message
    assert len(text) > 0
    assert loaded == 2


def test_an_isolated_runner_streams_like_an_in_process_one(tmp_path: Path, tiny_gguf: Path) -> None:
    results = []
    for isolate in (False, True):
        settings = Settings(
            home=tmp_path, models=tmp_path / "models", isolate_runners=isolate, num_ctx=128, num_parallel=2
        )
        store_gguf(Store(settings.models_dir), "tiny", tiny_gguf)

        async def main(settings: Settings = settings) -> list[str]:
            sched = Scheduler(settings, Plugins())
            try:
                ticket = await sched.acquire("tiny", {"temperature": 0, "num_predict": 12, "repeat_penalty": 1.0})
                out = [e.text async for e in sched.stream(ticket, "the cat sat")]
                vectors, _ = await sched.embed(ticket, ["hello"])
                sched.release(ticket)
                return [*out, str(len(vectors[0]))]
            finally:
                await sched.close()

        results.append(asyncio.run(main()))
    assert results[0] == results[1]
