"""An example third-party Corral backend: GGUF models on one CPU thread, through Corral's llama.cpp engine.

Everything a backend plugin needs is here:

* a ``Backend`` object with ``name``, ``priority``, ``description``, ``probe()`` and ``load()``, and
  the optional ``estimate()`` that lets the scheduler check memory and make room before a load;
* a ``@hookimpl`` function ``corral_register_backends`` that hands it to Corral;
* the entry point ``example = corral_backend_example`` in the group ``corral`` (pyproject.toml).

The module imports only the standard library and ``corral.hookspecs`` at import time, so that
``corral --help`` stays fast; the engines are imported inside ``estimate`` and ``load``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import replace
from importlib.util import find_spec

from corral.errors import BackendUnavailable
from corral.hookspecs import Backend, Device, Estimate, LoadSpec, Probe, Runner, hookimpl

THREADS = 1


def _memory() -> tuple[int, int]:
    """(total, available) bytes of RAM; 0 where the platform cannot say."""
    try:
        page = os.sysconf("SC_PAGE_SIZE")
        total = os.sysconf("SC_PHYS_PAGES") * page
        free = os.sysconf("SC_AVPHYS_PAGES") * page if "SC_AVPHYS_PAGES" in os.sysconf_names else total
        return total, free
    except (OSError, ValueError, AttributeError):
        return 0, 0


class ExampleBackend:
    name = "example"
    priority = 5  # below cpu (10): the best-available choice never lands here; --backend example does
    description = f"example plugin: llama.cpp on {THREADS} CPU thread"

    def probe(self) -> Probe:
        # Cheap, idempotent and never raising: find_spec looks for llama_cpp without importing it.
        if find_spec("llama_cpp") is None:
            return Probe(available=False, reason="llama-cpp-python is not installed (pip install llama-cpp-python)")
        total, free = _memory()
        device = Device(
            backend=self.name, index=0, name=f"{THREADS} CPU thread", kind="cpu",
            total_memory=total, free_memory=free, details={"threads": str(THREADS)},
        )
        return Probe(available=True, devices=(device,))

    def estimate(self, spec: LoadSpec, devices: Sequence[Device]) -> Estimate | None:
        # Optional. What the model takes (weights, KV cache, compute) against the devices' free memory,
        # raising InsufficientMemory when it does not fit: the scheduler then unloads idle models and
        # asks again. Corral's shared engines answer it for GGUF files and ONNX folders.
        from corral.engines import dispatch

        return dispatch.estimate(spec, devices)

    def load(self, spec: LoadSpec) -> Runner:
        probe = self.probe()
        if not probe.available:
            raise BackendUnavailable(f"the example backend cannot run here: {probe.reason}")
        from corral.engines import dispatch

        # dispatch picks the engine (llama.cpp for a GGUF; no GPU build given, so on the CPU). The runner
        # batches every active sequence into one decode per step(); the scheduler's owner thread is its
        # only caller, so it needs no locking of its own.
        return dispatch.load(replace(spec, num_thread=THREADS))


@hookimpl
def corral_register_backends(register: Callable[[Backend], None]) -> None:
    register(ExampleBackend())
