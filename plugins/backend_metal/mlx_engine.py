"""The MLX engine: a Runner over mlx for llama-architecture GGUF models, independent of llama.cpp.

The stored format stays GGUF. On first load the weights are converted once into an mlx-lm style
model folder (``config.json`` + ``model.safetensors``) under ``<home>/mlx/<key>``; later loads read
that folder. Quantised weights are never re-quantised (that changes the model's answers):

* Q4_0, Q4_1, Q8_0, Q5_0, Q5_1 blocks of 32 *are* MLX affine groups of 32 (``w = scale*q + bias``):
  repacked bit-for-bit with float16 scales, exactly what ``mx.load`` makes of Q4_0/Q4_1/Q8_0.
* Q4_K and Q5_K are 32-element sub-blocks with scale ``d*sc`` and min ``dmin*m``: repacked exactly
  as 4/5-bit groups of 32 with float32 scales (the products do not fit float16).
* Q2_K, Q3_K and Q6_K (16-element sub-blocks; MLX groups are 32, 64 or 128) and the IQ codebook
  types are dequantised to float16 — a rounding below 2**-11 relative, far below their
  quantisation step, and the only types not kept exactly. (``mx.load`` itself rounds Q4_K/Q6_K to
  float16 and cannot read Q5_x, Q2_K, Q3_K, Q5_K or IQ types at all, hence our own reader.)

Activations and the KV cache stay float32, so the engine computes the model the GGUF describes
(logits within ~1e-4 of a float64 reference on SmolLM2; llama.cpp's CPU kernels, which quantise
activations to 8 bits, drift ~0.5 from it). Q/K keep GGUF's row order, which llama.cpp's converter
permuted for its interleaved ("normal") rope: MLX's ``traditional`` rope is that rope, so no rows
are un-permuted.

``step`` packs every sequence's new tokens into one matrix, so the projections and the MLP read
each weight once per step for all sequences (as llama.cpp's batches do); only attention runs per
sequence, over that sequence's own KV cache. The tokenizer is rebuilt from the GGUF vocabulary
with llama.cpp's rules (special-token partition, pre-tokenizer regexes, BPE or SentencePiece).

Tokens are picked by ``corral.engines.sampling``'s numpy sampler (llama.cpp's chain), except a plain greedy
sequence, whose argmax is taken on the device. GBNF grammars (Ollama's ``format``) run llama.cpp's
grammar sampler over a vocab-only llama.cpp load of the same GGUF, made on the first grammar.
LoRA adapters (llama.cpp's GGUF format, read by ``mlx_lora``) are added at run time to the matrices
they adapt, never merged into the (possibly quantised) weights.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import mmap
import os
import re
import shutil
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from corral.errors import BadRequest, CorralError, InvalidModelFile
from corral.formats.gguf import read_header, validate_gguf
from corral.hookspecs import LoadSpec, ModelInfo, Sampling, SequenceStep
from corral.formats.hfnames import LLAMA_LAYER_NAMES as _LAYER_NAMES, LLAMA_TOP_NAMES as _TOP_NAMES
from corral.formats.hfnames import byte_decoder as _byte_decoder
from corral.engines.sampling import GrammarVocabulary, Sampler

from .mlx_lora import EMBEDDINGS, LoraPair, load_adapters

if TYPE_CHECKING:
    import mlx.core as mx

CONVERTER_VERSION = 1  # bump when the derived folder's layout or contents change
_KV_STEP = 256  # KV caches grow in steps of this many tokens

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


def _data_start(path: Path) -> int:
    # The tensor data offset is parsed by gguf_check but not returned by read_header; reuse the
    # parser rather than pay gguf.GGUFReader's seconds of string decoding.
    from corral.formats.gguf import _parse

    size = path.stat().st_size
    with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        return int(_parse(buf, size)[3])


def _hf_name(gguf_name: str) -> str | None:
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
    start = _data_start(gguf_path)
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
            name = _hf_name(t.name)
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


# ---------------------------------------------------------------------------------------------
# Tokenizer: llama.cpp's rules over the GGUF vocabulary
# ---------------------------------------------------------------------------------------------

_NORMAL, _UNKNOWN, _CONTROL, _USER, _UNUSED, _BYTE = 1, 2, 3, 4, 5, 6
_GPT2_RE = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
_LLAMA3_RE = (r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
              r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_RE = _LLAMA3_RE.replace(r"\p{N}{1,3}", r"\p{N}")
# tokenizer.ggml.pre -> (regexes, ignore_merges, default add_bos), from llama.cpp's llama-vocab.cpp
_PRE: dict[str, tuple[list[str], bool, bool]] = {
    "default": ([r"[\p{P}\$\+<=>\^~\|]+", _GPT2_RE, r"\p{N}+", r"[0-9][0-9][0-9]"], False, False),
    "falcon": ([r"[\p{P}\$\+<=>\^~\|`]+", _GPT2_RE, r"[0-9][0-9][0-9]"], False, False),
    **{k: ([_LLAMA3_RE], True, True) for k in
       ("llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0", "lfm2")},
    **{k: ([_LLAMA3_RE], False, False) for k in ("dbrx", "smaug-bpe")},
    **{k: ([r"\p{N}", _GPT2_RE], False, False) for k in
       ("starcoder", "refact", "command-r", "smollm", "codeshell", "exaone", "minerva-7b")},
    **{k: ([_GPT2_RE], False, False) for k in
       ("gpt-2", "phi-2", "jina-es", "jina-de", "gigachat", "jina-v2-es", "jina-v2-de", "a.x-4.0",
        "mellum", "mpt", "olmo", "jais", "trillion", "granite-docling", "exaone4")},
    **{k: ([_QWEN2_RE], False, False) for k in
       ("qwen2", "deepseek-r1-qwen", "kormo", "stablelm2", "megrez", "hunyuan")},
}
# Token texts llama.cpp treats as end-of-generation (and forces to control type)
_EOG_TEXTS = {"<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<end_of_turn>",
              "<|endoftext|>", "<|eom_id|>", "<EOT>", "_<EOT>", "<|end_of_text|>", "<end_of_utterance>"}
# (metadata key, texts llama.cpp looks for when the key is absent)
_SPECIAL_BY_TEXT = (
    ("tokenizer.ggml.eot_token_id", ("<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>",
                                     "<|end_of_text|>", "<EOT>", "_<EOT>", "<｜end▁of▁sentence｜>",
                                     "<end_of_utterance>")),
    ("tokenizer.ggml.eom_token_id", ("<|eom_id|>",)),
    ("tokenizer.ggml.fim_pre_token_id", ("<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>", "<｜fim▁begin｜>",
                                         "<PRE>", "▁<PRE>", "<|code_prefix|>")),
    ("tokenizer.ggml.fim_suf_token_id", ("<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>", "<｜fim▁hole｜>",
                                         "<SUF>", "▁<SUF>", "<|code_suffix|>")),
    ("tokenizer.ggml.fim_mid_token_id", ("<|fim_middle|>", "<fim-middle>", "<fim_middle>", "<｜fim▁end｜>",
                                         "<MID>", "▁<MID>", "<|code_middle|>")),
    ("tokenizer.ggml.fim_pad_token_id", ("<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>")),
    ("tokenizer.ggml.fim_rep_token_id", ("<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>")),
    ("tokenizer.ggml.fim_sep_token_id", ("<|file_sep|>",)),
)
_EOG_KEYS = {"eot_token_id", "eom_token_id", "fim_pad_token_id", "fim_rep_token_id", "fim_sep_token_id"}




class GGUFTokenizer:
    """Text <-> token ids as llama.cpp does them, for gpt2 (byte-level BPE) and llama (SentencePiece)
    vocabularies."""

    def __init__(self, meta: dict[str, Any]) -> None:
        self.model = meta.get("tokenizer.ggml.model", "")
        self.tokens: list[str] = list(meta.get("tokenizer.ggml.tokens") or [])
        n = len(self.tokens)
        types = list(meta.get("tokenizer.ggml.token_type") or [_NORMAL] * n)
        self.scores: list[float] = list(meta.get("tokenizer.ggml.scores") or [0.0] * n)
        self.ids = {t or f"[EMPTY_{i}]": i for i, t in enumerate(self.tokens)}
        self.attr = [t if t in (_NORMAL, _UNKNOWN, _CONTROL, _USER, _UNUSED, _BYTE) else 0 for t in types]

        def opt_id(key: str) -> int | None:
            value = meta.get(key)
            return int(value) if value is not None and 0 <= int(value) < n else None

        if self.model == "gpt2":
            pre = meta.get("tokenizer.ggml.pre") or "default"
            if pre not in _PRE:
                raise BadRequest(f"the MLX engine does not support the pre-tokenizer {pre!r}")
            regexes, ignore_merges, add_bos = _PRE[pre]
            self._bpe = self._build_bpe(meta, regexes, ignore_merges)
            self.bos = opt_id("tokenizer.ggml.bos_token_id") if "tokenizer.ggml.bos_token_id" in meta else 11
            self.eos = opt_id("tokenizer.ggml.eos_token_id") if "tokenizer.ggml.eos_token_id" in meta else 11
            self.add_space_prefix = False
            self._decode = _byte_decoder()
        elif self.model == "llama":
            add_bos = True
            self.bos = opt_id("tokenizer.ggml.bos_token_id") if "tokenizer.ggml.bos_token_id" in meta else 1
            self.eos = opt_id("tokenizer.ggml.eos_token_id") if "tokenizer.ggml.eos_token_id" in meta else 2
            self.add_space_prefix = bool(meta.get("tokenizer.ggml.add_space_prefix", True))
        else:
            raise BadRequest(f"the MLX engine does not support {self.model!r} tokenizers")
        self.add_bos = bool(meta.get("tokenizer.ggml.add_bos_token", add_bos))
        self.add_eos = bool(meta.get("tokenizer.ggml.add_eos_token", False))
        self.eog = self._end_of_generation(meta, opt_id)
        special = [i for i, a in enumerate(self.attr) if a in (_CONTROL, _USER, _UNKNOWN)]
        self._special = sorted(special, key=lambda i: -len(self.tokens[i].encode()))
        self._pieces: dict[int, bytes] = {}

    def _end_of_generation(self, meta: dict[str, Any], opt_id: Any) -> set[int]:
        """llama.cpp's EOG set: EOS, EOT, EOM, the fim pad/repo/separator tokens and any token with
        an end-looking text. Like llama.cpp, tokens found by their text become control tokens."""
        eog: set[int] = set()
        for key, texts in _SPECIAL_BY_TEXT:
            tid = opt_id(key) if key in meta else next((self.ids[t] for t in texts if t in self.ids), None)
            if tid is None:
                continue
            if key not in meta:
                self.attr[tid] = _CONTROL
            if key.split(".")[-1] in _EOG_KEYS:
                eog.add(tid)
        for text in _EOG_TEXTS:
            if text in self.ids:
                self.attr[self.ids[text]] = _CONTROL
                eog.add(self.ids[text])
        if self.eos is not None:
            eog.add(self.eos)
        for text in ("<|channel|>", "<|message|>", "<|start|>", "<|constrain|>"):  # gpt-oss: always shown
            if text in self.ids:
                self.attr[self.ids[text]] = _USER
        if all(t in self.ids for t in ("<|return|>", "<|call|>", "<|end|>")):  # harmony: <|end|> is not EOG
            eog.discard(self.ids["<|end|>"])
            self.attr[self.ids["<|end|>"]] = _USER
        return eog

    @staticmethod
    def _build_bpe(meta: dict[str, Any], regexes: list[str], ignore_merges: bool) -> Any:
        from tokenizers import Regex, Tokenizer, models, pre_tokenizers

        vocab = {t or f"[EMPTY_{i}]": i for i, t in enumerate(meta["tokenizer.ggml.tokens"])}
        merges = []
        for line in meta.get("tokenizer.ggml.merges") or []:
            cut = line.find(" ", 1)  # as llama.cpp: the separator is the first space after char 0
            if cut > 0:
                merges.append((line[:cut], line[cut + 1:]))
        tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, ignore_merges=ignore_merges))
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Split(Regex(r), behavior="isolated") for r in regexes]
            + [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
        )
        return tok

    # ---- text -> ids --------------------------------------------------------------------------
    def _partition(self, text: str, special: bool) -> list[str | int]:
        """llama.cpp's tokenizer_st_partition: longest special tokens first, each found everywhere."""
        parts: list[str | int] = [text]
        for tid in self._special:
            if not special and self.attr[tid] in (_CONTROL, _UNKNOWN):
                continue  # user-defined tokens are matched even without special parsing
            piece = self.tokens[tid]
            if not piece:
                continue
            out: list[str | int] = []
            for part in parts:
                if isinstance(part, int) or piece not in part:
                    out.append(part)
                    continue
                chunks = part.split(piece)
                for i, chunk in enumerate(chunks):
                    if i:
                        out.append(tid)
                    if chunk:
                        out.append(chunk)
            parts = out
        return parts

    def encode(self, text: str, *, special: bool = True, add_special: bool = False) -> list[int]:
        out: list[int] = []
        if add_special and self.add_bos and self.bos is not None:
            out.append(self.bos)
        prev_special = True
        for part in self._partition(text, special) if text else []:
            if isinstance(part, int):
                out.append(part)
                prev_special = True
            elif self.model == "gpt2":
                out.extend(self._bpe.encode(part, add_special_tokens=False).ids)
            else:
                prefix = " " if self.add_space_prefix and prev_special else ""
                out.extend(self._spm((prefix + part).replace(" ", "▁")))
                prev_special = False
        if add_special and self.add_eos and self.eos is not None:
            out.append(self.eos)
        return out

    def _spm(self, text: str) -> list[int]:
        """llama.cpp's llm_tokenizer_spm_session: merge the best-scoring adjacent pair that is a
        token, left first on ties; unknown leftovers fall back to <0xXX> byte tokens."""
        syms = list(text)
        nxt = list(range(1, len(syms))) + [-1]
        prv = list(range(-1, len(syms) - 1))
        heap: list[tuple[float, int, int, str]] = []
        rev: dict[str, tuple[str, str]] = {}

        def push(left: int, right: int) -> None:
            if left < 0 or right < 0:
                return
            merged = syms[left] + syms[right]
            tid = self.ids.get(merged)
            if tid is not None:
                heapq.heappush(heap, (-self.scores[tid], left, right, merged))
                rev[merged] = (syms[left], syms[right])

        for i in range(1, len(syms)):
            push(i - 1, i)
        while heap:
            _score, left, right, merged = heapq.heappop(heap)
            if not syms[left] or not syms[right] or syms[left] + syms[right] != merged:
                continue
            syms[left], syms[right] = merged, ""
            nxt[left] = nxt[right]
            if nxt[right] >= 0:
                prv[nxt[right]] = left
            push(prv[left], left)
            push(left, nxt[left])
        out: list[int] = []

        def resegment(piece: str) -> None:
            tid = self.ids.get(piece)
            if tid is not None:
                out.append(tid)
            elif piece in rev:
                resegment(rev[piece][0])
                resegment(rev[piece][1])
            else:
                for byte in piece.encode("utf-8"):
                    out.append(self.ids.get(f"<0x{byte:02X}>", self.ids.get(chr(byte), 0)))

        i = 0
        while i != -1 and syms:
            resegment(syms[i])
            i = nxt[i]
        return out

    # ---- ids -> bytes -------------------------------------------------------------------------
    def token_bytes(self, token: int) -> bytes:
        piece = self._pieces.get(token)
        if piece is None:
            piece = self._piece(token)
            self._pieces[token] = piece
        return piece

    def _piece(self, token: int) -> bytes:
        """llama.cpp's token_to_piece with special=False: control and unknown tokens print nothing."""
        if not 0 <= token < len(self.tokens):
            return b""
        attr, text = self.attr[token], self.tokens[token]
        if attr in (_CONTROL, _UNKNOWN):
            return b""
        if attr == _USER:
            return text.encode("utf-8")
        if self.model == "gpt2":
            if attr != _NORMAL:
                return b""
            return b"".join(bytes([self._decode[c]]) if c in self._decode else c.encode() for c in text)
        if attr == _NORMAL:
            return text.replace("▁", " ").encode("utf-8")
        if attr == _BYTE:
            return bytes([int(text[3:5], 16)])
        return b""


# ---------------------------------------------------------------------------------------------
# The model: a compact llama forward over packed sequences
# ---------------------------------------------------------------------------------------------


@dataclass
class _Cache:
    """One sequence's KV cache: per layer (1, n_kv_heads, capacity, head_dim) arrays."""

    keys: list[Any] = field(default_factory=list)
    values: list[Any] = field(default_factory=list)
    offset: int = 0


class _Llama:
    def __init__(self, weights: dict[str, mx.array], config: dict[str, Any], max_ctx: int,
                 lora: dict[str, list[LoraPair]] | None = None) -> None:
        import mlx.core as mx

        self.mx = mx
        self.w = weights
        self.lora = lora or {}  # module name -> LoRA pairs, added at run time (see mlx_lora)
        self.quant: dict[str, dict[str, int]] = {
            k: v for k, v in (config.get("quantization") or {}).items() if isinstance(v, dict)
        }
        self.n_layer = config["num_hidden_layers"]
        self.n_head = config["num_attention_heads"]
        self.n_kv = config["num_key_value_heads"]
        self.head_dim = config["head_dim"]
        self.eps = config["rms_norm_eps"]
        extra = config.get("corral", {})
        self.rope_dims = int(extra.get("rope_dims", self.head_dim))
        self.rope_scale = float(extra.get("rope_scale", 1.0))
        self.rope_base: float | None = float(config["rope_theta"])
        self.rope_freqs = None
        if extra.get("rope_freqs"):  # llama 3: theta_i = pos * base^(-2i/d) / factor_i
            exps = np.arange(0, self.rope_dims, 2, dtype=np.float32) / self.rope_dims
            self.rope_freqs = mx.array(self.rope_base ** exps * np.asarray(extra["rope_freqs"], np.float32))
            self.rope_base = None
        self.scale = self.head_dim ** -0.5
        self.max_ctx = max_ctx
        self.embed_name = "model.embed_tokens"
        self.head_name = self.embed_name if config["tie_word_embeddings"] else "lm_head"

    def _linear(self, x: mx.array, name: str) -> mx.array:
        mx, w = self.mx, self.w
        q = self.quant.get(name)
        if q is None:
            y = x @ w[f"{name}.weight"].T
        else:
            y = mx.quantized_matmul(x, w[f"{name}.weight"], w[f"{name}.scales"], w[f"{name}.biases"],
                                    transpose=True, group_size=q["group_size"], bits=q["bits"])
        for pair in self.lora.get(name, ()):
            y = y + pair.scale * ((x @ pair.a.T) @ pair.b.T)
        return y

    def _embed(self, ids: mx.array) -> mx.array:
        mx, w, name = self.mx, self.w, self.embed_name
        q = self.quant.get(name)
        if q is None:
            rows = w[f"{name}.weight"][ids].astype(mx.float32)
        else:
            # float32 scales: dequantising with float16 ones would round d*q to float16
            scales = w[f"{name}.scales"][ids].astype(mx.float32)
            biases = w[f"{name}.biases"][ids].astype(mx.float32)
            rows = mx.dequantize(w[f"{name}.weight"][ids], scales, biases, group_size=q["group_size"], bits=q["bits"])
        for pair in self.lora.get(name, ()):  # token_embd's pair is stored flipped: rows of A
            rows = rows + pair.scale * (pair.a[ids] @ pair.b.T)
        return rows

    def _rope(self, x: mx.array, offset: int) -> mx.array:
        return self.mx.fast.rope(x, self.rope_dims, traditional=True, base=self.rope_base,
                                 scale=self.rope_scale, offset=offset, freqs=self.rope_freqs)

    def _store(self, cache: _Cache, layer: int, k: mx.array, v: mx.array) -> tuple[mx.array, mx.array]:
        mx = self.mx
        end = cache.offset + k.shape[2]
        if len(cache.keys) <= layer or cache.keys[layer].shape[2] < end:
            cap = min(self.max_ctx, -(-end // _KV_STEP) * _KV_STEP)
            shape = (1, self.n_kv, cap, self.head_dim)
            new_k, new_v = mx.zeros(shape, k.dtype), mx.zeros(shape, v.dtype)
            if len(cache.keys) > layer and cache.offset:
                new_k[..., :cache.offset, :] = cache.keys[layer][..., :cache.offset, :]
                new_v[..., :cache.offset, :] = cache.values[layer][..., :cache.offset, :]
            if len(cache.keys) > layer:
                cache.keys[layer], cache.values[layer] = new_k, new_v
            else:
                cache.keys.append(new_k)
                cache.values.append(new_v)
        cache.keys[layer][..., cache.offset:end, :] = k
        cache.values[layer][..., cache.offset:end, :] = v
        return cache.keys[layer][..., :end, :], cache.values[layer][..., :end, :]

    def forward(self, segments: Sequence[tuple[_Cache, Sequence[int]]], want: Sequence[int] = (),
                *, hidden: bool = False) -> mx.array | None:
        """Feed each segment's tokens after its cache. Return the final-norm hidden state of every
        token (``hidden``), or the logits after the last token of the segments listed in ``want``
        (len(want), vocab), or None when no segment wants them."""
        mx, w = self.mx, self.w
        ids = mx.array([t for _c, toks in segments for t in toks], dtype=mx.uint32)
        h = self._embed(ids)[None]
        for i in range(self.n_layer):
            p = f"model.layers.{i}"
            x = mx.fast.rms_norm(h, w[f"{p}.input_layernorm.weight"], self.eps)
            q = self._linear(x, f"{p}.self_attn.q_proj")
            k = self._linear(x, f"{p}.self_attn.k_proj")
            v = self._linear(x, f"{p}.self_attn.v_proj")
            outs, pos = [], 0
            for cache, toks in segments:  # attention is per sequence: each has its own past
                n = len(toks)
                qs = q[:, pos:pos + n].reshape(1, n, self.n_head, self.head_dim).transpose(0, 2, 1, 3)
                ks = k[:, pos:pos + n].reshape(1, n, self.n_kv, self.head_dim).transpose(0, 2, 1, 3)
                vs = v[:, pos:pos + n].reshape(1, n, self.n_kv, self.head_dim).transpose(0, 2, 1, 3)
                qs, ks = self._rope(qs, cache.offset), self._rope(ks, cache.offset)
                keys, values = self._store(cache, i, ks, vs)
                o = mx.fast.scaled_dot_product_attention(qs, keys, values, scale=self.scale,
                                                         mask="causal" if n > 1 else None)
                outs.append(o.transpose(0, 2, 1, 3).reshape(1, n, -1))
                pos += n
            h = h + self._linear(mx.concatenate(outs, axis=1) if len(outs) > 1 else outs[0],
                                 f"{p}.self_attn.o_proj")
            x = mx.fast.rms_norm(h, w[f"{p}.post_attention_layernorm.weight"], self.eps)
            gate = self._linear(x, f"{p}.mlp.gate_proj")
            h = h + self._linear(gate * mx.sigmoid(gate) * self._linear(x, f"{p}.mlp.up_proj"),
                                 f"{p}.mlp.down_proj")
        for cache, toks in segments:
            cache.offset += len(toks)
        if hidden:
            return mx.fast.rms_norm(h[0], w["model.norm.weight"], self.eps)
        if not want:
            return None
        last = (np.cumsum([len(toks) for _c, toks in segments]) - 1)[list(want)]
        out = mx.fast.rms_norm(h[0, mx.array(last)], w["model.norm.weight"], self.eps)
        return self._linear(out, self.head_name)


# ---------------------------------------------------------------------------------------------
# The Runner
# ---------------------------------------------------------------------------------------------


def _lora_by_module(pairs: dict[str, list[LoraPair]], tied: bool) -> dict[str, list[LoraPair]]:
    """LoRA pairs keyed by the module names ``_Llama`` uses instead of GGUF tensor names."""
    if tied and EMBEDDINGS in pairs:
        # llama.cpp would also apply token_embd's flipped pair to the shared output matrix, where
        # its shapes do not fit, and abort.
        raise BadRequest("this LoRA adapts token_embd of a model whose output shares it; neither "
                         "llama.cpp nor the MLX engine can run that")
    out: dict[str, list[LoraPair]] = {}
    for name, found in pairs.items():
        hf = _hf_name(name)
        if hf is None:
            raise BadRequest(f"the MLX engine cannot apply a LoRA to {name!r}")
        out[hf.rsplit(".", 1)[0]] = found
    return out


class MLXRunner:
    """One loaded GGUF model on an MLX device; every method is called from one owner thread."""

    def __init__(self, spec: LoadSpec, *, device: str = "gpu", cache_root: Path | None = None) -> None:
        import mlx.core as mx

        self.mx = mx
        self.device = mx.gpu if device == "gpu" else mx.cpu
        path = Path(spec.model_path)
        summary = validate_gguf(path)
        meta, tensors = read_header(path)
        self.tokenizer = GGUFTokenizer(meta)
        self.folder = ensure_mlx_folder(path, cache_root)
        config = json.loads((self.folder / "config.json").read_text())
        n_ctx_train = int(config.get("max_position_embeddings") or 0)
        self.n_ctx = min(spec.num_ctx, n_ctx_train) if n_ctx_train > 0 else spec.num_ctx
        # Caches grow on demand, so like llama.cpp's unified KV pool one sequence may use more than
        # its share; the worker keeps the sum within n_ctx * num_parallel.
        self.max_tokens = self.n_ctx * spec.num_parallel
        self.n_batch = max(32, spec.num_batch)
        with mx.stream(self.device):
            weights = mx.load(str(self.folder / "model.safetensors"))
            mx.eval(weights)
        lora = _lora_by_module(load_adapters(spec.adapters, tensors, "llama"), config["tie_word_embeddings"])
        self.model = _Llama(weights, config, self.max_tokens, lora)
        tok = self.tokenizer
        n_bytes = sum(int(a.nbytes) for a in weights.values())
        n_bytes += sum(int(p.a.nbytes + p.b.nbytes) for pairs in lora.values() for p in pairs)
        self.info = ModelInfo(
            architecture="llama",
            n_ctx_train=n_ctx_train,
            n_ctx=self.n_ctx,
            n_vocab=len(tok.tokens),
            n_embd=int(config["hidden_size"]),
            num_parallel=spec.num_parallel,
            bos_token=tok.bos,
            add_bos=tok.add_bos,
            bos_text=tok.tokens[tok.bos] if tok.bos is not None else "",
            eos_text=tok.tokens[tok.eos] if tok.eos is not None else "",
            chat_template=summary.chat_template,
            size_bytes=sum(t.n_bytes for t in tensors),
            size_on_device=n_bytes if device == "gpu" else 0,
        )
        self._caches: dict[int, _Cache] = {}
        self._samplers: dict[int, Sampler] = {}
        self._grammar_vocab = GrammarVocabulary(path)  # the GGUF itself, read by llama.cpp on the first grammar

    # ---- text ------------------------------------------------------------------------------
    def tokenize(self, text: str, *, special: bool = True, add_bos: bool = False) -> list[int]:
        return self.tokenizer.encode(text, special=special, add_special=add_bos)

    def token_bytes(self, token: int) -> bytes:
        return self.tokenizer.token_bytes(token)

    def is_end_of_generation(self, token: int) -> bool:
        return token in self.tokenizer.eog

    # ---- sampling ------------------------------------------------------------------------------
    def set_sampling(self, seq: int, sampling: Sampling) -> None:
        old = self._samplers.pop(seq, None)
        if old:
            old.close()
        grammar = self._grammar_vocab.grammar(sampling.grammar) if sampling.grammar else None
        self._samplers[seq] = Sampler(sampling, grammar)

    # ---- decoding ------------------------------------------------------------------------------
    def cached(self, seq: int) -> int:
        cache = self._caches.get(seq)
        return cache.offset if cache else 0

    def step(self, batch: Sequence[SequenceStep]) -> dict[int, int]:
        """Every listed sequence's new tokens go through the model together, ``n_batch`` tokens per
        sequence per forward pass; a sequence is sampled after the pass holding its last token."""
        mx = self.mx
        work = [(item, list(item.tokens)) for item in batch if len(item.tokens)]
        for item, toks in work:
            if self.cached(item.seq) + len(toks) > self.max_tokens:
                raise CorralError(f"the context is full: {self.cached(item.seq)} + {len(toks)} tokens "
                                  f"exceed the {self.max_tokens} of the KV pool (raise num_ctx)")
        results: dict[int, int] = {}
        offset = 0
        with mx.stream(self.device):
            while work:
                chunk = [(item, toks[offset:offset + self.n_batch]) for item, toks in work]
                segments = [(self._caches.setdefault(item.seq, _Cache()), part) for item, part in chunk]
                offset += self.n_batch
                finishing = [i for i, (_item, toks) in enumerate(work) if len(toks) <= offset]
                wanted = [i for i in finishing if work[i][0].sample]
                logits = self.model.forward(segments, wanted)
                self._sample(logits, [work[i][0].seq for i in wanted], results)
                work = [w for i, w in enumerate(work) if i not in finishing]
        return results

    def _sample(self, logits: mx.array | None, seqs: list[int], results: dict[int, int]) -> None:
        mx = self.mx
        # evaluating the caches too keeps each step's graph from chaining onto the next one
        state = [c for cache in self._caches.values() for c in (*cache.keys, *cache.values)]
        if logits is None:
            mx.eval(state)
            return
        greedy = mx.argmax(logits, axis=-1)
        mx.eval(greedy, logits, state)
        tokens = greedy.tolist()
        for i, seq in enumerate(seqs):
            sampler = self._samplers.get(seq)
            if sampler is None or sampler.plain_greedy:  # argmax on the device beats copying the vocabulary out
                results[seq] = int(tokens[i])
            else:
                results[seq] = sampler.pick(np.array(logits[i]))

    def truncate(self, seq: int, keep: int) -> int:
        cache = self._caches.get(seq)
        if cache is None:
            return 0
        cache.offset = max(0, min(keep, cache.offset))  # stale entries past offset are overwritten
        if cache.offset == 0:
            self._caches.pop(seq)  # frees the memory of a finished sequence
        return cache.offset

    # ---- embeddings ----------------------------------------------------------------------------
    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        mx = self.mx
        out: list[list[float]] = []
        with mx.stream(self.device):
            for text in texts:
                tokens = self.tokenize(text, add_bos=self.info.add_bos) or [self.info.bos_token or 0]
                if len(tokens) > self.n_ctx:
                    raise BadRequest(f"input is {len(tokens)} tokens, more than the context of {self.n_ctx}")
                hidden = self.model.forward([(_Cache(), tokens)], hidden=True)
                out.append(np.array(hidden.mean(axis=0)).astype(float).tolist())
        return out

    def close(self) -> None:
        self._caches.clear()
        for sampler in self._samplers.values():
            sampler.close()
        self._samplers.clear()
        self._grammar_vocab.close()
        self.model = None  # type: ignore[assignment]
        self.mx.clear_cache()
