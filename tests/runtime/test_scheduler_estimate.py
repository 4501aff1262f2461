"""The scheduler asks every backend the same way: a third-party backend's ``estimate`` decides the spec
it loads, its size in ``ps`` and when idle models make room; a backend without one loads unchecked.
Load options (main_gpu, use_mmap) reach the LoadSpec; num_keep is accepted."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Sequence
from pathlib import Path

import pytest

from corral.config import Settings
from corral.errors import InsufficientMemory
from corral.hookspecs import Device, Estimate, LoadSpec, Probe
from corral.runtime.scheduler import Scheduler
from fakes import FakeBackend, FakeRunner, fake_scheduler, write_fake_model


def scheduler(tmp_path: Path, backend: object, payload: bytes | None = None) -> Scheduler:
    s = Settings(home=tmp_path, models=tmp_path / "models", isolate_runners=False)
    for name in ("a:latest", "b:latest"):
        write_fake_model(s.models_dir, name, payload=payload + name.encode() if payload else name.encode())
    return fake_scheduler(s, backend)


async def answer(sched: Scheduler, model: str, **acquire: object) -> str:
    ticket = await sched.acquire(model, **acquire)  # type: ignore[arg-type]
    try:
        return "".join([e.text async for e in sched.stream(ticket, "hi")])
    finally:
        sched.release(ticket)


@dataclasses.dataclass
class OneAtATime(FakeBackend):
    """A third-party backend with its own estimate: 5000 bytes, 4000 on its 'GPU', room for one model;
    it decides the layers to offload and their split, as a GPU backend would."""

    def estimate(self, spec: LoadSpec, devices: Sequence[Device]) -> Estimate | None:
        self.estimates.append((spec, tuple(devices)))
        if any(not r.closed for r in self.runners):
            raise InsufficientMemory("one model at a time on this device")
        return Estimate(dataclasses.replace(spec, num_gpu=7, tensor_split=(1.0, 2.0)), 5000, 4000)


def test_a_third_party_estimate_sets_the_loaded_spec_and_the_reported_size(tmp_path: Path) -> None:
    backend = OneAtATime(script=b"ok")

    async def main() -> None:
        sched = scheduler(tmp_path, backend)
        try:
            assert await answer(sched, "a", keep_alive="10m") == "ok"
            (loaded,) = sched.ps()
            assert (loaded.size, loaded.size_on_device) == (5000, 4000)
            assert loaded.plan is not None and loaded.plan.processor_label == "20%/80% CPU/GPU"
            assert await answer(sched, "a") == "ok"  # the same request again reuses the model
        finally:
            await sched.close()

    asyncio.run(main())
    assert backend.loads == 1
    (runner,) = backend.runners
    assert (runner.spec.num_gpu, runner.spec.tensor_split) == (7, (1.0, 2.0))
    asked, devices = backend.estimates[0]
    assert asked.num_gpu is None  # the estimate saw the request, not a decision made elsewhere
    assert [d.name for d in devices] == ["Fake Device"]  # the backend's own devices, probed fresh


def test_a_third_party_estimate_that_does_not_fit_makes_idle_models_leave(tmp_path: Path) -> None:
    backend = OneAtATime(script=b"ok")

    async def main() -> tuple[list[str], list[bool]]:
        sched = scheduler(tmp_path, backend)
        try:
            await answer(sched, "a", keep_alive="10m")
            await answer(sched, "b", keep_alive="10m")
            return [m.recipe.name.model for m in sched.ps()], [r.closed for r in backend.runners]
        finally:
            await sched.close()

    assert asyncio.run(main()) == (["b"], [True, False])


def test_a_third_party_estimate_that_never_fits_is_the_error(tmp_path: Path) -> None:
    backend = OneAtATime(script=b"ok")

    async def main() -> None:
        sched = scheduler(tmp_path, backend)
        try:
            ticket = await sched.acquire("a")  # held: it cannot be evicted
            try:
                await answer(sched, "b")
            finally:
                sched.release(ticket)
        finally:
            await sched.close()

    with pytest.raises(InsufficientMemory, match="one model at a time"):
        asyncio.run(main())
    assert backend.loads == 1


class Unchecked:
    """A backend with probe and load only, no estimate: the contract's minimum."""

    name = "plain"
    priority = 100
    description = "no estimate"

    def __init__(self) -> None:
        self.inner = FakeBackend(name="plain", memory=1000, script=b"ok")

    def probe(self) -> Probe:
        return self.inner.probe()

    def load(self, spec: LoadSpec) -> FakeRunner:
        return self.inner.load(spec)


def test_a_backend_without_an_estimate_loads_without_a_memory_check(tmp_path: Path, tiny_gguf: Path) -> None:
    # The same GGUF on FakeBackend (which estimates through corral.engines.dispatch) does not fit 1000 bytes.
    async def main(backend: object) -> str:
        sched = scheduler(tmp_path, backend, payload=tiny_gguf.read_bytes())
        try:
            return await answer(sched, "a")
        finally:
            await sched.close()

    plain = Unchecked()
    assert asyncio.run(main(plain)) == "ok"
    assert plain.inner.runners[0].spec.num_gpu is None
    with pytest.raises(InsufficientMemory, match=r"needs .* but only 1000 B is free"):
        asyncio.run(main(FakeBackend(memory=1000)))


def test_main_gpu_and_use_mmap_reach_the_load_spec_and_a_change_reloads(tmp_path: Path) -> None:
    backend = FakeBackend(script=b"ok")

    async def main() -> None:
        sched = scheduler(tmp_path, backend)
        try:
            await answer(sched, "a", options={"main_gpu": 1, "use_mmap": False}, keep_alive="10m")
            await answer(sched, "a", options={"main_gpu": 1, "use_mmap": False}, keep_alive="10m")
            await answer(sched, "a", options={"main_gpu": 1}, keep_alive="10m")
        finally:
            await sched.close()

    asyncio.run(main())
    assert [(r.spec.main_gpu, r.spec.use_mmap) for r in backend.runners] == [(1, False), (1, None)]


def test_num_keep_is_accepted_over_the_wire_of_options(tmp_path: Path) -> None:
    backend = FakeBackend(script=b"ok")

    async def main() -> str:
        sched = scheduler(tmp_path, backend)
        try:
            return await answer(sched, "a", options={"num_keep": 7})
        finally:
            await sched.close()

    assert asyncio.run(main()) == "ok"
    assert backend.loads == 1


def test_the_kv_cache_type_reaches_the_load_and_the_size_in_ps(tmp_path: Path) -> None:
    from ggufmaker import write_tiny_llama

    gguf = write_tiny_llama(tmp_path / "heads32.gguf", vocab="gpt2", n_head=2, n_head_kv=2)  # 32-value heads
    sizes, specs = {}, {}
    for kv in ("f16", "q8_0", "q4_0"):
        s = Settings(home=tmp_path, models=tmp_path / kv, isolate_runners=False, kv_cache_type=kv, num_ctx=4096)
        write_fake_model(s.models_dir, "a:latest", payload=gguf.read_bytes())
        backend = FakeBackend(script=b"ok")

        async def main(s: Settings = s, backend: FakeBackend = backend) -> int:
            sched = fake_scheduler(s, backend)
            try:
                assert await answer(sched, "a") == "ok"
                return sched.ps()[0].size
            finally:
                await sched.close()

        sizes[kv] = asyncio.run(main())
        specs[kv] = backend.runners[0].spec.kv_cache_type
    assert specs == {"f16": "f16", "q8_0": "q8_0", "q4_0": "q4_0"}
    assert sizes["f16"] > sizes["q8_0"] > sizes["q4_0"]
