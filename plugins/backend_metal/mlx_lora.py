"""LoRA adapters in llama.cpp's GGUF format, for the MLX engine.

An adapter GGUF (``general.type`` "adapter", ``adapter.type`` "lora") holds, for each adapted base
tensor ``<name>``, a pair ``<name>.lora_a`` / ``<name>.lora_b``. As in llama.cpp (llama-adapter.cpp,
llama-graph.cpp), a matrix ``W`` (numpy (out, in)) with ``A`` (rank, in) and ``B`` (out, rank) computes
``x @ W.T + scale * (x @ A.T) @ B.T``; ``token_embd.weight``'s pair is stored flipped, ``A`` (vocab,
rank) and ``B`` (embd, rank), and adds ``scale * A[ids] @ B.T`` to the looked-up rows. ``scale`` is
``alpha / rank`` (1 where alpha is 0), times the adapter's scale, which Corral always sets to 1 (as
its llama.cpp engine does).

The pairs are applied at run time, never merged into the weights: merging into quantised weights
would re-quantise them and change the model's answers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from corral.errors import InvalidModelFile
from corral.formats.gguf import TensorInfo, data_offset, read_header

if TYPE_CHECKING:
    import mlx.core as mx

EMBEDDINGS = "token_embd.weight"
_F32, _F16, _BF16 = 0, 1, 30  # GGML type ids


@dataclass(frozen=True)
class LoraPair:
    """One adapter's low-rank update of one base tensor."""

    a: mx.array
    b: mx.array
    scale: float


def load_adapters(paths: Sequence[Path], base: Sequence[TensorInfo], arch: str) -> dict[str, list[LoraPair]]:
    """Each adapted base tensor's GGUF name -> its pairs, one per adapter that adapts it, in order.
    Refuses (InvalidModelFile, naming the file) what llama.cpp refuses."""
    shapes = {t.name: tuple(t.shape) for t in base}
    out: dict[str, list[LoraPair]] = {}
    for path in paths:
        for name, pair in _read_adapter(Path(path), shapes, arch).items():
            out.setdefault(name, []).append(pair)
    return out


def _read_adapter(path: Path, base_shapes: dict[str, tuple[int, ...]], arch: str) -> dict[str, LoraPair]:
    import mlx.core as mx

    def refuse(why: str) -> InvalidModelFile:
        return InvalidModelFile(f"{path} is not a LoRA adapter this model can use: {why}")

    meta, tensors = read_header(path)
    if meta.get("general.type") != "adapter" or meta.get("adapter.type") != "lora":
        raise refuse("general.type must be 'adapter' and adapter.type 'lora'")
    if meta.get("general.architecture") != arch:
        raise refuse(f"it is for {meta.get('general.architecture')!r} models, this model is {arch!r}")
    alpha = float(meta.get("adapter.lora.alpha") or 0.0)
    halves: dict[str, dict[str, TensorInfo]] = {}
    for t in tensors:
        stem, _, half = t.name.rpartition(".")
        if half in ("lora_a", "lora_b"):
            halves.setdefault(stem, {})[half] = t
        elif not t.name.endswith("_norm.weight"):  # llama.cpp ignores norm vectors too
            raise refuse(f"tensor {t.name!r} has an unexpected suffix")
    start, size = data_offset(path), path.stat().st_size
    pairs: dict[str, LoraPair] = {}
    with open(path, "rb") as fh:
        for name, pair_halves in halves.items():
            if set(pair_halves) != {"lora_a", "lora_b"}:
                raise refuse(f"the pair for {name!r} is missing one half")
            if name not in base_shapes:
                raise refuse(f"the model has no tensor {name!r}")
            a, b = (_float32(fh, pair_halves[h], start, size, path) for h in ("lora_a", "lora_b"))
            _check_shapes(name, base_shapes[name], a.shape, b.shape, refuse)
            rank = b.shape[1]
            pairs[name] = LoraPair(mx.array(a), mx.array(b), alpha / rank if alpha else 1.0)
    return pairs


def _check_shapes(name: str, base: tuple[int, ...], a: tuple[int, ...], b: tuple[int, ...], refuse: Any) -> None:
    """llama.cpp's checks, in numpy order (base (out, in) is ggml's [in, out])."""
    rows, cols = base[1], base[0]
    if name == EMBEDDINGS:
        fits = a[0] == rows and b[0] == cols and a[1] == b[1]  # A (vocab, rank), B (embd, rank)
    else:
        fits = a[1] == cols and b[0] == rows and a[0] == b[1]  # A (rank, in), B (out, rank)
    if not fits:
        raise refuse(f"the shapes of {name!r}'s pair, {a} and {b}, do not fit its {(rows, cols)}")


def _float32(fh: Any, t: TensorInfo, start: int, size: int, path: Path) -> np.ndarray:
    """One adapter tensor as float32 in numpy order (adapters are small: no need to keep them packed)."""
    if start + t.offset + t.n_bytes > size:
        raise InvalidModelFile(f"{path} is truncated: tensor {t.name!r} runs past the end of the file")
    fh.seek(start + t.offset)
    raw = np.frombuffer(fh.read(t.n_bytes), np.uint8)
    shape = tuple(int(n) for n in reversed(t.shape))
    if t.ggml_type == _F32:
        return raw.view(np.float32).reshape(shape)
    if t.ggml_type == _F16:
        return raw.view(np.float16).astype(np.float32).reshape(shape)
    if t.ggml_type == _BF16:
        return (raw.view(np.uint16).astype(np.uint32) << 16).view(np.float32).reshape(shape)
    import gguf

    try:
        kind = gguf.GGMLQuantizationType(t.ggml_type)
        return gguf.quants.dequantize(raw, kind).astype(np.float32).reshape(shape)
    except (ValueError, NotImplementedError) as exc:
        raise InvalidModelFile(f"{path}: tensor {t.name!r} has a type the MLX engine cannot read ({exc})") from None
