"""Token sampling over numpy logits for the engines that are not llama.cpp (ONNX, MLX).

``Sampler`` follows llama.cpp's chain (grammar, penalties over the generated tokens, top-k, typical,
top-p, min-p, temperature, seeded draw), so every sampling option behaves as on the CPU backend.
Grammars (GBNF, Ollama's ``format``) use llama.cpp's own grammar sampler, which needs only a
vocabulary: ``GrammarVocabulary`` makes a vocab-only llama.cpp load of a GGUF on first use.
"""

from __future__ import annotations

import ctypes
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np

from corral.errors import BadRequest, CorralError, InvalidModelFile
from corral.hookspecs import Sampling, TokenLogprobs


class Grammar:
    """llama.cpp's GBNF sampler over a vocab-only model: masks logits, follows the chosen tokens."""

    def __init__(self, vocab_model: Any, text: str) -> None:
        import llama_cpp as L

        self._L = L
        vocab = L.llama_model_get_vocab(vocab_model)
        self._n_vocab = int(L.llama_vocab_n_tokens(vocab))
        self._sampler = L.llama_sampler_init_grammar(vocab, text.encode(), b"root")
        if not self._sampler:
            raise BadRequest("invalid grammar: llama.cpp could not parse it")

    def mask(self, logits: np.ndarray) -> None:
        """Set the logit of every token the grammar forbids next to -inf, in place."""
        L = self._L
        # llama.cpp reads each candidate's text from the vocabulary: ids past it (a padded output
        # layer) must never reach it, and are never allowed.
        n = min(logits.shape[0], self._n_vocab)
        logits[n:] = -np.inf
        cells = np.zeros(n, dtype=[("id", "<i4"), ("logit", "<f4"), ("p", "<f4")])
        cells["id"] = np.arange(n, dtype=np.int32)
        cells["logit"] = logits[:n]
        arr = L.llama_token_data_array(
            data=cells.ctypes.data_as(ctypes.POINTER(L.llama_token_data)), size=n, selected=-1, sorted=False
        )
        L.llama_sampler_apply(self._sampler, ctypes.byref(arr))
        logits[:n] = cells["logit"]

    def accept(self, token: int) -> None:
        self._L.llama_sampler_accept(self._sampler, token)

    def close(self) -> None:
        if self._sampler:
            self._L.llama_sampler_free(self._sampler)
            self._sampler = None


class GrammarVocabulary:
    """A vocab-only llama.cpp load of a GGUF, for grammars: made on the first grammar, freed by close()."""

    def __init__(self, gguf: Path) -> None:
        self.path = Path(gguf)
        self._model: Any = None

    def grammar(self, text: str) -> Grammar:
        return Grammar(self._load(), text)

    def _load(self) -> Any:
        if self._model is None:
            try:
                import llama_cpp as L
            except ImportError:
                raise BadRequest("grammars (format/JSON mode) need llama-cpp-python, which is not installed") from None
            from corral.engines.llamacpp.backend import init_backend

            init_backend(L)
            params = L.llama_model_default_params()
            params.vocab_only = True
            self._model = L.llama_model_load_from_file(str(self.path).encode(), params)
            if not self._model:
                raise InvalidModelFile(f"llama.cpp could not read the vocabulary in {self.path}")
        return self._model

    def close(self) -> None:
        if self._model is not None:
            import llama_cpp as L

            L.llama_model_free(self._model)
            self._model = None


class Sampler:
    """One sequence's sampling: its settings, grammar, RNG and the generated tokens the penalties see."""

    def __init__(self, sampling: Sampling, grammar: Grammar | None = None) -> None:
        self.sampling = sampling
        self.grammar = grammar
        self.rng = np.random.default_rng(sampling.seed)
        # llama.cpp's penalty window: -1 is the whole context (every generated token), 0 is off.
        window = None if sampling.repeat_last_n == -1 else max(0, sampling.repeat_last_n)
        self.recent: deque[int] = deque(maxlen=window)
        self.last_logprobs: TokenLogprobs | None = None  # of the last pick, when the settings ask for them

    @property
    def penalised(self) -> bool:
        s = self.sampling
        return s.repeat_last_n != 0 and (s.repeat_penalty != 1.0 or bool(s.presence_penalty or s.frequency_penalty))

    @property
    def plain_greedy(self) -> bool:
        """The answer is the argmax of the raw logits, so an engine may take it without calling pick."""
        s = self.sampling
        return s.temperature <= 0 and self.grammar is None and not self.penalised and s.logprobs is None

    def pick(self, logits: np.ndarray) -> int:
        raw = logits
        logits = logits.astype(np.float32, copy=True)
        if self.grammar is not None:
            self.grammar.mask(logits)
            if not np.isfinite(logits).any():
                raise CorralError("the grammar allows no token here")
        if self.penalised and self.recent:
            self._penalise(logits)
        token = int(logits.argmax()) if self.sampling.temperature <= 0 else self._draw(logits)
        if self.grammar is not None:
            self.grammar.accept(token)
        self.recent.append(token)
        if self.sampling.logprobs is not None:
            self.last_logprobs = token_logprobs(raw, token, self.sampling.logprobs)
        return token

    def _penalise(self, logits: np.ndarray) -> None:
        s = self.sampling
        ids, counts = np.unique(np.fromiter(self.recent, np.int64, len(self.recent)), return_counts=True)
        values = logits[ids]
        if s.repeat_penalty != 1.0:
            values = np.where(values > 0, values / s.repeat_penalty, values * s.repeat_penalty)
        logits[ids] = values - counts * s.frequency_penalty - s.presence_penalty

    def _draw(self, logits: np.ndarray) -> int:
        """llama.cpp's order: top-k, typical, top-p, min-p, temperature, then a seeded draw."""
        s = self.sampling
        ids = np.flatnonzero(np.isfinite(logits))  # what a grammar left
        vals = logits[ids].astype(np.float64)
        if 0 < s.top_k < ids.size:
            keep = np.argpartition(-vals, s.top_k - 1)[: s.top_k]
            ids, vals = ids[keep], vals[keep]
        order = np.argsort(-vals, kind="stable")
        ids, vals = ids[order], vals[order]
        if s.typical_p < 1.0:
            ids, vals = _typical(ids, vals, s.typical_p)
        if s.top_p < 1.0:
            cum = np.cumsum(_softmax(vals))
            cut = int(np.searchsorted(cum, s.top_p)) + 1
            ids, vals = ids[:cut], vals[:cut]
        if s.min_p > 0.0:
            probs = _softmax(vals)
            keep = probs >= s.min_p * probs[0]
            ids, vals = ids[keep], vals[keep]
        probs = _softmax(vals / s.temperature)
        return int(ids[self.rng.choice(ids.size, p=probs)])

    def close(self) -> None:
        if self.grammar is not None:
            self.grammar.close()
            self.grammar = None


def token_logprobs(logits: np.ndarray, token: int, top: int) -> TokenLogprobs:
    """``token``'s log-probability and the ``top`` most likely tokens', from one row of raw logits
    (a log-softmax over the model's distribution: before penalties, grammar and temperature)."""
    row = np.asarray(logits, dtype=np.float64)
    shifted = row - row.max()
    logp = shifted - np.log(np.exp(shifted).sum())
    best: tuple[tuple[int, float], ...] = ()
    if top > 0:
        k = min(top, row.size)
        ids = np.argpartition(-logp, k - 1)[:k]
        ids = ids[np.argsort(-logp[ids], kind="stable")]
        best = tuple((int(i), float(logp[i])) for i in ids)
    return TokenLogprobs(int(token), float(logp[token]), best)


def _softmax(vals: np.ndarray) -> np.ndarray:
    e = np.exp(vals - vals.max())
    return e / e.sum()


def _typical(ids: np.ndarray, vals: np.ndarray, p: float) -> tuple[np.ndarray, np.ndarray]:
    probs = _softmax(vals)
    logp = np.log(np.maximum(probs, 1e-30))
    entropy = -(probs * logp).sum()
    order = np.argsort(np.abs(-logp - entropy), kind="stable")
    cut = int(np.searchsorted(np.cumsum(probs[order]), p)) + 1
    keep = np.sort(order[:cut])  # back to descending-logit order
    return ids[keep], vals[keep]
