"""GGUF -> MLX model folder: the MLX engine's one-time conversion of a llama GGUF into an mlx-lm style
folder (``config.json`` + ``model.safetensors``) under ``<home>/mlx/<key>``.

Quantised weights are never re-quantised (that changes the model's answers):

* Q4_0, Q4_1, Q8_0, Q5_0, Q5_1 blocks of 32 *are* MLX affine groups of 32 (``w = scale*q + bias``):
  repacked bit-for-bit with float16 scales, exactly what ``mx.load`` makes of Q4_0/Q4_1/Q8_0.
* Q4_K and Q5_K are 32-element sub-blocks with scale ``d*sc`` and min ``dmin*m``: repacked exactly
  as 4/5-bit groups of 32 with float32 scales (the products do not fit float16).
* Q2_K, Q3_K and Q6_K (16-element sub-blocks; MLX groups are 32, 64 or 128) and the IQ codebook
  types are dequantised to float16 — a rounding below 2**-11 relative, far below their
  quantisation step, and the only types not kept exactly. (``mx.load`` itself rounds Q4_K/Q6_K to
  float16 and cannot read Q5_x, Q2_K, Q3_K, Q5_K or IQ types at all, hence our own reader.)

Q/K keep GGUF's row order, which llama.cpp's converter permuted for its interleaved ("normal")
rope: MLX's ``traditional`` rope is that rope, so no rows are un-permuted.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from corral.errors import BadRequest, InvalidModelFile
from corral.formats.gguf import data_offset, read_header
from corral.formats.hfnames import LLAMA_LAYER_NAMES as _LAYER_NAMES
from corral.formats.hfnames import LLAMA_TOP_NAMES as _TOP_NAMES

if TYPE_CHECKING:
    import mlx.core as mx

CONVERTER_VERSION = 1  # bump when the derived folder's layout or contents change

# ---------------------------------------------------------------------------------------------
# GGUF -> MLX model folder
# ---------------------------------------------------------------------------------------------


# GGML type ids (ggml.h)
F32, F16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 = 0, 1, 2, 3, 6, 7, 8
Q4_K, Q5_K, BF16 = 12, 13, 30

_BLOCKS: dict[int, np.dtype] = {
    Q4_0: np.dtype([("d", "<f2"), ("qs", "u1", 16)]),
    Q4_1: np.dtype([("d", "<f2"), ("m", "<f2"), ("qs", "u1", 16)]),
    Q5_0: np.dtype([("d", "<f2"), ("qh", "<u4"), ("qs", "u1", 16)]),
    Q5_1: np.dtype([("d", "<f2"), ("m", "<f2"), ("qh", "<u4"), ("qs", "u1", 16)]),
    Q8_0: np.dtype([("d", "<f2"), ("qs", "i1", 32)]),
    Q4_K: np.dtype([("d", "<f2"), ("dmin", "<f2"), ("sc", "u1", 12), ("qs", "u1", 128)]),
    Q5_K: np.dtype([("d", "<f2"), ("dmin", "<f2"), ("sc", "u1", 12), ("qh", "u1", 32), ("qs", "u1", 128)]),
}


@dataclass
class _Affine:
    """One quantised matrix as MLX affine groups of 32: ``w = scales*q + biases``."""

    q: np.ndarray  # uint8 (rows, cols)
    scales: np.ndarray  # (rows, cols // 32)
    biases: np.ndarray
    bits: int


def _nibbles32(qs: np.ndarray) -> np.ndarray:
    """Q4_0/Q4_1/Q5_x: byte j holds element j (low nibble) and element j+16 (high nibble)."""
    return np.concatenate([qs & 0x0F, qs >> 4], axis=-1)


def _high_bits32(qh: np.ndarray) -> np.ndarray:
    return ((qh[..., None] >> np.arange(32, dtype=np.uint32)) & 1).astype(np.uint8)


def _k_scales(sc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """llama.cpp's get_scale_min_k4 for the 8 sub-blocks of a Q4_K/Q5_K super-block (6-bit each)."""
    sc = sc.astype(np.uint8)
    scale = np.empty(sc.shape[:-1] + (8,), np.uint8)
    mins = np.empty_like(scale)
    scale[..., :4] = sc[..., 0:4] & 63
    mins[..., :4] = sc[..., 4:8] & 63
    scale[..., 4:] = (sc[..., 8:12] & 0x0F) | ((sc[..., 0:4] >> 6) << 4)
    mins[..., 4:] = (sc[..., 8:12] >> 4) | ((sc[..., 4:8] >> 6) << 4)
    return scale, mins


def _k_quants(b: np.ndarray, high: np.ndarray | None) -> np.ndarray:
    """Q4_K/Q5_K quants in element order: 64-element chunk c is low nibbles (sub-block 2c) then high."""
    qs = b["qs"].reshape(b.shape + (4, 32))
    q = np.stack([qs & 0x0F, qs >> 4], axis=-2).reshape(b.shape + (256,))
    if high is not None:  # bit 2c of qh[l] is sub-block 2c's fifth bit, bit 2c+1 is sub-block 2c+1's
        bits = (high[..., None, :] >> np.arange(8, dtype=np.uint8)[:, None]) & 1  # (..., 8, 32)
        q = q | (bits.reshape(b.shape + (256,)) << 4)
    return q


def _unpack_affine(ggml_type: int, raw: np.ndarray, rows: int, cols: int) -> _Affine:
    b = raw.view(_BLOCKS[ggml_type]).reshape(rows, -1)
    if ggml_type in (Q4_0, Q4_1, Q5_0, Q5_1):
        q = _nibbles32(b["qs"])
        if ggml_type in (Q5_0, Q5_1):
            q = q | (_high_bits32(b["qh"]) << 4)
        d = b["d"]
        bias = b["m"] if ggml_type in (Q4_1, Q5_1) else (d * np.float16(-16 if ggml_type == Q5_0 else -8))
        bits = 5 if ggml_type in (Q5_0, Q5_1) else 4
        return _Affine(q.reshape(rows, cols), np.ascontiguousarray(d), np.ascontiguousarray(bias, np.float16), bits)
    if ggml_type == Q8_0:
        q = (b["qs"].astype(np.int16) + 128).astype(np.uint8)
        d = b["d"]
        return _Affine(q.reshape(rows, cols), np.ascontiguousarray(d), (d * np.float16(-128)).astype(np.float16), 8)
    # Q4_K / Q5_K: d1 = d*sc and m1 = dmin*m in float32, as llama.cpp's dequantize_row_q4_K
    sc, mn = _k_scales(b["sc"])
    scales = b["d"].astype(np.float32)[..., None] * sc.astype(np.float32)
    biases = -(b["dmin"].astype(np.float32)[..., None] * mn.astype(np.float32))
    q = _k_quants(b, b["qh"] if ggml_type == Q5_K else None)
    bits = 5 if ggml_type == Q5_K else 4
    return _Affine(q.reshape(rows, cols), scales.reshape(rows, -1), biases.reshape(rows, -1), bits)


def _pack(q: np.ndarray, bits: int) -> np.ndarray:
    """MLX's packing: a little-endian bit stream of ``bits``-bit values, read as uint32 words."""
    rows, cols = q.shape
    if bits == 8:
        return np.ascontiguousarray(q).view(np.uint32)
    if bits == 4:
        return np.ascontiguousarray(q[:, 0::2] | (q[:, 1::2] << 4)).view(np.uint32)
    out = np.empty((rows, cols * bits // 32), np.uint32)
    step = max(1, (1 << 24) // max(1, cols * bits))  # bounded scratch memory
    for lo in range(0, rows, step):
        part = q[lo:lo + step]
        stream = ((part[..., None] >> np.arange(bits, dtype=np.uint8)) & 1).reshape(part.shape[0], -1)
        out[lo:lo + step] = np.packbits(stream, axis=-1, bitorder="little").view(np.uint32)
    return out


def hf_name(gguf_name: str) -> str | None:
    base, _, suffix = gguf_name.rpartition(".")
    if base.startswith("blk."):
        _, layer, part = base.split(".", 2)
        mapped = _LAYER_NAMES.get(part)
        return f"model.layers.{layer}.{mapped}.{suffix}" if mapped else None
    mapped = _TOP_NAMES.get(base)
    return f"{mapped}.{suffix}" if mapped else None


def _config(meta: dict[str, Any], tensors: Sequence[Any]) -> dict[str, Any]:
    """An mlx-lm llama config from GGUF metadata (mlx_lm.utils.load_model can read the folder)."""
    arch = meta.get("general.architecture")
    if arch != "llama":
        raise BadRequest(f"the MLX engine runs llama-architecture models; this one is {arch!r}")

    def need(key: str) -> Any:
        value = meta.get(f"llama.{key}")
        if value is None:
            raise InvalidModelFile(f"llama.{key} is missing from the GGUF metadata")
        if isinstance(value, list):
            raise BadRequest(f"llama.{key} varies per layer, which the MLX engine does not support")
        return value

    n_embd, n_head = int(need("embedding_length")), int(need("attention.head_count"))
    head_dim = int(meta.get("llama.attention.key_length") or n_embd // n_head)
    scaling = meta.get("llama.rope.scaling.type", "none")
    if scaling not in ("none", "linear"):
        raise BadRequest(f"rope scaling {scaling!r} is not supported by the MLX engine")
    shapes = {t.name: tuple(t.shape) for t in tensors}
    if "token_embd.weight" not in shapes:
        raise InvalidModelFile("the GGUF has no token_embd.weight tensor")
    return {
        "model_type": "llama",
        "hidden_size": n_embd,
        "num_hidden_layers": int(need("block_count")),
        "intermediate_size": int(need("feed_forward_length")),
        "num_attention_heads": n_head,
        "num_key_value_heads": int(meta.get("llama.attention.head_count_kv") or n_head),
        "head_dim": head_dim,
        "rms_norm_eps": float(need("attention.layer_norm_rms_epsilon")),
        "vocab_size": int(shapes["token_embd.weight"][-1]),
        "max_position_embeddings": int(meta.get("llama.context_length") or 2048),
        "rope_theta": float(meta.get("llama.rope.freq_base") or 10000.0),
        "rope_traditional": True,  # GGUF's Q/K row order is for the interleaved rope
        "tie_word_embeddings": "output.weight" not in shapes,
        "corral": {
            "converter_version": CONVERTER_VERSION,
            "rope_dims": int(meta.get("llama.rope.dimension_count") or head_dim),
            "rope_scale": 1.0 / float(meta.get("llama.rope.scaling.factor") or 1.0) if scaling == "linear" else 1.0,
        },
    }


def convert_gguf(gguf_path: Path, folder: Path) -> None:
    """Write ``folder`` (config.json + model.safetensors) from a llama GGUF; atomic."""
    import gguf as gguf_py
    import mlx.core as mx

    meta, tensors = read_header(gguf_path)
    config = _config(meta, tensors)  # refuses other architectures before any tensor is read
    start = data_offset(gguf_path)
    weights: dict[str, mx.array] = {}
    quant: dict[str, dict[str, int]] = {}
    rope_freqs: list[float] | None = None
    with open(gguf_path, "rb") as fh:
        for t in tensors:
            fh.seek(start + t.offset)
            raw = np.frombuffer(fh.read(t.n_bytes), np.uint8)
            cols = int(t.shape[0])
            rows = int(np.prod(t.shape[1:], dtype=np.int64)) if len(t.shape) > 1 else 1
            np_shape = tuple(int(s) for s in reversed(t.shape))
            if t.name == "rope_freqs.weight":  # llama 3 rope: per-frequency divisors
                rope_freqs = raw.view(np.float32).astype(float).tolist()
                continue
            name = hf_name(t.name)
            if name is None:
                if ".attn_rot_embd" in t.name:
                    continue
                raise BadRequest(f"the MLX engine does not know the tensor {t.name!r}")
            module = name.rsplit(".", 1)[0]
            if t.ggml_type == F32:
                weights[name] = mx.array(raw.view(np.float32).reshape(np_shape))
            elif t.ggml_type == F16:
                weights[name] = mx.array(raw.view(np.float16).reshape(np_shape))
            elif t.ggml_type == BF16:
                weights[name] = mx.array(raw.view(np.uint16).reshape(np_shape)).view(mx.bfloat16)
            elif t.ggml_type in _BLOCKS and len(t.shape) == 2 and cols % 32 == 0:
                aff = _unpack_affine(t.ggml_type, raw, rows, cols)
                weights[name] = mx.array(_pack(aff.q, aff.bits))
                weights[f"{module}.scales"] = mx.array(aff.scales)
                weights[f"{module}.biases"] = mx.array(aff.biases)
                quant[module] = {"group_size": 32, "bits": aff.bits}
            else:
                try:
                    qtype = gguf_py.GGMLQuantizationType(t.ggml_type)
                    values = gguf_py.quants.dequantize(raw.reshape(rows, -1), qtype).reshape(np_shape)
                except (ValueError, NotImplementedError) as exc:
                    raise BadRequest(f"tensor {t.name!r} has a type the MLX engine cannot read ({exc})") from None
                fits = np.isfinite(values).all() and np.abs(values).max(initial=0) < 65504
                weights[name] = mx.array(values.astype(np.float16 if fits else np.float32))
            mx.eval(weights)  # materialise each tensor now, so the numpy scratch is freed as we go

    if rope_freqs is not None:
        config["corral"]["rope_freqs"] = rope_freqs
    if quant:
        first = next(iter(quant.values()))
        config["quantization"] = {"group_size": 32, "bits": first["bits"], **quant}
    tmp = folder.with_name(f"{folder.name}.tmp-{os.getpid()}-{threading.get_ident()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        mx.save_safetensors(str(tmp / "model.safetensors"), weights, metadata={"format": "mlx"})
        (tmp / "config.json").write_text(json.dumps(config, indent=1))
        os.replace(tmp, folder)  # the folder appears complete or not at all
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if not (folder / "config.json").is_file():  # else another process converted it first
            raise


def derived_folder(gguf_path: Path, root: Path | None = None) -> Path:
    """Where the MLX folder derived from ``gguf_path`` lives: keyed by the blob's digest where the
    file is a store blob (``sha256-<hex>``), otherwise by its path, size and mtime."""
    if root is None:
        from corral.config import Settings

        root = Settings().home / "mlx"
    name = gguf_path.name
    if re.fullmatch(r"sha256-[0-9a-f]{64}", name):
        key = name.removeprefix("sha256-")
    else:
        st = gguf_path.stat()
        key = hashlib.sha256(f"{gguf_path.resolve()}\0{st.st_size}\0{st.st_mtime_ns}".encode()).hexdigest()
    return root / f"{key}-v{CONVERTER_VERSION}"


def ensure_mlx_folder(gguf_path: Path, root: Path | None = None) -> Path:
    """The derived MLX folder for ``gguf_path``, converting on first use (call it at pull/create
    time to move the conversion off the first load)."""
    folder = derived_folder(Path(gguf_path), root)
    if not (folder / "config.json").is_file():
        folder.parent.mkdir(parents=True, exist_ok=True)
        convert_gguf(Path(gguf_path), folder)
    return folder
