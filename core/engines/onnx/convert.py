"""GGUF -> an ONNX model folder in onnxruntime-genai's layout (genai_config.json + model.onnx + tokenizer).

Two stages, so that only the second needs torch:

1. ``gguf_to_hf`` writes a Hugging Face-style folder without torch: ``config.json`` from the GGUF
   metadata, ``model.safetensors`` with every tensor dequantised to float32 by ``gguf``'s numpy
   dequantisers (and llama.cpp's Q/K row permutation undone), and ``tokenizer.json`` /
   ``tokenizer_config.json`` rebuilt from the GGUF vocabulary by transformers' GGUF tokenizer builders
   (``transformers.integrations.gguf``, which need ``tokenizers`` but not torch).
2. ``build_onnx`` runs ``onnxruntime_genai.models.builder`` on that folder in a child process. The
   builder imports torch and transformers: they come with the optional extra ``corral[onnx-convert]``.

``convert`` chains both into a cached folder. Beside the genai files it writes ``vocab.gguf`` (the
source's metadata, no tensors), which lets the ONNX engine apply llama.cpp's GBNF grammars (Ollama's
``format``) with exactly the CPU backend's token semantics, and ``corral-onnx.json`` (provenance).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from corral.errors import BadRequest, CorralError, InvalidModelFile
from corral.formats.gguf import read_metadata
from corral.formats.hfnames import LLAMA_LAYER_NAMES as _LAYER_NAMES
from corral.formats.hfnames import LLAMA_TOP_NAMES as _TOP_NAMES

CONVERTER_VERSION = 1
# What onnxruntime-genai's builder accepts per execution provider.
PRECISIONS = {"cpu": ("int4", "int8", "fp32"), "cuda": ("int4", "int8", "fp16", "bf16", "fp32")}
FLOAT_FILE_TYPES = {0, 1, 32}  # gguf LlamaFileType ALL_F32, MOSTLY_F16, MOSTLY_BF16
PROVENANCE = "corral-onnx.json"
VOCAB_GGUF = "vocab.gguf"

# GGUF architecture -> (HF model_type, HF architecture class, whether llama.cpp permuted Q/K rows).
# Only what the tests cover; qwen2 (Q/K/V biases, no permutation) and others are a row each away.
_ARCHITECTURES: dict[str, tuple[str, str, bool]] = {
    "llama": ("llama", "LlamaForCausalLM", True),
}
# llama.cpp pre-tokenizers that split every digit on its own before the GPT-2 regex (llama-vocab.cpp)
_DIGIT_SPLIT_PRE = {"smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva-7b"}


@dataclass(frozen=True)
class Converted:
    path: Path  # the genai folder
    precision: str
    seconds: float  # 0.0 when it came from the cache


# ---- stage 1: GGUF -> Hugging Face folder (no torch) ----------------------------------------------


def gguf_to_hf(gguf_path: Path, out: Path) -> Path:
    """Write config.json, model.safetensors and the tokenizer files for ``gguf_path`` into ``out``."""
    meta = read_metadata(gguf_path)
    arch = _architecture(meta)
    out.mkdir(parents=True, exist_ok=True)
    config = _hf_config(meta, arch, gguf_path)
    tensors = _hf_tensors(gguf_path, arch, config)
    config["tie_word_embeddings"] = "lm_head.weight" not in tensors
    config["attention_bias"] = "model.layers.0.self_attn.q_proj.bias" in tensors
    config["mlp_bias"] = "model.layers.0.mlp.up_proj.bias" in tensors
    (out / "config.json").write_text(json.dumps(config, indent=2))
    (out / "generation_config.json").write_text(
        json.dumps({k: config[k] for k in ("bos_token_id", "eos_token_id") if config.get(k) is not None})
    )
    from safetensors.numpy import save_file

    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    _write_tokenizer(meta, out)
    return out


def _architecture(meta: dict[str, Any]) -> str:
    arch = str(meta.get("general.architecture", ""))
    if arch not in _ARCHITECTURES:
        raise BadRequest(
            f"cannot convert a {arch or 'unknown'!r} GGUF to ONNX (supported: {', '.join(sorted(_ARCHITECTURES))})"
        )
    return arch


def _hf_config(meta: dict[str, Any], arch: str, path: Path) -> dict[str, Any]:
    model_type, hf_class, _permuted = _ARCHITECTURES[arch]

    def key(name: str, default: Any = None) -> Any:
        return meta.get(f"{arch}.{name}", default)

    n_embd, n_head = int(key("embedding_length")), int(key("attention.head_count"))
    head_dim = int(key("attention.key_length", n_embd // n_head))
    scaling = key("rope.scaling.type")
    if scaling not in (None, "none"):
        raise BadRequest(f"{path.name}: rope scaling {scaling!r} is not supported by the ONNX converter yet")
    tokens = meta.get("tokenizer.ggml.tokens") or []
    eos = meta.get("tokenizer.ggml.eos_token_id")
    return {
        "architectures": [hf_class],
        "model_type": model_type,
        "hidden_size": n_embd,
        "intermediate_size": int(key("feed_forward_length")),
        "num_hidden_layers": int(key("block_count")),
        "num_attention_heads": n_head,
        "num_key_value_heads": int(key("attention.head_count_kv", n_head)),
        "head_dim": head_dim,
        "rms_norm_eps": float(key("attention.layer_norm_rms_epsilon", 1e-6)),
        "rope_theta": float(key("rope.freq_base", 10000.0)),
        "max_position_embeddings": int(key("context_length", 2048)),
        "vocab_size": int(key("vocab_size", len(tokens))),
        "hidden_act": "silu",
        "bos_token_id": meta.get("tokenizer.ggml.bos_token_id"),
        "eos_token_id": eos,
        "pad_token_id": meta.get("tokenizer.ggml.padding_token_id"),
        "torch_dtype": "float32",
    }


def _hf_tensors(path: Path, arch: str, config: dict[str, Any]) -> dict[str, np.ndarray]:
    from gguf import GGUFReader
    from gguf.quants import dequantize

    permuted = _ARCHITECTURES[arch][2]
    n_head, n_kv = config["num_attention_heads"], config["num_key_value_heads"]
    out: dict[str, np.ndarray] = {}
    for tensor in GGUFReader(str(path)).tensors:
        name = _hf_name(tensor.name)
        shape = tuple(int(d) for d in reversed(tensor.shape.tolist()))
        data = dequantize(np.asarray(tensor.data), tensor.tensor_type).astype(np.float32).reshape(shape)
        if permuted and name.endswith("self_attn.q_proj.weight"):
            data = _unpermute(data, n_head)
        elif permuted and name.endswith("self_attn.k_proj.weight"):
            data = _unpermute(data, n_kv)
        out[name] = np.ascontiguousarray(data)
    if "model.embed_tokens.weight" not in out:
        raise InvalidModelFile(f"{path.name}: no token_embd.weight tensor")
    return out


def _hf_name(name: str) -> str:
    stem, _, kind = name.rpartition(".")  # kind: weight | bias
    if stem in _TOP_NAMES:
        return f"{_TOP_NAMES[stem]}.{kind}"
    parts = stem.split(".")
    if len(parts) == 3 and parts[0] == "blk" and parts[2] in _LAYER_NAMES:
        return f"model.layers.{parts[1]}.{_LAYER_NAMES[parts[2]]}.{kind}"
    if stem == "rope_freqs":  # Llama 3.1-style scaled rotary frequencies, which config.json cannot carry yet
        raise BadRequest("the ONNX converter does not support rope_freqs (Llama 3.1-style rope scaling) yet")
    raise BadRequest(f"the ONNX converter does not know the GGUF tensor {name!r}")


def _unpermute(weights: np.ndarray, n_head: int) -> np.ndarray:
    """Undo convert_hf_to_gguf's interleaving of rotary halves (llama.cpp's rope is not NeoX-style)."""
    rows = weights.shape[0]
    return weights.reshape(n_head, rows // n_head // 2, 2, *weights.shape[1:]).swapaxes(1, 2).reshape(weights.shape)


def _write_tokenizer(meta: dict[str, Any], out: Path) -> None:
    """tokenizer.json + tokenizer_config.json, built by transformers' GGUF tokenizer builders (no torch)."""
    from tokenizers import pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    from transformers.integrations.gguf.gguf_tokenizer_mapping import GGUF_TOKENIZER_MAPPING, convert_gguf_tokenizer

    renames = GGUF_TOKENIZER_MAPPING["tokenizer"]
    spec = {name: meta[f"tokenizer.{key}"] for key, name in renames.items() if f"tokenizer.{key}" in meta}
    backend, _ = convert_gguf_tokenizer(str(meta["general.architecture"]), spec)
    if spec.get("pre_tokenizer_type") in _DIGIT_SPLIT_PRE:
        # Spelled as the models' own tokenizer.json spell it: onnxruntime-extensions reads a
        # Split(\p{N}) step as the whole pattern and then loses GPT-2's "\s+(?!\S)" (double spaces).
        backend.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Digits(individual_digits=True),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
            ]
        )
    backend.post_processor = None  # BOS is the runner's to add: it knows llama.cpp's add_bos
    tokens: list[str] = spec["tokens"]

    def text(key: str) -> str | None:
        index = meta.get(f"tokenizer.ggml.{key}")
        return tokens[index] if isinstance(index, int) and 0 <= index < len(tokens) else None

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=text("bos_token_id"),
        eos_token=text("eos_token_id"),
        unk_token=text("unknown_token_id"),
        pad_token=text("padding_token_id"),
        chat_template=meta.get("tokenizer.chat_template"),
        model_max_length=int(meta.get(f"{meta['general.architecture']}.context_length", 2048)),
        clean_up_tokenization_spaces=False,
    )
    tokenizer.save_pretrained(str(out))
    cfg_path = out / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.update(add_bos_token=False, add_eos_token=False)
    cfg_path.write_text(json.dumps(cfg, indent=2, ensure_ascii=False))


def write_vocab_gguf(gguf_path: Path, out: Path) -> Path:
    """The source GGUF's metadata without tensors: enough for llama.cpp's vocab_only load (grammars)
    and for ``corral show``."""
    import gguf

    reader = gguf.GGUFReader(str(gguf_path))
    meta = read_metadata(gguf_path)
    writer = gguf.GGUFWriter(str(out), str(meta["general.architecture"]))
    if "general.parameter_count" not in reader.fields:  # the source's tensors count; this file has none
        writer.add_uint64("general.parameter_count", int(meta["general.parameter_count"]))
    for field in reader.fields.values():
        if field.name.startswith("GGUF.") or field.name == "general.architecture":
            continue
        value = field.contents()
        vtype = field.types[0]
        sub = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, value, vtype, sub_type=sub)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.close()
    return out


# ---- stage 2: Hugging Face folder -> onnxruntime-genai folder (torch, in a child process) ----------


def build_onnx(hf_dir: Path, out: Path, precision: str, provider: str = "cpu", timeout: float = 3600) -> Path:
    """Run onnxruntime-genai's model builder; raise CorralError with its last lines when it fails."""
    _check_converter()
    cache = out.parent / f".{out.name}.builder-cache"
    cmd = [
        sys.executable, "-m", "onnxruntime_genai.models.builder",
        "-i", str(hf_dir), "-o", str(out), "-p", precision, "-e", provider, "-c", str(cache),
        "--extra_options", "include_hidden_states=true", "hf_token=false",
    ]  # fmt: skip
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    if done.returncode != 0 or not (out / "genai_config.json").is_file():
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-8:])
        raise CorralError(f"onnxruntime-genai's model builder failed (exit {done.returncode}):\n{tail}")
    return out


def _has(module: str) -> bool:
    from importlib.util import find_spec

    return find_spec(module) is not None


def _check_converter() -> None:
    missing = [m for m in ("torch", "onnx", "onnx_ir", "onnxruntime_genai", "transformers") if not _has(m)]
    if missing:
        raise BadRequest(
            f"converting to ONNX needs {', '.join(missing)}: pip install 'corral[onnx-convert]'"
            " (torch: the CPU build is enough)"
        )


def check_convertible(gguf_path: Path, precision: str | None, provider: str = "cpu") -> str:
    """Everything ``convert`` would refuse, checked before any work; returns the precision to use."""
    _check_converter()
    _architecture(read_metadata(gguf_path))
    precision = (precision or default_precision(gguf_path)).lower()
    allowed = PRECISIONS.get(provider, ())
    if precision not in allowed:
        raise BadRequest(
            f"ONNX precision {precision!r} is not available for {provider!r} (choose from {', '.join(allowed)})"
        )
    return precision


# ---- both stages, cached ------------------------------------------------------------------------------


def default_precision(gguf_path: Path) -> str:
    """fp32 for a float GGUF (nothing to lose); int8 for an already-quantised one (close to its weights)."""
    file_type = read_metadata(gguf_path).get("general.file_type")
    return "fp32" if file_type in FLOAT_FILE_TYPES else "int8"


def content_id(gguf_path: Path) -> str:
    """The file's sha256: taken from a store blob's name (``sha256-<hex>``), else computed."""
    name = gguf_path.name
    if re.fullmatch(r"sha256-[0-9a-f]{64}", name):
        return name[len("sha256-") :]
    digest = hashlib.sha256()
    with open(gguf_path, "rb") as fh:
        while chunk := fh.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def convert(
    gguf_path: Path,
    cache_dir: Path,
    precision: str | None = None,
    provider: str = "cpu",
) -> Converted:
    """The genai folder for ``gguf_path`` under ``cache_dir``, converting it first if it is not there."""
    gguf_path = Path(gguf_path)
    precision = check_convertible(gguf_path, precision, provider)
    source_id = content_id(gguf_path)
    final = Path(cache_dir) / f"{source_id[:24]}-{precision}-{provider}-v{CONVERTER_VERSION}"
    if (final / PROVENANCE).is_file():
        return Converted(final, precision, 0.0)
    final.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=final.parent, prefix=".convert-") as tmp:
        work = Path(tmp)
        hf = gguf_to_hf(gguf_path, work / "hf")
        onnx_dir = build_onnx(hf, work / "onnx", precision, provider)
        write_vocab_gguf(gguf_path, onnx_dir / VOCAB_GGUF)
        meta = read_metadata(gguf_path)
        provenance = {
            "converter_version": CONVERTER_VERSION,
            "source": gguf_path.name,
            "source_sha256": source_id,
            "source_size": gguf_path.stat().st_size,
            "source_file_type": meta.get("general.file_type"),
            "precision": precision,
            "execution_provider": provider,
            "add_bos": bool(meta.get("tokenizer.ggml.add_bos_token", meta.get("tokenizer.ggml.model") == "llama")),
        }
        (onnx_dir / PROVENANCE).write_text(json.dumps(provenance, indent=2))
        try:
            os.replace(onnx_dir, final)
        except OSError:
            if not (final / PROVENANCE).is_file():  # another process won the race: theirs is as good
                raise
    return Converted(final, precision, time.perf_counter() - t0)
