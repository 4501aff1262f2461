"""The CPU backend: GGUF models through llama.cpp (llama-cpp-python) on the host's cores."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from corral.engines import dispatch
from corral.hookspecs import Backend, Device, Estimate, LoadSpec, Probe, Runner, hookimpl


class CpuBackend:
    name = "cpu"
    priority = 10
    description = "llama.cpp on the CPU"

    def probe(self) -> Probe:
        from importlib.util import find_spec

        from corral.engines.host import host_device

        if find_spec("llama_cpp") is None:
            return Probe(available=False, reason="llama-cpp-python is not installed (pip install llama-cpp-python)")
        return Probe(available=True, devices=(host_device(self.name),))

    def estimate(self, spec: LoadSpec, devices: Sequence[Device]) -> Estimate | None:
        return dispatch.estimate(spec, devices)

    def explain(self, spec: LoadSpec, devices: Sequence[Device]) -> str:
        return dispatch.explain(spec, devices)

    def prepare(self) -> None:
        dispatch.prepare()

    def load(self, spec: LoadSpec) -> Runner:
        return dispatch.load(spec)


@hookimpl
def corral_register_backends(register: Callable[[Backend], None]) -> None:
    register(CpuBackend())
