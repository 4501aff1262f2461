"""Scheduler and model worker against the fake backend: residency, batching, queueing, cancellation."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from corral.config import Settings
from corral.errors import InvalidModelFile, ServerBusy
from corral.runtime.scheduler import Scheduler, parse_keep_alive
from fakes import FakeBackend, fake_scheduler, write_fake_model


def make(tmp_path: Path, backend: FakeBackend, **settings: object) -> Scheduler:
    # The fake backend is registered in this process only, so its runners cannot live in a child.
    s = Settings(home=tmp_path, models=tmp_path / "models", isolate_runners=False, **settings)  # type: ignore[arg-type]
    for name in ("a:latest", "b:latest", "c:latest"):
        write_fake_model(s.models_dir, name, payload=name.encode())
    return fake_scheduler(s, backend)


async def collect(sched: Scheduler, model: str, prompt: str = "hi", **acquire: object) -> str:
    ticket = await sched.acquire(model, **acquire)  # type: ignore[arg-type]
    try:
        return "".join([e.text async for e in sched.stream(ticket, prompt)])
    finally:
        sched.release(ticket)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("5m", 300),
        ("1h30m", 5400),
        ("10s", 10),
        ("-1", -1),
        ("-1m", -60),
        (0, 0),
        (2.5, 2.5),
        ("300", 300),
        (None, 300),
    ],
)
def test_keep_alive_accepts_ollama_durations(value: object, seconds: float) -> None:
    assert parse_keep_alive(value) == seconds  # type: ignore[arg-type]


def test_keep_alive_rejects_nonsense() -> None:
    with pytest.raises(Exception, match="invalid keep_alive"):
        parse_keep_alive("soon")


def test_a_generation_streams_the_script(tmp_path: Path) -> None:
    async def main() -> str:
        sched = make(tmp_path, FakeBackend(script=b"hello"))
        try:
            return await collect(sched, "a")
        finally:
            await sched.close()

    assert asyncio.run(main()) == "hello"


def test_concurrent_requests_share_batched_steps_on_one_thread(tmp_path: Path) -> None:
    backend = FakeBackend(script=b"x" * 30, step_delay=0.002)

    async def main() -> list[str]:
        sched = make(tmp_path, backend, num_parallel=4)
        try:
            return await asyncio.gather(*[collect(sched, "a", f"prompt {i}") for i in range(4)])
        finally:
            await sched.close()

    assert asyncio.run(main()) == ["x" * 30] * 4
    runner = backend.runners[0]
    assert max(len(step) for step in runner.history) == 4  # all four sequences advanced in one step
    assert len(runner.thread_ids) == 1  # only the owner thread ever called the engine
    assert backend.loads == 1


def test_a_new_request_joins_at_the_next_step(tmp_path: Path) -> None:
    backend = FakeBackend(script=b"y" * 200, step_delay=0.002)

    async def main() -> float:
        sched = make(tmp_path, backend, num_parallel=2)
        try:
            long = asyncio.create_task(collect(sched, "a", "long"))
            await asyncio.sleep(0.1)
            ticket = await sched.acquire("a")
            t0 = time.perf_counter()
            stream = sched.stream(ticket, "short")
            await anext(stream)
            first = time.perf_counter() - t0
            await stream.aclose()
            sched.release(ticket)
            await long
            return first
        finally:
            await sched.close()

    # Waiting for the long job to finish would take ~0.3 s; joining takes a step or two.
    assert asyncio.run(main()) < 0.1


def test_keep_alive_zero_unloads_after_the_request(tmp_path: Path) -> None:
    backend = FakeBackend()

    async def main() -> tuple[int, int]:
        sched = make(tmp_path, backend)
        try:
            await collect(sched, "a", keep_alive=0)
            await asyncio.sleep(0.2)
            after_zero = len(sched.ps())
            await collect(sched, "a", keep_alive="-1")
            await asyncio.sleep(0.8)
            return after_zero, len(sched.ps())
        finally:
            await sched.close()

    assert asyncio.run(main()) == (0, 1)
    assert backend.runners[0].closed


def test_keep_alive_expires(tmp_path: Path) -> None:
    async def main() -> tuple[int, int]:
        sched = make(tmp_path, FakeBackend())
        try:
            await collect(sched, "a", keep_alive="300ms")
            before = len(sched.ps())
            await asyncio.sleep(1.2)
            return before, len(sched.ps())
        finally:
            await sched.close()

    assert asyncio.run(main()) == (1, 0)


def test_eviction_takes_the_idle_model_with_the_shortest_keep_alive(tmp_path: Path) -> None:
    async def main() -> list[str]:
        sched = make(tmp_path, FakeBackend(), max_loaded_models=2)
        try:
            await collect(sched, "a", keep_alive="10m")
            await collect(sched, "b", keep_alive="1m")
            await collect(sched, "c", keep_alive="5m")
            return sorted(m.recipe.name.model for m in sched.ps())
        finally:
            await sched.close()

    assert asyncio.run(main()) == ["a", "c"]


def test_the_queue_limit_answers_busy_at_once(tmp_path: Path) -> None:
    async def main() -> tuple[int, int]:
        sched = make(tmp_path, FakeBackend(script=b"z" * 20, step_delay=0.005), max_queue=3, num_parallel=2)
        try:
            results = await asyncio.gather(*[collect(sched, "a", f"p{i}") for i in range(8)], return_exceptions=True)
            busy = sum(isinstance(r, ServerBusy) for r in results)
            done = sum(r == "z" * 20 for r in results)
            return busy, done
        finally:
            await sched.close()

    busy, done = asyncio.run(main())
    assert busy == 5 and done == 3  # every accepted request completes


def test_closing_a_stream_cancels_it_and_frees_the_slot(tmp_path: Path) -> None:
    backend = FakeBackend(script=b"w" * 1000, step_delay=0.002)

    async def main() -> str:
        sched = make(tmp_path, backend, num_parallel=1)
        try:
            ticket = await sched.acquire("a")
            stream = sched.stream(ticket, "endless")
            await anext(stream)
            await stream.aclose()  # what a disconnecting HTTP client causes
            sched.release(ticket)
            backend.runners[0].script = b"next"
            return await asyncio.wait_for(collect(sched, "a", "again"), 2)
        finally:
            await sched.close()

    assert asyncio.run(main()) == "next"
    runner = backend.runners[0]
    # The cancelled sequence stopped long before its 1000-token script ran out.
    assert len(runner.history) < 200


def test_concurrent_first_requests_load_the_model_once(tmp_path: Path) -> None:
    backend = FakeBackend()

    async def main() -> None:
        sched = make(tmp_path, backend)
        try:
            await asyncio.gather(*[collect(sched, "a") for _ in range(5)])
        finally:
            await sched.close()

    asyncio.run(main())
    assert backend.loads == 1


def test_a_model_that_fails_to_load_reports_why_and_others_keep_working(tmp_path: Path) -> None:
    class Fussy(FakeBackend):
        def load(self, spec):  # type: ignore[no-untyped-def, override]
            if spec.model_path.read_bytes() == b"b:latest":
                raise InvalidModelFile(f"{spec.model_path}: broken vocabulary")
            return super().load(spec)

    async def main() -> str:
        sched = make(tmp_path, Fussy(script=b"ok"))
        try:
            with pytest.raises(InvalidModelFile, match="broken vocabulary"):
                await collect(sched, "b")
            assert sched.ps() == []
            return await collect(sched, "a")
        finally:
            await sched.close()

    assert asyncio.run(main()) == "ok"


def _gguf_models(tmp_path: Path, tiny_gguf: Path, names: list[str]) -> Settings:
    """Store entries whose weights are a real (tiny) GGUF, so the memory planner can size them."""
    s = Settings(home=tmp_path, models=tmp_path / "models", isolate_runners=False, num_ctx=256, num_parallel=1)
    for i, name in enumerate(names):
        # A distinct file per model (a different digest), padded so each needs noticeably more memory.
        payload = tiny_gguf.read_bytes() + bytes(i)
        write_fake_model(s.models_dir, name, payload=payload)
    return s


def _need(tiny_gguf: Path) -> int:
    from corral.engines.llamacpp.offload import plan_for_gguf
    from corral.hookspecs import Device

    plan = plan_for_gguf(tiny_gguf, 256, 1, [Device("fake", 0, "x", "cpu", 1 << 40, 1 << 40)])
    return plan.total_bytes


def test_memory_pressure_evicts_an_idle_model(tmp_path: Path, tiny_gguf: Path) -> None:
    need = _need(tiny_gguf)
    # Room for the estimate of one model plus a loaded one's footprint, not for two estimates.
    backend = FakeBackend(
        memory=int(need * 1.5) + tiny_gguf.stat().st_size, memory_factor=int(need * 0.9 / tiny_gguf.stat().st_size) + 1
    )
    s = _gguf_models(tmp_path, tiny_gguf, ["a:latest", "b:latest"])

    async def main() -> list[str]:
        sched = fake_scheduler(s, backend)
        try:
            await collect(sched, "a", keep_alive="10m")
            assert [m.recipe.name.model for m in sched.ps()] == ["a"]
            assert sched.ps()[0].size >= need > 0
            await collect(sched, "b", keep_alive="10m")
            return [m.recipe.name.model for m in sched.ps()]
        finally:
            await sched.close()

    assert asyncio.run(main()) == ["b"]


def test_a_model_that_cannot_fit_says_what_it_needs_and_what_is_free(tmp_path: Path, tiny_gguf: Path) -> None:
    from corral.errors import InsufficientMemory

    backend = FakeBackend(memory=1000)
    s = _gguf_models(tmp_path, tiny_gguf, ["a:latest"])

    async def main() -> None:
        sched = fake_scheduler(s, backend)
        try:
            await collect(sched, "a")
        finally:
            await sched.close()

    with pytest.raises(InsufficientMemory, match=r"needs .* but only .* is free"):
        asyncio.run(main())
    assert backend.loads == 0


def test_a_busy_model_is_not_evicted_for_memory(tmp_path: Path, tiny_gguf: Path) -> None:
    from corral.errors import InsufficientMemory

    need = _need(tiny_gguf)
    backend = FakeBackend(
        memory=int(need * 1.5) + tiny_gguf.stat().st_size,
        memory_factor=int(need * 0.9 / tiny_gguf.stat().st_size) + 1,
        script=b"x" * 400,
        step_delay=0.002,
    )
    s = _gguf_models(tmp_path, tiny_gguf, ["a:latest", "b:latest"])

    async def main() -> None:
        sched = fake_scheduler(s, backend)
        try:
            ticket = await sched.acquire("a")
            try:
                with pytest.raises(InsufficientMemory):
                    await collect(sched, "b")
            finally:
                sched.release(ticket)
        finally:
            await sched.close()

    asyncio.run(main())


def _onnx_model(tmp_path: Path, weights: int) -> Settings:
    """A store holding one ONNX model whose folder has ``weights`` bytes of .onnx data: 2 layers x 2 KV
    heads x 16 dims, so 128 K/V values per token, 4 bytes each."""
    import json

    from corral.models.names import ModelName
    from corral.models.onnx_layer import onnx_config_blob, pack_to_temp
    from corral.models.store import CONFIG_MEDIA_TYPE, MEDIA_ONNX, Manifest, Store

    folder = tmp_path / "genai"
    folder.mkdir()
    decoder = {"num_hidden_layers": 2, "num_key_value_heads": 2, "head_size": 16}
    model = {"context_length": 512, "vocab_size": 100, "decoder": decoder}
    (folder / "genai_config.json").write_text(json.dumps({"model": model}))
    (folder / "model.onnx").write_bytes(b"\0" * weights)
    s = Settings(home=tmp_path, models=tmp_path / "models", isolate_runners=False, num_ctx=256, num_parallel=2)
    store = Store(s.models_dir)
    tar = pack_to_temp(folder, tmp_path)
    layer = store.write_blob_file(tar, MEDIA_ONNX)
    config = store.write_blob_bytes(onnx_config_blob(folder), CONFIG_MEDIA_TYPE)
    store.write_manifest(ModelName.parse("onnx:latest"), Manifest(config=config, layers=[layer]))
    return s


NEED = 100_000 + 2 * 256 * 128 * 4 + 256 * 100 * 4  # weights + KV (2 slots x 256 tokens) + logits of a 256-token chunk


@pytest.mark.parametrize("memory, fits", [(NEED, True), (NEED - 1, False)])
def test_an_onnx_model_is_checked_whole_against_the_device(tmp_path: Path, memory: int, fits: bool) -> None:
    from corral.errors import InsufficientMemory

    backend = FakeBackend(memory=memory, script=b"ok")
    s = _onnx_model(tmp_path, weights=100_000)

    async def main() -> str:
        sched = fake_scheduler(s, backend)
        try:
            return await collect(sched, "onnx")
        finally:
            await sched.close()

    if fits:
        assert asyncio.run(main()) == "ok"
        assert (backend.runners[0].spec.model_path / "genai_config.json").is_file()  # the unpacked folder
        return
    message = (
        r"needs 453.7 KiB on Fake Device \(weights 97.7 KiB, KV cache 256.0 KiB for 2 x 256 tokens, "
        r"compute 100.0 KiB\) but only 453.7 KiB"
    )
    with pytest.raises(InsufficientMemory, match=message):
        asyncio.run(main())
    assert backend.loads == 0
