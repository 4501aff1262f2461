"""The MLX engine: a Runner over mlx for llama-architecture GGUF models, independent of llama.cpp.

The stored format stays GGUF. On first load the weights are converted once into an mlx-lm style
model folder under ``<home>/mlx/<key>`` (``mlx_convert``, which keeps quantised weights exact);
later loads read that folder.

Activations and the KV cache stay float32, so the engine computes the model the GGUF describes
(logits within ~1e-4 of a float64 reference on SmolLM2; llama.cpp's CPU kernels, which quantise
activations to 8 bits, drift ~0.5 from it).

``step`` packs every sequence's new tokens into one matrix, so the projections and the MLP read
each weight once per step for all sequences (as llama.cpp's batches do); only attention runs per
sequence, over that sequence's own KV cache. The tokenizer (``mlx_tokenizer``) is rebuilt from the
GGUF vocabulary with llama.cpp's rules.

Tokens are picked by ``corral.engines.sampling``'s numpy sampler (llama.cpp's chain), except a plain greedy
sequence, whose argmax is taken on the device. GBNF grammars (Ollama's ``format``) run llama.cpp's
grammar sampler over a vocab-only llama.cpp load of the same GGUF, made on the first grammar.
LoRA adapters (llama.cpp's GGUF format, read by ``mlx_lora``) are added at run time to the matrices
they adapt, never merged into the (possibly quantised) weights.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from corral.engines.sampling import GrammarVocabulary, Sampler
from corral.errors import BadRequest, CorralError
from corral.formats.gguf import read_header, validate_gguf
from corral.hookspecs import LoadSpec, ModelInfo, Sampling, SequenceStep, TokenLogprobs
from corral_backend_metal.mlx_convert import derived_folder, ensure_mlx_folder, hf_name
from corral_backend_metal.mlx_lora import EMBEDDINGS, LoraPair, load_adapters
from corral_backend_metal.mlx_tokenizer import GGUFTokenizer

if TYPE_CHECKING:
    import mlx.core as mx

__all__ = ["MLXRunner", "derived_folder", "ensure_mlx_folder", "hf_name"]

_KV_STEP = 256  # KV caches grow in steps of this many tokens

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
        hf = hf_name(name)
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
            # A .safetensors file loads as a dict of arrays (mx.load's type covers every format).
            weights = cast("dict[str, mx.array]", mx.load(str(self.folder / "model.safetensors")))
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

    def logprobs(self, seq: int) -> TokenLogprobs | None:
        sampler = self._samplers.get(seq)
        return sampler.last_logprobs if sampler is not None else None

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
                assert hidden is not None  # hidden=True always returns the hidden states
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
