"""The CPU backend: GGUF models through llama.cpp (llama-cpp-python) on the host's cores."""

from __future__ import annotations

import os
import platform

from corral.hookspecs import Device, LoadSpec, Probe, Runner, hookimpl


def _memory() -> tuple[int, int]:
    """(total, available) bytes from /proc/meminfo; sysconf where that is absent."""
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            info = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in fh if line.split()[1:]}
        return info["MemTotal"], info.get("MemAvailable", info["MemFree"])
    except (OSError, KeyError, ValueError):
        pages, size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        return pages * size, pages * size


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


class CpuBackend:
    name = "cpu"
    priority = 10
    description = "llama.cpp on the CPU"

    def probe(self) -> Probe:
        from importlib.util import find_spec

        from corral.engines.llamacpp.runner import physical_cores

        if find_spec("llama_cpp") is None:
            return Probe(available=False, reason="llama-cpp-python is not installed (pip install llama-cpp-python)")
        total, free = _memory()
        device = Device(
            backend=self.name,
            index=0,
            name=_cpu_name(),
            kind="cpu",
            total_memory=total,
            free_memory=free,
            details={"physical_cores": str(physical_cores()), "logical_cpus": str(os.cpu_count() or 0)},
        )
        return Probe(available=True, devices=(device,))

    def load(self, spec: LoadSpec) -> Runner:
        from corral.formats.onnx import is_genai_folder

        if is_genai_folder(spec.model_path):  # an ONNX model in onnxruntime-genai's layout
            from corral.engines.onnx.runner import OnnxRunner

            return OnnxRunner(spec)
        from corral.engines.llamacpp.runner import LlamaCppRunner

        return LlamaCppRunner(spec, n_gpu_layers=0)


@hookimpl
def corral_register_backends(register):  # type: ignore[no-untyped-def]
    register(CpuBackend())
