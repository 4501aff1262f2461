"""Token log-probabilities from a row of raw logits, the same way for every engine (llama.cpp, ONNX, MLX)."""

from __future__ import annotations

import numpy as np

from corral.hookspecs import TokenLogprobs


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
