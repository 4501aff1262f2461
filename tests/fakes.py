"""A fake backend for tests: registered in a fixture, never installed. Its runner 'generates' a script."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from corral.hookspecs import Device, Estimate, LoadSpec, ModelInfo, Probe, Sampling, SequenceStep, hookimpl
from corral.plugins import Plugins

if TYPE_CHECKING:
    from corral.config import Settings
    from corral.runtime.scheduler import Scheduler

EOS = 256


class FakeRunner:
    """Byte-level tokens; after any prompt it emits ``script`` one byte per step, then EOS."""

    def __init__(self, spec: LoadSpec, script: bytes, step_delay: float) -> None:
        self.spec = spec
        self.script = script
        self.step_delay = step_delay
        self.history: list[list[tuple[int, int]]] = []  # (seq, tokens fed) per step
        self.thread_ids: set[int] = set()
        self.closed = False
        self._emitted: dict[int, int] = {}
        self._cached: dict[int, int] = {}
        self.info = ModelInfo(
            architecture="fake", n_ctx_train=4096, n_ctx=spec.num_ctx, n_vocab=257, n_embd=4,
            num_parallel=spec.num_parallel, bos_token=None, add_bos=False, bos_text="", eos_text="",
            chat_template=None, size_bytes=1000, size_on_device=0,
        )

    def tokenize(self, text: str, *, special: bool = True, add_bos: bool = False) -> list[int]:
        return list(text.encode())

    def token_bytes(self, token: int) -> bytes:
        return bytes([token]) if token < 256 else b""

    def is_end_of_generation(self, token: int) -> bool:
        return token == EOS

    def set_sampling(self, seq: int, sampling: Sampling) -> None:
        self._emitted[seq] = 0

    def step(self, batch: Sequence[SequenceStep]) -> dict[int, int]:
        self.thread_ids.add(threading.get_ident())
        self.history.append([(s.seq, len(s.tokens)) for s in batch])
        if self.step_delay:
            time.sleep(self.step_delay)
        out = {}
        for s in batch:
            self._cached[s.seq] = self._cached.get(s.seq, 0) + len(s.tokens)
            if s.sample:
                i = self._emitted.get(s.seq, 0)
                out[s.seq] = self.script[i] if i < len(self.script) else EOS
                self._emitted[s.seq] = i + 1
        return out

    def cached(self, seq: int) -> int:
        return self._cached.get(seq, 0)

    def truncate(self, seq: int, keep: int) -> int:
        self._cached[seq] = min(keep, self._cached.get(seq, 0))
        return self._cached[seq]

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        return [[float(len(t)), 1.0, 0.0, 0.0] for t in texts]

    def close(self) -> None:
        self.closed = True


@dataclass
class FakeBackend:
    name: str = "fake"
    priority: int = 100
    description: str = "a scripted backend for tests"
    available: bool = True
    script: bytes = b"hello from fake"
    step_delay: float = 0.0
    runners: list[FakeRunner] = field(default_factory=list)
    loads: int = 0
    memory: int = 8 << 30  # the device's RAM; loaded runners use their model file's size × memory_factor
    memory_factor: int = 1
    estimates: list[tuple[LoadSpec, tuple[Device, ...]]] = field(default_factory=list)  # estimate()'s calls

    def probe(self) -> Probe:
        if not self.available:
            return Probe(available=False, reason="the fake device is switched off")
        used = sum(r.spec.model_path.stat().st_size * self.memory_factor for r in self.runners if not r.closed)
        return Probe(
            available=True, devices=(Device(self.name, 0, "Fake Device", "cpu", self.memory, self.memory - used),)
        )

    def estimate(self, spec: LoadSpec, devices: Sequence[Device]) -> Estimate | None:
        """As a third-party backend would: the shared engines' estimate for GGUF and ONNX files."""
        from corral.engines import dispatch

        self.estimates.append((spec, tuple(devices)))
        return dispatch.estimate(spec, devices)

    def load(self, spec: LoadSpec) -> FakeRunner:
        self.loads += 1
        runner = FakeRunner(spec, self.script, self.step_delay)
        self.runners.append(runner)
        return runner


class FakePlugin:
    """A pluggy plugin object carrying one FakeBackend."""

    def __init__(self, backend: FakeBackend) -> None:
        self.backend = backend

    @hookimpl
    def corral_register_backends(self, register):  # type: ignore[no-untyped-def]
        register(self.backend)


def fake_plugins(backend: FakeBackend) -> Plugins:
    """Plugins that know only ``backend``: no entry points, so installed backends stay out of the test."""
    # Plugins takes modules; a plugin object with @hookimpl methods registers the same way.
    return Plugins(load_entry_points=False, modules=[FakePlugin(backend)])  # type: ignore[list-item]


def fake_scheduler(settings: Settings, backend: FakeBackend) -> Scheduler:
    """A real Scheduler whose only backend is ``backend``. The fake lives in this process only, so
    ``settings`` should have isolate_runners=False."""
    from corral.runtime.scheduler import Scheduler

    return Scheduler(settings, fake_plugins(backend))


def write_fake_model(
    models_dir: Path,
    name: str = "fake:latest",
    payload: bytes = b"fake weights, not a GGUF",
    template: str | None = None,
) -> None:
    """A store entry for the fake backend: it never reads the weights file. ``template``: a Go TEMPLATE layer."""
    from corral.models.names import ModelName
    from corral.models.store import CONFIG_MEDIA_TYPE, MEDIA_MODEL, MEDIA_TEMPLATE, Manifest, Store

    store = Store(models_dir)
    layers = [store.write_blob_bytes(payload, MEDIA_MODEL)]
    if template is not None:
        layers.append(store.write_blob_bytes(template.encode(), MEDIA_TEMPLATE))
    config = store.write_blob_bytes(b'{"model_format":"gguf","model_family":"fake"}', CONFIG_MEDIA_TYPE)
    store.write_manifest(ModelName.parse(name), Manifest(config=config, layers=layers))
