"""Each GPU backend runs the bundled model: the tests the per-backend CI jobs select with -m cuda/rocm/metal.

Where the hardware is absent a test skips with the backend's own probe reason (so ``-rs`` says
exactly what is missing); where it is present, the backend must load SmolLM2-135M, place it on the
device and generate: first straight through ``Backend.load`` and the Runner, then through the
scheduler as ``corral serve`` runs it (the runner in its own process).

A GPU host whose llama-cpp-python was built without GPU offload skips too, naming the build to
install; the CI jobs check the build before running these tests, so a CPU-only wheel there fails
the job instead of skipping.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from bundled import smollm2_path
from corral.config import Settings
from corral.hookspecs import LoadSpec, Probe, Sampling, SequenceStep
from corral.plugins import BackendEntry, Plugins
from corral.runtime.scheduler import Scheduler

GPU_BACKENDS = [
    pytest.param("cuda", marks=[pytest.mark.cuda, pytest.mark.slow], id="cuda"),
    pytest.param("rocm", marks=[pytest.mark.rocm, pytest.mark.slow], id="rocm"),
    pytest.param("metal", marks=[pytest.mark.metal, pytest.mark.slow], id="metal"),
]
GREEDY = Sampling(temperature=0, repeat_penalty=1.0)
PROMPT = "The capital of France is"
MODEL = "smollm2:135m"


def usable(name: str) -> tuple[BackendEntry, Probe, Path]:
    """The backend's entry, probe and the bundled model, or skip saying which of them is missing."""
    entry = Plugins().get(name)
    probe = entry.probe()
    if not probe.available:
        pytest.skip(probe.reason)
    path = smollm2_path()
    import llama_cpp

    if not llama_cpp.llama_supports_gpu_offload():
        install = getattr(sys.modules[type(entry.backend).__module__], "INSTALL_HINT", "install a GPU build")
        pytest.skip(f"{name} hardware is present but llama-cpp-python was built without GPU offload: {install}")
    return entry, probe, path


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_the_backend_loads_the_model_onto_its_device_and_generates(backend: str) -> None:
    entry, probe, path = usable(backend)
    runner = entry.backend.load(LoadSpec(model_path=path, num_ctx=512, num_parallel=2, devices=probe.devices))
    try:
        assert runner.info.size_on_device > 0, "the model was loaded but nothing was placed on the GPU"
        assert runner.info.n_ctx >= 512 and runner.info.num_parallel == 2
        prompt = runner.tokenize(PROMPT, add_bos=runner.info.add_bos)
        for seq in (0, 1):
            runner.set_sampling(seq, GREEDY)
        # both sequences in one batched step: the path every loaded model takes
        first = runner.step([SequenceStep(0, prompt), SequenceStep(1, prompt)])
        assert first[0] == first[1]
        tokens = [first[0]]
        while len(tokens) < 8 and not runner.is_end_of_generation(tokens[-1]):
            tokens.append(runner.step([SequenceStep(0, [tokens[-1]])])[0])
        text = b"".join(runner.token_bytes(t) for t in tokens).decode("utf-8", "replace")
        assert "Paris" in text, text
    finally:
        runner.close()


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_a_generation_through_the_scheduler_runs_on_the_backend(backend: str) -> None:
    usable(backend)

    async def main() -> tuple[str, str, int]:
        sched = Scheduler(Settings(num_parallel=2, num_ctx=512))  # runners isolated, as `corral serve` has them
        try:
            ticket = await sched.acquire(MODEL, options={"temperature": 0}, backend=backend)
            try:
                text = "".join([e.text async for e in sched.stream(ticket, PROMPT, num_predict=8)])
                return ticket.loaded.backend, text, ticket.loaded.size_on_device
            finally:
                sched.release(ticket)
        finally:
            await sched.close()

    used, text, on_device = asyncio.run(main())
    assert used == backend
    assert on_device > 0
    assert "Paris" in text, text
