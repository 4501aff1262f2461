"""Facts about the host: its memory, its CPU's name and physical cores, on Linux, macOS and Windows (psutil)."""

from __future__ import annotations

import os
import platform
import sys

from corral.hookspecs import Device


def physical_cores() -> int:
    """Physical cores, not hyperthreads: llama.cpp slows down when threads share a core."""
    import psutil

    return psutil.cpu_count(logical=False) or os.cpu_count() or 1


def host_memory() -> tuple[int, int]:
    """(total, available) bytes: what the operating system could give a model without swapping."""
    import psutil

    memory = psutil.virtual_memory()
    return int(memory.total), int(memory.available)


def cpu_name() -> str:
    """The CPU's marketing name where the system says it (Linux's /proc), else what platform knows."""
    if sys.platform.startswith("linux"):
        try:
            with open("/proc/cpuinfo", encoding="ascii", errors="replace") as fh:
                for line in fh:
                    if line.startswith("model name"):
                        return line.split(":", 1)[1].strip()
        except OSError:
            pass
    return platform.processor() or platform.machine() or "CPU"


def host_device(backend: str = "cpu") -> Device:
    """The host's memory as a device: where the layers a GPU cannot hold, and the input embedding, go."""
    total, free = host_memory()
    return Device(
        backend=backend,
        index=0,
        name=cpu_name(),
        kind="cpu",
        total_memory=total,
        free_memory=free,
        details={"physical_cores": str(physical_cores()), "logical_cpus": str(os.cpu_count() or 0)},
    )
