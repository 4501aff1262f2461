"""Check a GGUF file before llama.cpp ever loads it.

llama.cpp handles most broken files by failing the load, but some defects make it *abort the whole
process*, which would take a server down with it: duplicate token strings
(``GGML_ASSERT(id_to_token.size() == token_to_id.size())``), an spm vocabulary lacking a ``<0xXX>``
byte token that tokenising needs (an uncaught ``std::out_of_range``), a block count outside 1..512,
an unknown rope scaling type, inconsistent expert counts. ``validate_gguf`` reads the header and
metadata -- never the tensor data -- and raises ``InvalidModelFile`` with a one-line message for
every defect it knows, and otherwise returns a ``GGUFSummary``.

The header is parsed here with ``struct`` over an ``mmap`` rather than with ``gguf.GGUFReader``:
the reader builds a numpy view per string, which takes ~2.2 s for SmolLM2-135M's 49k tokens and
49k merges (and several times that for a 262k vocabulary); this parser takes a few tens of ms.
The ``gguf`` package still supplies the type tables (quantisation block sizes, file-type names).

The rules mirror llama.cpp as vendored in llama-cpp-python 0.3.36 (``ggml/src/gguf.cpp``,
``src/llama-model.cpp`` and ``src/llama-vocab.cpp``).
"""

from __future__ import annotations

import functools
import mmap
import struct
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf

from corral.errors import InvalidModelFile

# Values of tokenizer.ggml.pre that llama.cpp's llama_vocab::impl::load accepts for BPE vocabularies,
# copied from src/llama-vocab.cpp of the llama.cpp vendored in the llama-cpp-python 0.3.36 sdist
# (vendor/llama.cpp, commit 0c1e570). Any other non-empty value makes the load fail with
# "unknown pre-tokenizer type". An empty or missing value falls back to "default" with a warning.
KNOWN_PRE_TOKENIZERS: frozenset[str] = frozenset({
    "default", "minicpm5", "llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral",
    "midm-2.0", "lfm2", "jina-v5-nano", "deepseek-llm", "deepseek-coder", "deepseek-v3",
    "spark2_5", "youtu", "falcon", "mpt", "starcoder", "gpt-2", "phi-2", "jina-es", "jina-de",
    "gigachat", "jina-v2-es", "jina-v2-de", "a.x-4.0", "mellum", "modern-bert", "jais-2",
    "gemma4", "granite-embed-multi-311m", "sarvam-moe", "jina-v1-en", "jina-v2-code",
    "roberta-bpe", "whitespace", "refact", "command-r", "qwen2", "deepseek-r1-qwen", "kormo",
    "f2llmv2", "qwen35", "stablelm2", "olmo", "dbrx", "smaug-bpe", "poro-chat", "chatglm-bpe",
    "glm4", "glm5", "viking", "jais", "tekken", "smollm", "codeshell", "bloom", "gpt3-finnish",
    "exaone", "exaone4", "exaone-moe", "chameleon", "minerva-7b", "megrez", "gpt-4o", "llama4",
    "kanana2", "talkie", "granite-embed-multi-97m", "tiny_aya", "cohere2moe", "superbpe",
    "trillion", "granite-docling", "bailingmoe", "bailingmoe2", "llada-moe", "seed-coder",
    "hunyuan", "hunyuan-dense", "hy_v4", "joyai-llm", "kimi-k2", "ufakzeka", "grok-2", "afmoe",
    "laguna", "minimax-m2", "solar-open", "mellum2",
})

# Values of tokenizer.ggml.model that the same llama.cpp knows.
KNOWN_TOKENIZER_MODELS: frozenset[str] = frozenset({
    "no_vocab", "none", "llama", "bert", "gpt2", "hybriddna", "whitespace", "t5", "rwkv", "test",
    "plamo2", "gemma4",
})
_BPE_MODELS = frozenset({"gpt2", "hybriddna", "whitespace"})  # these read tokenizer.ggml.pre
_NEEDS_MERGES = _BPE_MODELS | {"gemma4"}

# Limits from the same llama.cpp (src/llama-hparams.h, src/llama-model.cpp): values outside them
# fail a GGML_ASSERT in llama_model_base::load_hparams, which aborts the process.
LLAMA_MAX_LAYERS = 512
LLAMA_MAX_EXPERTS = 1024
ROPE_SCALING_TYPES = frozenset({"none", "linear", "yarn", "longrope"})

_GGUF_MAGIC = b"GGUF"
_DEFAULT_ALIGNMENT = 32
_MAX_DIMS = 4
_MAX_NAME = 64  # GGML_MAX_NAME

# gguf value types -> struct format of one scalar
_T_UINT8, _T_INT8, _T_UINT16, _T_INT16, _T_UINT32, _T_INT32, _T_FLOAT32, _T_BOOL, _T_STRING, \
    _T_ARRAY, _T_UINT64, _T_INT64, _T_FLOAT64 = range(13)
_SCALAR_FMT = {
    _T_UINT8: "<B", _T_INT8: "<b", _T_UINT16: "<H", _T_INT16: "<h", _T_UINT32: "<I",
    _T_INT32: "<i", _T_FLOAT32: "<f", _T_BOOL: "<?", _T_UINT64: "<Q", _T_INT64: "<q",
    _T_FLOAT64: "<d",
}
_SCALAR_SIZE = {t: struct.calcsize(f) for t, f in _SCALAR_FMT.items()}
_INT_TYPES = {_T_UINT8, _T_INT8, _T_UINT16, _T_INT16, _T_UINT32, _T_INT32, _T_UINT64, _T_INT64}

_REPULL = "the file is damaged or incomplete; download it again"
_RECONVERT = "re-convert the model with a current llama.cpp convert_hf_to_gguf.py"


@dataclass(frozen=True)
class GGUFSummary:
    """What a valid GGUF says about itself (metadata only)."""

    architecture: str
    name: str | None
    context_length: int | None
    embedding_length: int | None
    block_count: int | None
    head_count: int | None
    parameter_count: int
    file_type: str  # quantisation name, e.g. "Q4_1", "Q4_K_M", "F16", "F32"
    chat_template: str | None
    size_bytes: int
    tokenizer_model: str | None = None
    vocab_size: int = 0
    tensor_count: int = 0
    gguf_version: int = 3

    @property
    def quantization(self) -> str:
        return self.file_type


class _Corrupt(Exception):
    """Raised inside the parser; turned into InvalidModelFile with the file name."""


@dataclass
class _Array:
    """A metadata array; strings as bytes, numbers as a Python list."""

    elem_type: int
    items: list[Any]


class _Parser:
    def __init__(self, buf: mmap.mmap | bytes, size: int) -> None:
        self.buf = buf
        self.size = size
        self.pos = 0

    def _need(self, n: int, what: str) -> None:
        if n < 0 or self.pos + n > self.size:
            raise _Corrupt(f"unexpected end of file while reading {what} at byte {self.pos}")

    def scalar(self, vtype: int, what: str) -> Any:
        n = _SCALAR_SIZE[vtype]
        self._need(n, what)
        (v,) = struct.unpack_from(_SCALAR_FMT[vtype], self.buf, self.pos)
        self.pos += n
        return v

    def u32(self, what: str) -> int:
        return self.scalar(_T_UINT32, what)

    def u64(self, what: str) -> int:
        return self.scalar(_T_UINT64, what)

    def raw_string(self, what: str) -> bytes:
        n = self.u64(what)
        self._need(n, what)
        s = self.buf[self.pos:self.pos + n]
        self.pos += n
        return bytes(s)

    def string(self, what: str) -> str:
        # llama.cpp does not insist on UTF-8, so neither do we
        return self.raw_string(what).decode("utf-8", "replace")

    def string_array(self, count: int, what: str) -> list[bytes]:
        buf, pos, size = self.buf, self.pos, self.size
        unpack = struct.Struct("<Q").unpack_from
        out: list[bytes] = []
        append = out.append
        for _ in range(count):
            if pos + 8 > size:
                self.pos = pos
                raise _Corrupt(f"unexpected end of file while reading {what} at byte {pos}")
            (n,) = unpack(buf, pos)
            pos += 8
            if pos + n > size:
                self.pos = pos
                raise _Corrupt(f"unexpected end of file while reading {what} at byte {pos}")
            append(buf[pos:pos + n])
            pos += n
        self.pos = pos
        return out

    def value(self, vtype: int, what: str) -> Any:
        if vtype in _SCALAR_FMT:
            return self.scalar(vtype, what)
        if vtype == _T_STRING:
            return self.string(what)
        if vtype == _T_ARRAY:
            etype = self.u32(what)
            count = self.u64(what)
            # every element takes at least one byte: a bigger count is a corrupt header
            if count > self.size - self.pos:
                raise _Corrupt(f"{what}: array of {count} elements does not fit in the file")
            if etype == _T_STRING:
                return _Array(etype, self.string_array(count, what))
            if etype in _SCALAR_FMT:
                n = _SCALAR_SIZE[etype] * count
                self._need(n, what)
                items = list(struct.unpack_from(f"<{count}{_SCALAR_FMT[etype][1]}", self.buf, self.pos))
                self.pos += n
                return _Array(etype, items)
            if etype == _T_ARRAY:
                raise _Corrupt(f"{what}: nested arrays, which llama.cpp does not accept")
            raise _Corrupt(f"{what}: unknown array element type {etype}")
        raise _Corrupt(f"{what}: unknown value type {vtype}")


@dataclass
class _Tensor:
    name: str
    shape: tuple[int, ...]
    ggml_type: int
    offset: int
    n_elements: int
    n_bytes: int


def _fail(path: Path, message: str) -> InvalidModelFile:
    return InvalidModelFile(f"{path}: {message}")


_KV = dict[str, tuple[int, Any]]  # key -> (gguf value type, value)


def _parse(buf: mmap.mmap | bytes, size: int) -> tuple[int, _KV, list[_Tensor], int]:
    p = _Parser(buf, size)
    p._need(4, "the magic number")
    magic = bytes(buf[0:4])
    if magic != _GGUF_MAGIC:
        raise _Corrupt(f"bad magic {magic!r}, expected b'GGUF'")
    p.pos = 4
    version = p.u32("the version")
    if version not in (2, 3):
        hint = " (a big-endian file?)" if version & 0xFFFF == 0 else ""
        raise _Corrupt(f"unsupported GGUF version {version}{hint}")
    n_tensors = p.u64("the tensor count")
    n_kv = p.u64("the metadata count")
    if n_tensors > size // 24 or n_kv > size // 12:
        raise _Corrupt(f"header claims {n_tensors} tensors and {n_kv} metadata keys, "
                       "more than fit in the file")

    kv: _KV = {}
    for i in range(n_kv):
        key = p.string(f"metadata key {i}")
        if not key:
            raise _Corrupt(f"metadata key {i} is empty")
        vtype = p.u32(f"the type of {key!r}")
        if key in kv:
            raise _Corrupt(f"duplicate metadata key {key!r}")
        kv[key] = (vtype, p.value(vtype, repr(key)))

    alignment = _DEFAULT_ALIGNMENT
    if "general.alignment" in kv:
        atype, alignment = kv["general.alignment"]
        if atype != _T_UINT32 or alignment == 0 or alignment & (alignment - 1):
            raise _Corrupt(f"general.alignment {alignment!r} is not a power of two (uint32)")

    tensors: list[_Tensor] = []
    seen: set[str] = set()
    for i in range(n_tensors):
        name = p.string(f"the name of tensor {i}")
        if len(name.encode()) >= _MAX_NAME:
            raise _Corrupt(f"tensor name {name[:40]!r}... is longer than {_MAX_NAME - 1} bytes")
        if name in seen:
            raise _Corrupt(f"duplicate tensor name {name!r}")
        seen.add(name)
        n_dims = p.u32(f"the rank of tensor {name!r}")
        if n_dims > _MAX_DIMS:
            raise _Corrupt(f"tensor {name!r} has {n_dims} dimensions (at most {_MAX_DIMS})")
        shape = tuple(p.u64(f"the shape of tensor {name!r}") for _ in range(n_dims))
        ggml_type = p.u32(f"the type of tensor {name!r}")
        offset = p.u64(f"the offset of tensor {name!r}")
        try:
            qtype = gguf.GGMLQuantizationType(ggml_type)
            block, type_size = gguf.GGML_QUANT_SIZES[qtype]
        except (ValueError, KeyError):
            raise _Corrupt(f"tensor {name!r} has unknown type {ggml_type}") from None
        n_el = 1
        for d in shape:
            n_el *= d
        if n_el >= 2**63 or any(d >= 2**63 for d in shape):
            raise _Corrupt(f"tensor {name!r} has an impossible shape {shape}")
        if shape and shape[0] % block:
            raise _Corrupt(f"tensor {name!r} row of {shape[0]} is not a multiple of the "
                           f"{qtype.name} block size {block}")
        tensors.append(_Tensor(name, shape, ggml_type, offset, n_el, n_el // block * type_size))

    data_start = p.pos
    if n_tensors:
        data_start += (-data_start) % alignment
    return version, kv, tensors, data_start


def _check_tensors(path: Path, tensors: list[_Tensor], data_start: int, alignment: int, size: int) -> None:
    expected = 0
    for t in tensors:
        if t.offset != expected:
            raise _fail(path, f"tensor {t.name!r} starts at data offset {t.offset}, expected {expected}; "
                              f"{_REPULL} or re-convert it")
        expected = t.offset + t.n_bytes
        expected += (-expected) % alignment
        end = data_start + t.offset + t.n_bytes
        if end > size:
            raise _fail(path, f"truncated: tensor {t.name!r} needs bytes up to {end} but the file has "
                              f"only {size} bytes; {_REPULL}")


def _int(kv: _KV, key: str) -> int | None:
    if key not in kv:
        return None
    vtype, val = kv[key]
    if vtype in _INT_TYPES:
        return int(val)
    if isinstance(val, _Array) and val.elem_type in _INT_TYPES and val.items:
        return max(int(v) for v in val.items)  # per-layer values (e.g. head_count)
    return None


def _str(kv: _KV, key: str) -> str | None:
    if key not in kv:
        return None
    vtype, val = kv[key]
    return val if vtype == _T_STRING else None


def _check_hparams(path: Path, kv: _KV, arch: str) -> None:
    """The generic hyper-parameter asserts of llama_model_base::load_hparams (process-aborting)."""
    if arch == "clip":  # llama.cpp reads no hyper-parameters for it
        return
    key = f"{arch}.block_count"
    n_layer = _int(kv, key)
    if n_layer is None:
        raise _fail(path, f"{key} is missing or not an integer; {_RECONVERT}")
    if not 0 < n_layer <= LLAMA_MAX_LAYERS:
        raise _fail(path, f"{key} = {n_layer} is outside 1..{LLAMA_MAX_LAYERS}; llama.cpp would abort "
                          f"loading it; {_REPULL} or re-convert it")
    nextn = _int(kv, f"{arch}.nextn_predict_layers") or 0
    if nextn > n_layer:
        raise _fail(path, f"{arch}.nextn_predict_layers = {nextn} exceeds {key} = {n_layer}; {_RECONVERT}")

    n_expert = _int(kv, f"{arch}.expert_count") or 0
    used = _int(kv, f"{arch}.expert_used_count") or 0  # the largest per-layer value
    groups = _int(kv, f"{arch}.expert_group_count") or 0
    group_used = _int(kv, f"{arch}.expert_group_used_count") or 0
    if arch in ("hunyuan-dense", "hunyuan_vl") and n_expert <= 1:
        n_expert = used = 0
    problem = None
    if n_expert > LLAMA_MAX_EXPERTS:
        problem = f"expert_count = {n_expert} exceeds {LLAMA_MAX_EXPERTS}"
    elif used > n_expert:
        problem = f"expert_used_count = {used} exceeds expert_count = {n_expert}"
    elif n_expert > 0:
        if used == 0:
            problem = "expert_used_count is 0 for a mixture-of-experts model"
        elif groups >= n_expert:
            problem = f"expert_group_count = {groups} is not below expert_count = {n_expert}"
        elif groups > 1 and (n_expert % groups or not 0 < group_used < groups):
            problem = (f"expert groups do not fit: expert_count = {n_expert}, expert_group_count = "
                       f"{groups}, expert_group_used_count = {group_used}")
    elif groups:
        problem = f"expert_group_count = {groups} without experts"
    if problem:
        raise _fail(path, f"{arch}.{problem}; llama.cpp would abort loading it; {_RECONVERT}")

    key = f"{arch}.rope.scaling.type"
    if key in kv:
        scaling = _str(kv, key)
        if scaling not in ROPE_SCALING_TYPES:
            raise _fail(path, f"{key} = {kv[key][1]!r} is not one of {', '.join(sorted(ROPE_SCALING_TYPES))}; "
                              f"llama.cpp would abort loading it; {_RECONVERT}")


def _check_vocab(path: Path, kv: _KV) -> tuple[str | None, int]:
    """Apply llama.cpp's vocabulary rules; return (tokenizer model, vocab size)."""
    if "tokenizer.ggml.model" not in kv:
        raise _fail(path, f"no tokenizer (tokenizer.ggml.model is missing); {_RECONVERT}")
    model = _str(kv, "tokenizer.ggml.model")
    if model is None:
        raise _fail(path, "tokenizer.ggml.model is not a string; " + _RECONVERT)
    if model not in KNOWN_TOKENIZER_MODELS:
        raise _fail(path, f"unknown tokenizer type {model!r} for this engine (llama.cpp of "
                          f"llama-cpp-python 0.3.36); {_RECONVERT} or upgrade the engine")
    if model in ("no_vocab", "none"):
        return model, 0

    pre = _str(kv, "tokenizer.ggml.pre") or ""
    if model in _BPE_MODELS and pre and pre not in KNOWN_PRE_TOKENIZERS:
        raise _fail(path, f"unknown pre-tokenizer {pre!r} (tokenizer.ggml.pre) for this engine (llama.cpp "
                          f"of llama-cpp-python 0.3.36); use a GGUF converted for a known pre-tokenizer "
                          f"or upgrade the engine")

    if "tokenizer.ggml.tokens" not in kv:
        raise _fail(path, f"the vocabulary is missing (tokenizer.ggml.tokens); {_RECONVERT}")
    ttype, tokens = kv["tokenizer.ggml.tokens"]
    if not (isinstance(tokens, _Array) and tokens.elem_type == _T_STRING):
        raise _fail(path, f"tokenizer.ggml.tokens is not an array of strings; {_RECONVERT}")
    words: list[bytes] = tokens.items
    n = len(words)
    if n == 0:
        raise _fail(path, f"the vocabulary is empty (tokenizer.ggml.tokens); {_RECONVERT}")

    for key in ("tokenizer.ggml.token_type", "tokenizer.ggml.scores"):
        if key not in kv:
            continue
        _, arr = kv[key]
        allowed = {_T_INT32} if key.endswith("token_type") else {_T_INT32, _T_FLOAT32}
        if not (isinstance(arr, _Array) and arr.elem_type in allowed):
            raise _fail(path, f"{key} has the wrong type; {_RECONVERT}")
        if len(arr.items) < n:
            raise _fail(path, f"{key} has {len(arr.items)} entries for {n} tokens; {_RECONVERT}")

    # llama.cpp renames empty tokens before indexing them, then asserts every string is unique.
    if len(set(words)) != n:
        named = [w or f"[EMPTY_{i}]".encode() for i, w in enumerate(words)]
        if len(set(named)) != n:
            first: dict[bytes, int] = {}
            for i, w in enumerate(named):
                if w in first:
                    text = w.decode("utf-8", "replace")
                    raise _fail(path, f"duplicate token {text!r} in the vocabulary (ids {first[w]} and {i}); "
                                      f"llama.cpp would abort loading it; {_RECONVERT}")
                first[w] = i

    if model == "llama":
        present = set(words)
        missing = [b for b in range(256) if f"<0x{b:02X}>".encode() not in present]
        if missing:
            raise _fail(path, f"sentencepiece vocabulary lacks {len(missing)} of the 256 byte tokens "
                              f"(e.g. <0x{missing[0]:02X}>); llama.cpp would crash on text it cannot "
                              f"tokenise; {_RECONVERT}")

    if model in _NEEDS_MERGES and not (model != "gemma4" and pre == "kimi-k2"):
        if "tokenizer.ggml.merges" not in kv:
            raise _fail(path, f"BPE vocabulary ({model}) without merges (tokenizer.ggml.merges); {_RECONVERT}")
        _, merges = kv["tokenizer.ggml.merges"]
        if not (isinstance(merges, _Array) and merges.elem_type == _T_STRING):
            raise _fail(path, f"tokenizer.ggml.merges is not an array of strings; {_RECONVERT}")

    for key, what in (("tokenizer.ggml.bos_token_id", "BOS"), ("tokenizer.ggml.eos_token_id", "EOS")):
        if key in kv:
            tid = _int(kv, key)
            if tid is None or not 0 <= tid < n:
                raise _fail(path, f"{what} token id {kv[key][1]!r} ({key}) is outside the vocabulary of "
                                  f"{n} tokens; {_RECONVERT}")
    return model, n


def _file_type_name(kv: _KV, tensors: list[_Tensor]) -> str:
    ft = _int(kv, "general.file_type")
    if ft is not None:
        try:
            name = gguf.LlamaFileType(ft).name
        except ValueError:
            return f"unknown({ft})"
        for prefix in ("MOSTLY_", "ALL_"):
            name = name.removeprefix(prefix)
        return name
    # no general.file_type: name the type holding most of the bytes
    by_bytes: Counter[int] = Counter()
    for t in tensors:
        by_bytes[t.ggml_type] += t.n_bytes
    if not by_bytes:
        return "unknown"
    return gguf.GGMLQuantizationType(by_bytes.most_common(1)[0][0]).name


_Parsed = tuple[int, _KV, list[_Tensor], int]  # version, metadata, tensors, where the tensor data starts


def _parsed(path: Path) -> _Parsed:
    """``path``'s header, parsed once per version of the file: a server reads the same blob for
    ``show``, the memory estimate and the load, and a vocabulary of 100k strings takes tens of ms."""
    st = path.stat()
    return _parse_file(str(path), st.st_size, st.st_mtime_ns, st.st_ino)


@functools.lru_cache(maxsize=4)
def _parse_file(path: str, size: int, _mtime_ns: int, _inode: int) -> _Parsed:
    with open(path, "rb") as f:
        if size == 0:
            raise _Corrupt("the file is empty")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            return _parse(buf, size)


def validate_gguf(path: Path) -> GGUFSummary:
    """Check ``path`` is a GGUF llama.cpp can load without crashing; summarise it.

    Raises ``InvalidModelFile`` (one line, naming the file) for a corrupt, truncated or
    malformed file. Reads only the header and metadata, never the tensor data.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        version, kv, tensors, data_start = _parsed(path)
    except InvalidModelFile:
        raise
    except OSError as e:
        raise _fail(path, f"cannot read the file ({e.strerror or e})") from None
    except Exception as e:  # noqa: BLE001 - any parse failure is a corrupt file
        reason = " ".join(str(e).split()) or type(e).__name__
        raise _fail(path, f"not a valid GGUF file ({reason})") from None

    alignment = kv.get("general.alignment", (_T_UINT32, _DEFAULT_ALIGNMENT))[1]
    _check_tensors(path, tensors, data_start, alignment, size)

    arch = _str(kv, "general.architecture")
    if not arch:
        raise _fail(path, f"general.architecture is missing; {_RECONVERT}")
    _check_hparams(path, kv, arch)
    tokenizer_model, vocab_size = _check_vocab(path, kv)

    return GGUFSummary(
        architecture=arch,
        name=_str(kv, "general.name"),
        context_length=_int(kv, f"{arch}.context_length"),
        embedding_length=_int(kv, f"{arch}.embedding_length"),
        block_count=_int(kv, f"{arch}.block_count"),
        head_count=_int(kv, f"{arch}.attention.head_count"),
        parameter_count=sum(t.n_elements for t in tensors),
        file_type=_file_type_name(kv, tensors),
        chat_template=_str(kv, "tokenizer.chat_template"),
        size_bytes=size,
        tokenizer_model=tokenizer_model,
        vocab_size=vocab_size,
        tensor_count=len(tensors),
        gguf_version=version,
    )


def read_metadata(path: Path) -> dict[str, Any]:
    """Every metadata key of a GGUF as plain Python values (strings decoded, arrays as lists), plus
    ``general.parameter_count`` when the file lacks it. Tens of milliseconds where gguf.GGUFReader
    takes seconds: it builds a numpy view for each of a vocabulary's strings."""
    return read_header(path)[0]


TensorInfo = _Tensor


def data_offset(path: Path) -> int:
    """Where a GGUF's tensor data starts: tensor ``t``'s bytes are at ``data_offset + t.offset``."""
    try:
        return int(_parsed(path)[3])
    except _Corrupt as exc:
        raise _fail(path, f"not a valid GGUF file ({exc})") from None


def read_header(path: Path, *, string_arrays: bool = True) -> tuple[dict[str, Any], list[TensorInfo]]:
    """A GGUF's metadata (as ``read_metadata``) and its tensors' names, shapes and sizes.
    ``string_arrays=False`` leaves out arrays of strings (the vocabulary), for readers of numbers."""
    try:
        _version, kv, tensors, _start = _parsed(path)
    except _Corrupt as exc:
        raise _fail(path, f"not a valid GGUF file ({exc})") from None
    out: dict[str, Any] = {}
    for key, (_vtype, value) in kv.items():
        if isinstance(value, _Array) and value.elem_type == _T_STRING and not string_arrays:
            continue
        if isinstance(value, _Array):
            out[key] = [v.decode("utf-8", "replace") if isinstance(v, bytes) else v for v in value.items]
        else:
            out[key] = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
    out.setdefault("general.parameter_count", sum(t.n_elements for t in tensors))
    return out, tensors
