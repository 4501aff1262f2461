"""The MLX engine's tokenizer: llama.cpp's rules over the GGUF vocabulary (special-token partition,
pre-tokenizer regexes, BPE or SentencePiece), so MLX and llama.cpp turn text into the same tokens."""

from __future__ import annotations

import heapq
from typing import Any

from corral.errors import BadRequest
from corral.formats.hfnames import byte_decoder as _byte_decoder

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
