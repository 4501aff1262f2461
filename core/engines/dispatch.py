"""Which engine runs a model file, what it will take in memory, and how it is loaded.

A GGUF file runs on llama.cpp, an onnxruntime-genai folder on ONNX. Backends implement their
``estimate``, ``explain`` and ``load`` with these few calls; the scheduler and ``corral show --fit``
never import this module, they ask the backend (``Backend.estimate``, ``Backend.explain``), so a
third-party backend is treated exactly like the shipped ones.
The GPU backends (cuda, rocm, metal) share ``load``'s llama.cpp path and differ only in ``GpuBuild``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from corral.errors import BackendUnavailable, BadRequest, InsufficientMemory
from corral.formats.onnx import is_genai_folder
from corral.hookspecs import Device, Estimate, LoadSpec, Runner

if TYPE_CHECKING:  # the planner is imported only where a GGUF is planned
    from corral.engines.llamacpp.offload import Plan

Engine = Literal["llama.cpp", "onnx"]


@dataclass(frozen=True)
class GpuBuild:
    """A GPU backend's llama.cpp build: what to tell a user whose llama-cpp-python lacks it."""

    backend: str  # the backend's name, e.g. "cuda"
    label: str  # how people call the build: "CUDA", "ROCm", "Metal"
    install_hint: str  # the pip command that installs it


def is_gguf(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            return fh.read(4) == b"GGUF"
    except OSError:
        return False


def engine_for(path: Path) -> Engine | None:
    """The engine that runs ``path``; None when it is neither a GGUF file nor an ONNX model folder."""
    if is_genai_folder(path):
        return "onnx"
    if is_gguf(path):
        return "llama.cpp"
    return None


def estimate(spec: LoadSpec, devices: Sequence[Device], *, onnx_on_gpu: bool = False) -> Estimate | None:
    """What ``spec`` takes on ``devices``; raises InsufficientMemory when it cannot fit.

    A GGUF is planned layer by layer over the GPUs and the host (``devices`` should hold the host's
    memory as a ``cpu`` device), and the plan's layer count and split go into the returned spec. An
    ONNX folder is checked whole against one device (a GPU with ``onnx_on_gpu``, else the CPU) and
    gets no figures: its runner reports its own once loaded. Anything else: None, unchecked.
    """
    engine = engine_for(spec.model_path)
    if engine == "onnx":
        from corral.engines.onnx.fit import check_onnx_fit

        check_onnx_fit(
            spec.model_path, spec.num_ctx, spec.num_parallel, devices, on_gpu=onnx_on_gpu, num_batch=spec.num_batch
        )
        return None
    if engine is None:
        return None
    spec, plan = _gguf_plan(spec, devices)
    return Estimate(
        spec=spec, size_bytes=plan.total_bytes, size_on_device=plan.gpu_bytes, processor=plan.processor_label
    )


def explain(spec: LoadSpec, devices: Sequence[Device], *, onnx_on_gpu: bool = False) -> str:
    """How ``estimate`` sees ``spec`` on ``devices``, for ``corral show --fit``: llama.cpp's offload plan
    device by device, or an ONNX folder's needs against its one device. A model that cannot fit is
    explained too (why, in a ``Does not fit:`` line), not raised."""
    engine = engine_for(spec.model_path)
    if engine == "onnx":
        from corral.engines.onnx.fit import explain_onnx_fit

        return explain_onnx_fit(
            spec.model_path, spec.num_ctx, spec.num_parallel, devices, on_gpu=onnx_on_gpu, num_batch=spec.num_batch
        )
    if engine is None:
        return f"No estimate: {spec.model_path} is neither a GGUF file nor an ONNX model folder"
    try:
        _, plan = _gguf_plan(spec, devices)
    except InsufficientMemory as exc:
        return f"Does not fit: {exc}"
    return plan.explain()


def _gguf_plan(spec: LoadSpec, devices: Sequence[Device]) -> tuple[LoadSpec, Plan]:
    """llama.cpp's offload plan for a GGUF, and ``spec`` with the plan's layer count and split in it."""
    from corral.engines.llamacpp.offload import plan_for_gguf

    gpus = [d for d in devices if d.kind == "gpu"]
    if spec.main_gpu is not None and not gpus:
        raise BadRequest(f"main_gpu={spec.main_gpu} needs a GPU, and this backend has none")
    if spec.main_gpu is not None:
        # main_gpu runs the model on that one GPU (llama.cpp's split mode "none"): plan for it alone.
        chosen = [d for d in gpus if d.index == spec.main_gpu]
        if not chosen:
            indices = ", ".join(str(d.index) for d in gpus)
            raise BadRequest(f"main_gpu={spec.main_gpu} names no GPU here (GPUs: {indices})")
        devices = [*chosen, *(d for d in devices if d.kind != "gpu")]
    plan = plan_for_gguf(
        spec.model_path, spec.num_ctx, spec.num_parallel, devices, num_gpu=spec.num_gpu,
        flash_attention=spec.flash_attention, kv_cache_type=spec.kv_cache_type,
    )  # fmt: skip
    if plan.gpus:
        if spec.num_gpu is None:
            spec = replace(spec, num_gpu=plan.n_gpu_layers)
        if not spec.tensor_split and len(plan.gpus) > 1:  # else llama.cpp splits by free memory instead
            spec = replace(spec, tensor_split=tuple(plan.tensor_split))
    return spec, plan


def prepare() -> None:
    """Import llama.cpp and start its backend ahead of a load, where it is installed: a spare runner
    process does this while it waits for a model (GGUF is the common case), so the load that follows
    pays only for reading the file."""
    from importlib.util import find_spec

    if find_spec("llama_cpp") is None:
        return
    import llama_cpp

    from corral.engines.llamacpp.backend import init_backend
    from corral.engines.llamacpp.runner import LlamaCppRunner  # noqa: F401  (its module imports numpy)

    init_backend(llama_cpp)


def load(spec: LoadSpec, gpu: GpuBuild | None = None, *, onnx_on_gpu: bool = False) -> Runner:
    """Load ``spec`` on its engine: llama.cpp on the CPU (``gpu`` None) or offloading ``spec.num_gpu``
    layers (None: all) to a GPU build; an ONNX folder on the CPU, or on CUDA with ``onnx_on_gpu``."""
    if engine_for(spec.model_path) == "onnx":
        from corral.engines.onnx.runner import OnnxRunner

        if not onnx_on_gpu or gpu is None:
            return OnnxRunner(spec)
        from corral.engines.onnx.runner import cuda_build_problem

        # Asked only once the backend found a GPU: onnxruntime-gpu lists CUDA on machines without one.
        if (problem := cuda_build_problem()) is not None:
            raise BackendUnavailable(f"cannot run this ONNX model on the GPU: {problem}")
        ids = [d.index for d in spec.devices if d.backend == gpu.backend]
        return OnnxRunner(spec, provider="cuda", device_id=ids[0] if ids else 0)
    if gpu is None:
        from corral.engines.llamacpp.runner import LlamaCppRunner

        return LlamaCppRunner(spec, n_gpu_layers=0)
    try:
        import llama_cpp
    except ImportError:
        raise BackendUnavailable(
            f"llama-cpp-python is not installed; install a {gpu.label} build: {gpu.install_hint}"
        ) from None
    if not llama_cpp.llama_supports_gpu_offload():
        raise BackendUnavailable(
            "the installed llama-cpp-python was built without GPU offload; "
            f"reinstall a {gpu.label} build: {gpu.install_hint}"
        )
    from corral.engines.llamacpp.runner import LlamaCppRunner

    # The estimate put num_gpu layers here (None: let llama.cpp offload all of them).
    return LlamaCppRunner(spec, n_gpu_layers=spec.num_gpu if spec.num_gpu is not None else -1)
