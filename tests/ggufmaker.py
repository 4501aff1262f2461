"""Write tiny random-weight llama-architecture GGUF files for tests.

``write_tiny_llama(path)`` gives a model of a few hundred KB (F32 weights) that llama.cpp loads in
milliseconds and generates from; its text is gibberish, but tokenising, the chat template, the KV
cache and sampling all work as with a real model. ``defect=`` writes deliberately malformed files
for the validator's tests (several of them make llama.cpp abort the whole process, so never load
those in-process): ``duplicate_tokens``, ``missing_byte_tokens`` (spm), ``missing_merges`` (gpt2),
``unknown_pre`` (gpt2), ``truncated``, ``garbage``, ``bos_out_of_range``, ``short_token_types``.

Two vocabularies:

* ``"gpt2"`` – byte-level BPE like SmolLM2: the special tokens ``<|endoftext|> <|im_start|>
  <|im_end|>`` (ids 0, 1, 2, control type), the 256 byte-level unicode characters, and a few dozen
  merges of common English pairs, so that "hello world" becomes several tokens.
* ``"spm"`` – llama SentencePiece: ``<unk> <s> </s>``, the 256 ``<0xXX>`` byte tokens, the ChatML
  markers, and scored pieces (letters, a few bigrams) so that "hello world" becomes several tokens.
"""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np

CHATML = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

DEFECTS = (
    "duplicate_tokens",
    "missing_byte_tokens",
    "missing_merges",
    "unknown_pre",
    "truncated",
    "garbage",
    "bos_out_of_range",
    "short_token_types",
)

# gguf token types (llama.cpp's LLAMA_TOKEN_TYPE_*)
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

# Merges for the gpt2 vocabulary, in rank order ("Ġ" is the byte-level space). Each result is
# added to the vocabulary, as a real BPE vocabulary holds every merge result.
_GPT2_MERGES = [
    "Ġ t", "h e", "i n", "e r", "a n", "o n", "r e", "Ġ a", "o r", "e n", "Ġt he", "l l",
    "Ġ w", "Ġ h", "Ġ s", "l d", "e s", "i s", "a t", "i t", "Ġ i", "o u", "Ġ o", "Ġ c",
    "he ll", "Ġw or", "Ġh e", "in g", "Ġ m", "Ġ f", "Ġ b", "Ġ d", "e d", "Ġ p", "a r", "l e",
    "Ġa n", "Ġo f", "Ġ y", "Ġy ou", "Ġ ?",
]

# Extra pieces for the spm vocabulary, (piece, score): higher scores merge first.
_SPM_PIECES = (
    [("▁", -1.0)]
    + [(c, -2.0 - i / 100) for i, c in enumerate("abcdefghijklmnopqrstuvwxyz")]
    + [(p, -0.5 - i / 100) for i, p in enumerate(
        ["▁h", "el", "lo", "▁w", "or", "ld", "▁t", "he", "in", "er", "an", "on", "▁a", "re"])]
)

_SPECIAL_GPT2 = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def _bytes_to_unicode() -> list[str]:
    """GPT-2's reversible byte -> printable-unicode-character table, in byte order."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    table: dict[int, str] = {}
    extra = 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return [table[b] for b in range(256)]


def _gpt2_vocab(defect: str | None) -> tuple[list[str], list[int], list[str], dict[str, int]]:
    tokens = list(_SPECIAL_GPT2)
    types = [CONTROL] * len(tokens)
    for ch in _bytes_to_unicode():
        tokens.append(ch)
        types.append(NORMAL)
    seen = set(tokens)
    for merge in _GPT2_MERGES:
        piece = merge.replace(" ", "")
        if piece not in seen:
            seen.add(piece)
            tokens.append(piece)
            types.append(NORMAL)
    if defect == "duplicate_tokens":
        # a second "hell": the kind of vocabulary a broken converter writes
        tokens.append("hell")
        types.append(NORMAL)
    ids = {"bos": 1, "eos": 2, "unk": 0, "pad": 2}
    return tokens, types, list(_GPT2_MERGES), ids


def _spm_vocab(defect: str | None) -> tuple[list[str], list[int], list[float], dict[str, int]]:
    tokens = ["<unk>", "<s>", "</s>"]
    types = [UNKNOWN, CONTROL, CONTROL]
    scores = [0.0, 0.0, 0.0]
    for b in range(256):
        if defect == "missing_byte_tokens" and b >= 0x80:
            continue
        tokens.append(f"<0x{b:02X}>")
        types.append(BYTE)
        scores.append(0.0)
    for special in ("<|im_start|>", "<|im_end|>"):
        tokens.append(special)
        types.append(CONTROL)
        scores.append(0.0)
    for piece, score in _SPM_PIECES:
        tokens.append(piece)
        types.append(NORMAL)
        scores.append(score)
    if defect == "duplicate_tokens":
        tokens.append("lo")
        types.append(NORMAL)
        scores.append(-9.0)
    ids = {"bos": 1, "eos": 2, "unk": 0}
    return tokens, types, scores, ids


def write_tiny_llama(
    path: Path,
    *,
    vocab: str = "gpt2",
    n_embd: int = 64,
    n_layer: int = 2,
    n_head: int = 4,
    n_head_kv: int = 2,
    n_ff: int = 128,
    n_ctx: int = 512,
    seed: int = 0,
    chat_template: str | None = CHATML,
    defect: str | None = None,
    extra_metadata: dict[str, str | bool | int | float] | None = None,
    tied: bool = False,
) -> Path:
    """Write a tiny llama GGUF to ``path`` and return ``path``.

    ``extra_metadata`` adds keys (str, bool, uint32 or float32 values) that are not already written.
    ``tied`` leaves out ``output.weight``: the output shares the token embeddings (as SmolLM2's does).
    """
    path = Path(path)
    if vocab not in ("gpt2", "spm"):
        raise ValueError(f"vocab must be 'gpt2' or 'spm', not {vocab!r}")
    if defect is not None and defect not in DEFECTS:
        raise ValueError(f"unknown defect {defect!r}; choose from {', '.join(DEFECTS)}")
    if defect == "missing_merges" and vocab != "gpt2":
        raise ValueError("defect 'missing_merges' needs vocab='gpt2'")
    if defect == "missing_byte_tokens" and vocab != "spm":
        raise ValueError("defect 'missing_byte_tokens' needs vocab='spm'")
    if defect == "unknown_pre" and vocab != "gpt2":
        # llama.cpp reads tokenizer.ggml.pre only for BPE vocabularies
        raise ValueError("defect 'unknown_pre' needs vocab='gpt2'")
    if n_embd % n_head or n_head % n_head_kv:
        raise ValueError("n_embd must divide by n_head, and n_head by n_head_kv")
    path.parent.mkdir(parents=True, exist_ok=True)

    if defect == "garbage":
        rng = np.random.default_rng(seed)
        path.write_bytes(b"this is not a GGUF file\n" + rng.bytes(4096))
        return path

    arch = "llama"
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name(f"corral-tiny-{vocab}")
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_context_length(n_ctx)
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(n_embd // n_head)
    w.add_rope_freq_base(10000.0)

    if vocab == "gpt2":
        tokens, types, merges, ids = _gpt2_vocab(defect)
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre("corral-unknown-pre" if defect == "unknown_pre" else "smollm")
        w.add_token_list(tokens)
        w.add_token_types(types[:-10] if defect == "short_token_types" else types)
        if defect != "missing_merges":
            w.add_token_merges(merges)
        w.add_add_bos_token(False)
    else:
        tokens, types, scores, ids = _spm_vocab(defect)
        w.add_tokenizer_model("llama")
        w.add_token_list(tokens)
        w.add_token_scores(scores)
        w.add_token_types(types[:-10] if defect == "short_token_types" else types)
        w.add_add_bos_token(True)
    if defect == "bos_out_of_range":
        ids["bos"] = len(tokens) + 5
    w.add_bos_token_id(ids["bos"])
    w.add_eos_token_id(ids["eos"])
    w.add_unk_token_id(ids["unk"])
    if "pad" in ids:
        w.add_pad_token_id(ids["pad"])
    w.add_vocab_size(len(tokens))
    if chat_template is not None:
        w.add_chat_template(chat_template)
    for key, value in (extra_metadata or {}).items():
        if isinstance(value, str):
            w.add_string(key, value)
        elif isinstance(value, bool):
            w.add_bool(key, value)
        elif isinstance(value, int):
            w.add_uint32(key, value)
        else:
            w.add_float32(key, float(value))

    rng = np.random.default_rng(seed)
    n_vocab = len(tokens)
    head_dim = n_embd // n_head
    n_kv = n_head_kv * head_dim

    def mat(rows: int, cols: int) -> np.ndarray:
        # numpy (rows, cols) is ggml ne = [cols, rows]: a weight mapping cols -> rows
        return (rng.standard_normal((rows, cols)) * 0.05).astype(np.float32)

    def ones(n: int) -> np.ndarray:
        return np.ones(n, dtype=np.float32)

    w.add_tensor("token_embd.weight", mat(n_vocab, n_embd))
    for i in range(n_layer):
        w.add_tensor(f"blk.{i}.attn_norm.weight", ones(n_embd))
        w.add_tensor(f"blk.{i}.attn_q.weight", mat(n_embd, n_embd))
        w.add_tensor(f"blk.{i}.attn_k.weight", mat(n_kv, n_embd))
        w.add_tensor(f"blk.{i}.attn_v.weight", mat(n_kv, n_embd))
        w.add_tensor(f"blk.{i}.attn_output.weight", mat(n_embd, n_embd))
        w.add_tensor(f"blk.{i}.ffn_norm.weight", ones(n_embd))
        w.add_tensor(f"blk.{i}.ffn_gate.weight", mat(n_ff, n_embd))
        w.add_tensor(f"blk.{i}.ffn_up.weight", mat(n_ff, n_embd))
        w.add_tensor(f"blk.{i}.ffn_down.weight", mat(n_embd, n_ff))
    w.add_tensor("output_norm.weight", ones(n_embd))
    if not tied:
        w.add_tensor("output.weight", mat(n_vocab, n_embd))

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()

    if defect == "truncated":
        size = path.stat().st_size
        with open(path, "r+b") as f:
            f.truncate(size // 2)
    return path


def write_tiny_lora(
    path: Path, *, n_embd: int = 64, n_layer: int = 2, n_ff: int = 128, rank: int = 4, scale: float = 1.0, seed: int = 1
) -> Path:
    """A LoRA adapter GGUF for ``write_tiny_llama``'s default shapes (as convert_lora_to_gguf writes
    them): ``blk.N.<w>.weight.lora_a`` is (rank, in) and ``.lora_b`` is (out, rank) in numpy order.
    ``scale`` 0 gives an adapter that changes nothing."""
    rng = np.random.default_rng(seed)
    pairs = {}
    for i in range(n_layer):
        for name, out_dim, in_dim in (("attn_q", n_embd, n_embd), ("ffn_up", n_ff, n_embd)):
            pairs[f"blk.{i}.{name}.weight"] = (
                (rng.standard_normal((rank, in_dim)) * 0.5).astype(np.float32),
                (rng.standard_normal((out_dim, rank)) * 0.5 * scale).astype(np.float32),
            )
    return _write_lora(path, pairs, alpha=float(rank))


def write_lora_for(base: Path, path: Path, *, rank: int = 4, alpha: float = 8.0, seed: int = 2) -> Path:
    """A LoRA adapter GGUF on every matrix of ``base`` llama.cpp adapts: each layer's attention and MLP
    weights, ``output.weight`` and ``token_embd.weight`` (whose pair llama.cpp stores flipped:
    ``lora_a`` (vocab, rank), ``lora_b`` (embd, rank) in numpy order)."""
    rng = np.random.default_rng(seed)
    pairs = {}
    for t in gguf.GGUFReader(str(base)).tensors:
        if len(t.shape) != 2:
            continue
        cols, rows = (int(n) for n in t.shape)  # ggml order: numpy (rows, cols)
        a_shape, b_shape = (
            ((rows, rank), (cols, rank)) if t.name == "token_embd.weight" else ((rank, cols), (rows, rank))
        )
        pairs[t.name] = tuple((rng.standard_normal(shape) * 0.3).astype(np.float32) for shape in (a_shape, b_shape))
    return _write_lora(path, pairs, alpha=alpha)


def _write_lora(path: Path, pairs: dict[str, tuple[np.ndarray, np.ndarray]], alpha: float) -> Path:
    path = Path(path)
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_string("general.type", "adapter")
    w.add_string("adapter.type", "lora")
    w.add_float32("adapter.lora.alpha", alpha)
    for name, (a, b) in pairs.items():
        w.add_tensor(f"{name}.lora_a", a)
        w.add_tensor(f"{name}.lora_b", b)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
