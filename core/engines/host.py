"""Facts about the host: its memory, its CPU's name and physical cores (read from /proc, no library)."""

from __future__ import annotations

import os
import platform

from corral.hookspecs import Device


def physical_cores() -> int:
    """Physical cores, not hyperthreads: llama.cpp slows down when threads share a core."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as fh:
            pairs, phys = set(), "0"
            for line in fh:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "physical id":
                    phys = value.strip()
                elif key == "core id":
                    pairs.add((phys, value.strip()))
        if pairs:
            return len(pairs)
    except OSError:
        pass
    return os.cpu_count() or 1


def host_memory() -> tuple[int, int]:
    """(total, available) bytes from /proc/meminfo; sysconf where that is absent."""
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            info = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in fh if line.split()[1:]}
        return info["MemTotal"], info.get("MemAvailable", info["MemFree"])
    except (OSError, KeyError, ValueError):
        pages, size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        return pages * size, pages * size


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


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
