"""The CPU backend's probe reads memory and cores through psutil: the same code on Linux, macOS and Windows."""

from __future__ import annotations

import builtins
import platform
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from corral_backend_cpu import CpuBackend

GIB = 1024**3


def fake_psutil(total: int, available: int, physical: int | None, logical: int) -> SimpleNamespace:
    def cpu_count(logical_: bool = True, **kwargs: Any) -> int | None:
        wants_logical = kwargs.get("logical", logical_)
        return logical if wants_logical else physical

    return SimpleNamespace(
        virtual_memory=lambda: SimpleNamespace(total=total, available=available), cpu_count=cpu_count
    )


@pytest.mark.parametrize(
    ("system", "processor"),
    [("win32", "Intel64 Family 6 Model 154 Stepping 3, GenuineIntel"), ("darwin", "arm")],
)
def test_probe_without_proc(monkeypatch: pytest.MonkeyPatch, system: str, processor: str) -> None:
    """A system with no /proc: every number comes from psutil, the name from platform."""
    real_open = builtins.open

    def no_proc(file: Any, *args: Any, **kwargs: Any) -> Any:
        if str(file).startswith("/proc"):
            raise AssertionError(f"read {file} on {system}")
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", no_proc)
    monkeypatch.setattr(sys, "platform", system)
    monkeypatch.setitem(sys.modules, "psutil", fake_psutil(32 * GIB, 21 * GIB, physical=10, logical=16))
    monkeypatch.setattr(platform, "processor", lambda: processor)

    probe = CpuBackend().probe()
    assert probe.available
    (device,) = probe.devices
    assert (device.total_memory, device.free_memory) == (32 * GIB, 21 * GIB)
    assert device.details["physical_cores"] == "10"
    assert device.name == processor


def test_physical_cores_fall_back_to_logical_when_psutil_cannot_tell(monkeypatch: pytest.MonkeyPatch) -> None:
    from corral.engines.host import physical_cores

    monkeypatch.setitem(sys.modules, "psutil", fake_psutil(GIB, GIB, physical=None, logical=6))
    monkeypatch.setattr("os.cpu_count", lambda: 6)
    assert physical_cores() == 6


@pytest.mark.skipif(not Path("/proc/meminfo").is_file(), reason="cross-checks psutil against Linux's /proc")
def test_psutil_agrees_with_proc_here() -> None:
    from corral.engines.host import host_memory, physical_cores

    meminfo = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
    total, _available = host_memory()
    assert total == int(meminfo["MemTotal"].split()[0]) * 1024
    pairs, phys = set(), "0"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "physical id":
            phys = value.strip()
        elif key.strip() == "core id":
            pairs.add((phys, value.strip()))
    if pairs:  # some virtual machines list no core ids
        assert physical_cores() == len(pairs)
