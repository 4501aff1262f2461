"""What the offload planner needs to know about a model -- shape and tensor bytes, nothing else --
and how to read it from a GGUF header without touching the tensor data."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from corral.errors import InvalidModelFile

_BLOCK = re.compile(r"blk\.(\d+)\.")
_OUTPUT_TENSORS = ("output.", "output_norm.")


@dataclass(frozen=True)
class ModelProfile:
    """What the planner needs to know about a model: shape and tensor bytes, nothing else."""

    n_layer: int
    n_embd: int
    n_head: int
    n_head_kv: tuple[int, ...]  # per layer (some models vary it; 0 means a layer without KV cache)
    head_dim_k: int
    head_dim_v: int
    n_ff: int
    n_vocab: int
    layer_bytes: tuple[int, ...]  # weights of blk.N.* for N in 0..n_layer-1
    input_bytes: int  # token_embd and any other tensor that stays in host memory
    output_bytes: int  # output_norm + output
    tied_output_bytes: int = 0  # tied embeddings (no ``output``): token_embd, copied to an offloaded output layer
    n_ctx_train: int | None = None
    name: str = "model"
    architecture: str = "llama"
    file_size: int | None = None

    def __post_init__(self) -> None:
        if len(self.layer_bytes) != self.n_layer or len(self.n_head_kv) != self.n_layer:
            raise ValueError(
                f"{self.name}: {self.n_layer} layers but {len(self.layer_bytes)} layer sizes "
                f"and {len(self.n_head_kv)} KV head counts"
            )

    @property
    def weights_bytes(self) -> int:
        """Bytes of the distinct tensors: what the file holds, less its header."""
        return sum(self.layer_bytes) + self.input_bytes + self.output_bytes

    def kv_bytes(self, layer: int, n_ctx: int, bytes_per_element: float) -> int:
        return int(n_ctx * (self.head_dim_k + self.head_dim_v) * self.n_head_kv[layer] * bytes_per_element)


def profile_from_gguf(path: Path | str) -> ModelProfile:
    """Read a GGUF's header (never its tensor data) into a ``ModelProfile``."""
    from corral.formats import gguf as g

    path = Path(path)
    summary = g.validate_gguf(path)  # readable errors for damaged files
    kv, tensors = g.read_header(path, string_arrays=False)  # the vocabulary is not needed here
    arch = summary.architecture

    def ints(key: str) -> list[int] | None:
        if key not in kv:
            return None
        value = kv[key]
        if isinstance(value, list):
            return [int(v) for v in value]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return None
        return [int(value)]

    def one(key: str, default: int | None = None) -> int | None:
        values = ints(key)
        return max(values) if values else default

    n_layer = summary.block_count or 0
    n_embd = summary.embedding_length or 0
    n_head = one(f"{arch}.attention.head_count", 0) or 0
    head_kv = ints(f"{arch}.attention.head_count_kv") or [n_head]
    if len(head_kv) == 1:
        head_kv = head_kv * n_layer
    if len(head_kv) != n_layer:
        raise InvalidModelFile(
            f"{path}: {arch}.attention.head_count_kv has {len(head_kv)} entries for {n_layer} layers"
        )
    head_dim = n_embd // n_head if n_head else 0
    head_k = one(f"{arch}.attention.key_length", head_dim) or 0
    head_v = one(f"{arch}.attention.value_length", head_dim) or 0
    n_ff = one(f"{arch}.feed_forward_length", 4 * n_embd) or 0

    layer_bytes = [0] * n_layer
    by_name: dict[str, Any] = {}
    input_bytes = output_bytes = 0
    for t in tensors:
        by_name[t.name] = t
        match = _BLOCK.match(t.name)
        if match and int(match.group(1)) < n_layer:
            layer_bytes[int(match.group(1))] += t.n_bytes
        elif t.name.startswith(_OUTPUT_TENSORS):
            output_bytes += t.n_bytes
        else:
            input_bytes += t.n_bytes  # token_embd, rope factors, extra blocks (e.g. nextn)
    tied = "output.weight" not in by_name and "token_embd.weight" in by_name
    tied_bytes = by_name["token_embd.weight"].n_bytes if tied else 0
    n_vocab = summary.vocab_size or one(f"{arch}.vocab_size", 0) or 0
    if not n_vocab and "token_embd.weight" in by_name:
        n_vocab = by_name["token_embd.weight"].shape[-1]

    return ModelProfile(
        n_layer=n_layer,
        n_embd=n_embd,
        n_head=n_head,
        n_head_kv=tuple(head_kv),
        head_dim_k=head_k,
        head_dim_v=head_v,
        n_ff=n_ff,
        n_vocab=n_vocab,
        layer_bytes=tuple(layer_bytes),
        input_bytes=input_bytes,
        output_bytes=output_bytes,
        tied_output_bytes=tied_bytes,
        n_ctx_train=summary.context_length,
        name=summary.name or path.stem,
        architecture=arch,
        file_size=path.stat().st_size,
    )
