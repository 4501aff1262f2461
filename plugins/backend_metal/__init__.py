"""Apple Silicon GPUs for Corral: llama-architecture GGUF models on the MLX engine (``mlx_engine``),
the rest through llama.cpp's Metal build; Metal is checked through mlx."""

from __future__ import annotations

import platform
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path

from corral.engines import dispatch
from corral.errors import BackendUnavailable
from corral.hookspecs import Backend, Device, Estimate, LoadSpec, Probe, Runner, hookimpl

INSTALL_HINT = (
    'CMAKE_ARGS="-DGGML_METAL=on" pip install --force-reinstall --no-cache-dir llama-cpp-python'
    " (or pip install 'corral[metal]')"
)
BUILD = dispatch.GpuBuild("metal", "Metal", INSTALL_HINT)


class MetalBackend:
    name = "metal"
    priority = 20
    description = "Apple Silicon GPUs through Metal (MLX, llama.cpp Metal build)"

    def __init__(self, system: str | None = None, machine: str | None = None) -> None:
        # Injectable so tests can play a Mac, or an Intel Mac, on any host.
        self.system = system if system is not None else platform.system()
        self.machine = machine if machine is not None else platform.machine()

    def probe(self) -> Probe:
        if self.system != "Darwin":
            return Probe(available=False, reason=f"not macOS (this is {self.system or 'an unknown system'})")
        if self.machine != "arm64":
            # Intel Macs have Metal, but neither MLX nor a useful llama.cpp Metal path.
            return Probe(available=False, reason=f"not Apple Silicon ({self.machine or 'unknown machine'})")
        try:
            import mlx.core as mx
        except ImportError:
            return Probe(available=False, reason="mlx is not installed (pip install 'corral[metal]')")
        try:
            available = bool(mx.metal.is_available())
        except Exception as exc:  # a broken mlx install must not take the probe down
            return Probe(available=False, reason=f"mlx could not check Metal: {type(exc).__name__}: {exc}")
        if not available:
            return Probe(available=False, reason="Metal is not available to mlx")
        total = _sysctl_int("hw.memsize") or 0
        gpu = Device(
            backend="metal",
            index=0,
            name=_sysctl("machdep.cpu.brand_string") or "Apple Silicon GPU",
            kind="gpu",
            total_memory=total,
            # Unified memory: the GPU shares RAM with the CPU and macOS pages on demand, so there
            # is no separate "free VRAM" to read; the whole of it counts as free.
            free_memory=total,
            details={"unified_memory": "true"},
        )
        return Probe(available=True, devices=(gpu,))

    def estimate(self, spec: LoadSpec, devices: Sequence[Device]) -> Estimate | None:
        from corral.engines.host import host_device

        # Unified memory: the plan is llama.cpp's, which also bounds what MLX needs for the same file.
        return dispatch.estimate(spec, [*devices, host_device()])

    def explain(self, spec: LoadSpec, devices: Sequence[Device]) -> str:
        from corral.engines.host import host_device

        return dispatch.explain(spec, [*devices, host_device()])

    def load(self, spec: LoadSpec) -> Runner:
        probe = self.probe()
        if not probe.available:
            raise BackendUnavailable(f"the metal backend cannot run here: {probe.reason}")
        if dispatch.engine_for(spec.model_path) != "onnx" and _mlx_can_run(spec.model_path):
            from corral_backend_metal.mlx_engine import MLXRunner

            return MLXRunner(spec, device="gpu")
        # onnxruntime-genai's Apple build runs an ONNX folder on the CPU.
        return dispatch.load(spec, BUILD)


def _mlx_can_run(path: Path) -> bool:
    """MLX is the engine of choice on Apple Silicon for the architectures it implements (llama);
    everything else goes to llama.cpp's Metal build. CORRAL_METAL_ENGINE=llama.cpp forces the latter."""
    from corral.config import Settings
    from corral.errors import InvalidModelFile
    from corral.formats.gguf import validate_gguf

    if Settings().metal_engine != "mlx":
        return False
    try:
        return validate_gguf(path).architecture == "llama"
    except InvalidModelFile:
        return False


def _sysctl(key: str) -> str | None:
    try:
        done = subprocess.run(["sysctl", "-n", key], capture_output=True, text=True, timeout=5, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None


def _sysctl_int(key: str) -> int | None:
    text = _sysctl(key)
    return int(text) if text and text.isdigit() else None


@hookimpl
def corral_register_backends(register: Callable[[Backend], None]) -> None:
    register(MetalBackend())
