"""What an onnxruntime-genai model folder needs in memory, and whether one device can hold it.

onnxruntime splits no layers across devices, so an ONNX model runs whole on one device: the GPU on
cuda, else the CPU. The figures come from genai_config.json and the folder's file sizes.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from corral.engines.llamacpp.offload import GPU_OVERHEAD
from corral.errors import InsufficientMemory, InvalidModelFile
from corral.formats.onnx import PROVENANCE, read_json
from corral.formats.units import human_bytes
from corral.hookspecs import Device


@dataclass(frozen=True)
class OnnxNeed:
    """What an onnxruntime-genai model takes on its device, in bytes."""

    weights: int  # the .onnx files and their external data
    kv_cache: int  # K and V for every layer, for every slot's full context
    compute: int  # the logits of one prefill chunk (n_batch x n_vocab, float32): the largest activation
    seq_ctx: int  # tokens per sequence, after the model's context length caps num_ctx

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache + self.compute


def onnx_need(folder: Path, num_ctx: int, num_parallel: int, *, on_gpu: bool, num_batch: int = 512) -> OnnxNeed:
    """The memory an onnxruntime-genai model needs with ``num_parallel`` sequences of ``num_ctx``
    tokens, prefilled ``num_batch`` tokens at a time. The KV cache is in the model's type (fp16/bf16
    models keep it in 16 bits on a GPU, others in 32). Measured on SmolLM2 int8: the load took 251 MiB
    for 255 MiB of weights, and a 1050-token sequence 140 MiB more for 46 MiB of KV and 96 MiB of logits."""
    folder = Path(folder)
    try:
        model = json.loads((folder / "genai_config.json").read_text(encoding="utf-8"))["model"]
        decoder = model["decoder"]
        per_token = (
            2 * int(decoder["num_hidden_layers"]) * int(decoder["num_key_value_heads"]) * int(decoder["head_size"])
        )
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InvalidModelFile(f"{folder}: genai_config.json does not describe the decoder ({exc})") from None
    weights = sum(p.stat().st_size for p in folder.iterdir() if p.name.endswith((".onnx", ".onnx.data")))
    bpe = 2 if on_gpu and read_json(folder / PROVENANCE).get("precision") in ("fp16", "bf16") else 4
    seq_ctx = min(num_ctx, int(model.get("context_length") or num_ctx))
    compute = min(num_batch, seq_ctx) * int(model.get("vocab_size") or 0) * 4
    return OnnxNeed(weights, per_token * seq_ctx * num_parallel * bpe, compute, seq_ctx)


def check_onnx_fit(
    folder: Path, num_ctx: int, num_parallel: int, devices: Sequence[Device], *, on_gpu: bool, num_batch: int = 512
) -> None:
    """An ONNX model runs whole on one device (onnxruntime splits no layers): refuse it, saying what it
    needs and what is free, when that device cannot hold it."""
    device = next((d for d in devices if (d.kind == "gpu") == on_gpu), None)
    if device is None:
        return
    need = onnx_need(folder, num_ctx, num_parallel, on_gpu=on_gpu, num_batch=num_batch)
    total = need.total + (GPU_OVERHEAD if on_gpu else 0)
    if total > device.free_memory:
        raise InsufficientMemory(
            f"the model needs {human_bytes(total)} on {device.name} (weights {human_bytes(need.weights)}, KV cache "
            f"{human_bytes(need.kv_cache)} for {num_parallel} x {need.seq_ctx} tokens, "
            f"compute {human_bytes(need.compute)}) but only {human_bytes(device.free_memory)} is free: "
            "lower num_ctx or CORRAL_NUM_PARALLEL, or stop other models"
        )


def explain_onnx_fit(
    folder: Path, num_ctx: int, num_parallel: int, devices: Sequence[Device], *, on_gpu: bool, num_batch: int = 512
) -> str:
    """What the model needs, part by part, and whether its one device holds it (``corral show --fit``)."""
    need = onnx_need(folder, num_ctx, num_parallel, on_gpu=on_gpu, num_batch=num_batch)
    lines = [
        "ONNX model: onnxruntime runs it whole on one device (no layer split)",
        f"Weights:   {human_bytes(need.weights)}",
        f"KV cache:  {human_bytes(need.kv_cache)} ({num_parallel} x {need.seq_ctx} tokens)",
        f"Compute:   {human_bytes(need.compute)} (the logits of one {num_batch}-token prefill chunk)",
    ]
    try:
        check_onnx_fit(folder, num_ctx, num_parallel, devices, on_gpu=on_gpu, num_batch=num_batch)
    except InsufficientMemory as exc:
        return "\n".join([*lines, f"Does not fit: {exc}"])
    device = next((d for d in devices if (d.kind == "gpu") == on_gpu), None)
    free = f"{human_bytes(device.free_memory)} free on {device.name}" if device else "no device to check"
    return "\n".join([*lines, f"Fits:      {free}"])
