"""NVIDIA GPUs for Corral: GGUF models through llama.cpp's CUDA build, ONNX models through
onnxruntime-genai's CUDA build; GPUs are found through NVML.

The probe asks NVML (the driver's own management library, through nvidia-ml-py) rather
than the CUDA runtime, because NVML needs no CUDA toolkit and does not create a CUDA
context, so probing stays cheap and leaves no memory allocated on the GPU.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

from corral.engines import dispatch
from corral.errors import BackendUnavailable
from corral.hookspecs import Backend, Device, Estimate, LoadSpec, Probe, Runner, hookimpl

VISIBLE_ENV = "CUDA_VISIBLE_DEVICES"
INSTALL_HINT = (
    'CMAKE_ARGS="-DGGML_CUDA=on" pip install --force-reinstall --no-cache-dir llama-cpp-python'
    " (or pip install 'corral[cuda]')"
)
BUILD = dispatch.GpuBuild("cuda", "CUDA", INSTALL_HINT)


class CudaBackend:
    name = "cuda"
    priority = 40
    description = "NVIDIA GPUs through CUDA (llama.cpp and onnxruntime-genai CUDA builds)"

    def probe(self) -> Probe:
        try:
            import pynvml
        except ImportError:
            return Probe(available=False, reason="nvidia-ml-py is not installed (pip install nvidia-ml-py)")
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError_LibraryNotFound as exc:
            detail = _loader_error() or str(exc)
            return Probe(
                available=False,
                reason=f"NVIDIA driver not found (libnvidia-ml.so could not be loaded: {detail})",
            )
        except pynvml.NVMLError_DriverNotLoaded:
            return Probe(
                available=False,
                reason="NVIDIA driver not loaded (libnvidia-ml.so is present but the nvidia kernel module is not)",
            )
        except pynvml.NVMLError as exc:
            return Probe(available=False, reason=f"NVML could not start: {exc}")
        try:
            return _probe_gpus(pynvml)
        except pynvml.NVMLError as exc:
            return Probe(available=False, reason=f"NVML failed while listing GPUs: {exc}")
        finally:
            with contextlib.suppress(pynvml.NVMLError):
                pynvml.nvmlShutdown()

    def estimate(self, spec: LoadSpec, devices: Sequence[Device]) -> Estimate | None:
        from corral.engines.host import host_device

        return dispatch.estimate(spec, [*devices, host_device()], onnx_on_gpu=True)

    def explain(self, spec: LoadSpec, devices: Sequence[Device]) -> str:
        from corral.engines.host import host_device

        return dispatch.explain(spec, [*devices, host_device()], onnx_on_gpu=True)

    def prepare(self) -> None:
        dispatch.prepare()

    def load(self, spec: LoadSpec) -> Runner:
        probe = self.probe()
        if not probe.available:
            raise BackendUnavailable(f"the cuda backend cannot run here: {probe.reason}")
        return dispatch.load(spec, BUILD, onnx_on_gpu=True)


def _probe_gpus(nvml: ModuleType) -> Probe:
    driver = _text(nvml.nvmlSystemGetDriverVersion())
    count = nvml.nvmlDeviceGetCount()
    if count == 0:
        return Probe(available=False, reason="no NVIDIA GPU found (the driver is loaded but lists no devices)")
    handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
    uuids = [_text(nvml.nvmlDeviceGetUUID(h)) for h in handles]
    raw = os.environ.get(VISIBLE_ENV)
    visible = list(range(count)) if raw is None else visible_indices(raw, uuids)
    if not visible:
        return Probe(available=False, reason=f"{VISIBLE_ENV} hides every GPU (it is set to {raw!r})")

    devices: list[Device] = []
    failures: list[str] = []
    for physical in visible:
        handle = handles[physical]
        try:
            major, minor = nvml.nvmlDeviceGetCudaComputeCapability(handle)
            memory = nvml.nvmlDeviceGetMemoryInfo(handle)
            name = _text(nvml.nvmlDeviceGetName(handle))
        except nvml.NVMLError as exc:  # one lost or busy GPU must not hide the others
            failures.append(f"GPU {physical}: {exc}")
            continue
        devices.append(
            Device(
                backend="cuda",
                # The CUDA ordinal, which is what llama.cpp's main_gpu/tensor_split mean once
                # CUDA_VISIBLE_DEVICES has renumbered the GPUs; NVML's own index is kept below.
                index=len(devices),
                name=name,
                kind="gpu",
                total_memory=int(memory.total),
                free_memory=int(memory.free),
                details={
                    "compute_capability": f"{major}.{minor}",
                    "driver": driver,
                    "uuid": uuids[physical],
                    "nvml_index": str(physical),
                },
            )
        )
    if not devices:
        return Probe(available=False, reason="no usable NVIDIA GPU (" + "; ".join(failures) + ")")
    return Probe(available=True, devices=tuple(devices))


def visible_indices(value: str, uuids: list[str]) -> list[int]:
    """NVML indices that ``CUDA_VISIBLE_DEVICES=value`` leaves visible, in CUDA's order.

    Mirrors the CUDA runtime: entries are indices or unique ``GPU-<uuid>`` prefixes, and
    parsing stops at the first invalid entry ("-1" or "" therefore hide every GPU).
    Indices follow NVML's PCI-bus order, which is CUDA's order under
    CUDA_DEVICE_ORDER=PCI_BUS_ID and on machines whose GPUs are all one model.
    """
    chosen: list[int] = []
    for entry in (part.strip() for part in value.split(",")):
        index = _resolve(entry, uuids)
        if index is None or index in chosen:
            break
        chosen.append(index)
    return chosen


def _resolve(entry: str, uuids: list[str]) -> int | None:
    if entry.isdigit():
        index = int(entry)
        return index if index < len(uuids) else None
    if entry.upper().startswith("GPU-"):
        matches = [i for i, uuid in enumerate(uuids) if uuid.lower().startswith(entry.lower())]
        return matches[0] if len(matches) == 1 else None
    return None  # MIG-… instances and anything else: CUDA would stop here too


def _text(value: Any) -> str:
    # nvidia-ml-py returned bytes before 11.515 and str since; accept both.
    return value.decode() if isinstance(value, bytes) else str(value)


def _loader_error() -> str | None:
    """The dynamic loader's own words for why libnvidia-ml cannot load (NVML hides them)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        ctypes.CDLL("libnvidia-ml.so.1")
    except OSError as exc:
        return str(exc)
    return None


@hookimpl
def corral_register_backends(register: Callable[[Backend], None]) -> None:
    register(CudaBackend())
