"""Byte and parameter counts as people read them: 14.2 GiB, 1.7B."""

from __future__ import annotations

MiB = 1 << 20
GiB = 1 << 30


def human_bytes(n: int | float) -> str:
    """Binary units, one decimal: 14.2 GiB, 360.0 MiB."""
    n = float(n)
    for unit, scale in (("GiB", GiB), ("MiB", MiB), ("KiB", 1024)):
        if abs(n) >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{int(n)} B"


def param_size(count: int) -> str:
    """A parameter count the way model names and Ollama's details write it: 135M, 1.7B."""
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if count >= scale:
            return f"{count / scale:.1f}".rstrip("0").rstrip(".") + unit
    return str(count)
