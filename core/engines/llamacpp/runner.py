"""The GGUF engine: a Runner over llama-cpp-python's low-level API, shared by every llama.cpp backend.

Why the low-level API rather than ``llama_cpp.Llama``: one context holds every slot's sequence so a
single ``llama_decode`` advances them all (continuous batching), and per-sequence KV surgery gives the
prefix cache. Backends differ only in how many layers they offload (``n_gpu_layers``).
"""

from __future__ import annotations

import ctypes
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from corral.engines.host import physical_cores
from corral.engines.llamacpp.backend import init_backend
from corral.engines.llamacpp.offload import kv_cache_type_for
from corral.engines.logprobs import token_logprobs
from corral.errors import BadRequest, CorralError, InvalidModelFile, PromptTooLong
from corral.formats.gguf import validate_gguf
from corral.hookspecs import LoadSpec, ModelInfo, Sampling, SequenceStep, TokenLogprobs

log = logging.getLogger("corral.engines.llamacpp")


def model_params(llama: Any, spec: LoadSpec, n_gpu_layers: int) -> Any:
    """llama.cpp's model parameters for ``spec``: offloaded layers, their split over the GPUs, the GPU
    that runs the model alone (``main_gpu``) and whether the file is memory-mapped (``use_mmap``)."""
    mparams = llama.llama_model_default_params()
    mparams.n_gpu_layers = n_gpu_layers
    if spec.main_gpu is not None and n_gpu_layers != 0:  # the model on that one GPU (--split-mode none)
        mparams.split_mode = llama.LLAMA_SPLIT_MODE_NONE
        mparams.main_gpu = spec.main_gpu
    if spec.tensor_split:
        if len(spec.tensor_split) > llama.LLAMA_MAX_DEVICES:
            raise BadRequest(
                f"tensor_split has {len(spec.tensor_split)} entries; llama.cpp takes at most {llama.LLAMA_MAX_DEVICES}"
            )
        mparams.tensor_split = (ctypes.c_float * llama.LLAMA_MAX_DEVICES)(*spec.tensor_split)
    if spec.use_mmap is not None:
        mparams.load_mode = llama.LLAMA_LOAD_MODE_MMAP if spec.use_mmap else llama.LLAMA_LOAD_MODE_NONE
        if not spec.use_mmap:
            mparams.lazy_mode = llama.LLAMA_LAZY_MODE_OFF  # reading tensors on demand needs the mapping
    return mparams


class LlamaCppRunner:
    """One loaded GGUF model; every method is called from the model's single owner thread."""

    def __init__(self, spec: LoadSpec, *, n_gpu_layers: int = 0) -> None:
        import llama_cpp as llama

        self._L = llama
        init_backend(llama)
        path = Path(spec.model_path)
        # Some malformed files make llama.cpp abort the whole process: refuse them before it sees them.
        validate_gguf(path)
        mparams = model_params(llama, spec, n_gpu_layers)
        # The struct owns the tensor_split array (ctypes keeps it in _objects) and the model keeps a copy
        # of the struct's pointer: hold the struct as long as the model.
        self._model_params = mparams
        self._model = llama.llama_model_load_from_file(str(path).encode(), mparams)
        if not self._model:
            raise InvalidModelFile(f"llama.cpp could not load {path} (run with --debug to see why)")
        self._vocab = llama.llama_model_get_vocab(self._model)
        n_ctx_train = int(llama.llama_model_n_ctx_train(self._model))
        seq_ctx = min(spec.num_ctx, n_ctx_train) if n_ctx_train > 0 else spec.num_ctx
        self.num_parallel = spec.num_parallel
        # A shared pool has room for an extra sequence for embeddings, outside the slots; separate
        # streams are all num_ctx long, so an embedding borrows a free slot's instead (the worker's choice).
        self.scratch_seq: int | None = spec.num_parallel if spec.kv_unified else None
        self.threads = spec.num_thread or physical_cores()
        self.n_batch = max(32, spec.num_batch)

        cparams = llama.llama_context_default_params()
        cparams.n_ctx = seq_ctx * spec.num_parallel
        cparams.n_batch = self.n_batch
        cparams.n_ubatch = self.n_batch
        cparams.n_seq_max = spec.num_parallel + (1 if spec.kv_unified else 0)
        cparams.n_threads = self.threads
        cparams.n_threads_batch = self.threads
        cparams.kv_unified = spec.kv_unified
        cparams.no_perf = True
        kv_type, why = kv_cache_type_for(spec.kv_cache_type, spec.flash_attention, self._head_dims())
        if why:
            log.warning("%s", why)
        self.kv_cache_type = kv_type
        cparams.type_k = cparams.type_v = getattr(llama, f"GGML_TYPE_{kv_type.upper()}")
        cparams.flash_attn_type = (
            llama.LLAMA_FLASH_ATTN_TYPE_ENABLED if spec.flash_attention else llama.LLAMA_FLASH_ATTN_TYPE_DISABLED
        )
        self._ctx = llama.llama_init_from_model(self._model, cparams)
        if not self._ctx:
            llama.llama_model_free(self._model)
            raise CorralError(f"llama.cpp could not create a context of {cparams.n_ctx} tokens for {path}")
        self._mem = llama.llama_get_memory(self._ctx)
        self._adapters = [self._load_adapter(p) for p in spec.adapters]
        if self._adapters:
            arr = (llama.llama_adapter_lora_p_ctypes * len(self._adapters))(*self._adapters)
            scales = (ctypes.c_float * len(self._adapters))(*([1.0] * len(self._adapters)))
            llama.llama_set_adapters_lora(self._ctx, arr, len(self._adapters), scales)

        self.n_vocab = int(llama.llama_vocab_n_tokens(self._vocab))
        bos = int(llama.llama_vocab_bos(self._vocab))
        template = llama.llama_model_chat_template(self._model, None)
        n_ctx_seq = int(llama.llama_n_ctx(self._ctx)) // spec.num_parallel
        self.info = ModelInfo(
            architecture=self._meta("general.architecture") or "unknown",
            n_ctx_train=n_ctx_train,
            n_ctx=n_ctx_seq,
            n_vocab=self.n_vocab,
            n_embd=int(llama.llama_model_n_embd(self._model)),
            num_parallel=spec.num_parallel,
            bos_token=bos if bos >= 0 else None,
            add_bos=bool(llama.llama_vocab_get_add_bos(self._vocab)),
            bos_text=self._token_text(bos),
            eos_text=self._token_text(int(llama.llama_vocab_eos(self._vocab))),
            chat_template=template.decode("utf-8", "replace") if template else None,
            size_bytes=int(llama.llama_model_size(self._model)),
            size_on_device=0 if n_gpu_layers == 0 else int(llama.llama_model_size(self._model)),
            # An input is embedded in one batch, and in one sequence's stream where each has its own.
            embed_tokens=self.n_batch if spec.kv_unified else min(self.n_batch, n_ctx_seq),
            kv_unified=spec.kv_unified,
        )
        self.total_ctx = int(llama.llama_n_ctx(self._ctx))
        self._pos: dict[int, int] = {}  # tokens cached per sequence
        self._samplers: dict[int, tuple[Sampling, Any]] = {}
        self._logprobs: dict[int, TokenLogprobs] = {}  # the last sampled token's, where asked for
        self._pieces: dict[int, bytes] = {}
        self._init_batch(self.n_batch)

    # ---- setup helpers ---------------------------------------------------------------------
    def _head_dims(self) -> tuple[int, int]:
        """One attention head's K and V sizes (what a quantised KV cache's blocks must divide)."""
        L, arch = self._L, self._meta("general.architecture")
        n_head = int(L.llama_model_n_head(self._model))
        dim = int(L.llama_model_n_embd(self._model)) // n_head if n_head > 0 else 0
        key = int(self._meta(f"{arch}.attention.key_length") or dim)
        return (key, int(self._meta(f"{arch}.attention.value_length") or dim))

    def _meta(self, key: str) -> str | None:
        buf = ctypes.create_string_buffer(256)
        n = self._L.llama_model_meta_val_str(self._model, key.encode(), buf, len(buf))
        return buf.value.decode("utf-8", "replace") if n >= 0 else None

    def _token_text(self, token: int) -> str:
        if token < 0:
            return ""
        text = self._L.llama_vocab_get_text(self._vocab, token)
        return text.decode("utf-8", "replace") if text else ""

    def _load_adapter(self, path: Path) -> Any:
        adapter = self._L.llama_adapter_lora_init(self._model, str(path).encode())
        if not adapter:
            raise InvalidModelFile(f"llama.cpp could not load the LoRA adapter {path}")
        return adapter

    def _init_batch(self, capacity: int) -> None:
        """A llama_batch whose arrays are numpy buffers we own, so filling it is vectorised."""
        L = self._L
        self._cap = capacity
        self._tok = np.zeros(capacity, dtype=np.int32)
        self._posarr = np.zeros(capacity, dtype=np.int32)
        self._nseq = np.ones(capacity, dtype=np.int32)
        self._seqarr = np.zeros(capacity, dtype=np.int32)
        self._out = np.zeros(capacity, dtype=np.int8)
        i32p = ctypes.POINTER(ctypes.c_int32)
        base = self._seqarr.ctypes.data
        self._seq_ptrs = (i32p * capacity)(*[ctypes.cast(base + 4 * i, i32p) for i in range(capacity)])
        batch = L.llama_batch()
        batch.token = self._tok.ctypes.data_as(i32p)
        batch.embd = None
        batch.pos = self._posarr.ctypes.data_as(i32p)
        batch.n_seq_id = self._nseq.ctypes.data_as(i32p)
        batch.seq_id = ctypes.cast(self._seq_ptrs, ctypes.POINTER(i32p))
        batch.logits = self._out.ctypes.data_as(ctypes.POINTER(ctypes.c_int8))
        self._batch = batch

    # ---- Runner: text ------------------------------------------------------------------------
    def tokenize(self, text: str, *, special: bool = True, add_bos: bool = False) -> list[int]:
        data = text.encode("utf-8")
        cap = len(data) + 8
        arr = (ctypes.c_int32 * cap)()
        n = self._L.llama_tokenize(self._vocab, data, len(data), arr, cap, add_bos, special)
        if n < 0:
            arr = (ctypes.c_int32 * -n)()
            n = self._L.llama_tokenize(self._vocab, data, len(data), arr, -n, add_bos, special)
        return list(arr[:n])

    def token_bytes(self, token: int) -> bytes:
        piece = self._pieces.get(token)
        if piece is None:
            buf = ctypes.create_string_buffer(64)
            n = self._L.llama_token_to_piece(self._vocab, token, buf, 64, 0, False)
            if n < 0:
                buf = ctypes.create_string_buffer(-n)
                n = self._L.llama_token_to_piece(self._vocab, token, buf, -n, 0, False)
            piece = buf.raw[:n]
            self._pieces[token] = piece
        return piece

    def is_end_of_generation(self, token: int) -> bool:
        return bool(self._L.llama_vocab_is_eog(self._vocab, token))

    # ---- Runner: sampling ----------------------------------------------------------------------
    def set_sampling(self, seq: int, sampling: Sampling) -> None:
        old = self._samplers.pop(seq, None)
        if old and old[1]:
            self._L.llama_sampler_free(old[1])
        self._samplers[seq] = (sampling, None if _is_plain_greedy(sampling) else self._make_chain(sampling))
        self._logprobs.pop(seq, None)

    def _make_chain(self, s: Sampling) -> Any:
        L = self._L
        chain = L.llama_sampler_chain_init(L.llama_sampler_chain_default_params())
        if s.grammar:
            grammar = L.llama_sampler_init_grammar(self._vocab, s.grammar.encode(), b"root")
            if not grammar:
                L.llama_sampler_free(chain)
                raise BadRequest("invalid grammar: llama.cpp could not parse it")
            L.llama_sampler_chain_add(chain, grammar)
        if s.repeat_penalty != 1.0 or s.presence_penalty or s.frequency_penalty:
            last_n = self.total_ctx if s.repeat_last_n == -1 else s.repeat_last_n
            L.llama_sampler_chain_add(
                chain,
                L.llama_sampler_init_penalties(
                    self.n_vocab, last_n, s.repeat_penalty, s.frequency_penalty, s.presence_penalty
                ),
            )
        if s.temperature <= 0:
            L.llama_sampler_chain_add(chain, L.llama_sampler_init_greedy())
            return chain
        if s.top_k > 0:
            L.llama_sampler_chain_add(chain, L.llama_sampler_init_top_k(s.top_k))
        if s.typical_p < 1.0:
            L.llama_sampler_chain_add(chain, L.llama_sampler_init_typical(s.typical_p, 1))
        if s.top_p < 1.0:
            L.llama_sampler_chain_add(chain, L.llama_sampler_init_top_p(s.top_p, 1))
        if s.min_p > 0.0:
            L.llama_sampler_chain_add(chain, L.llama_sampler_init_min_p(s.min_p, 1))
        L.llama_sampler_chain_add(chain, L.llama_sampler_init_temp(s.temperature))
        seed = s.seed if s.seed is not None else L.LLAMA_DEFAULT_SEED
        L.llama_sampler_chain_add(chain, L.llama_sampler_init_dist(seed & 0xFFFFFFFF))
        return chain

    def _sample(self, seq: int, index: int) -> int:
        sampling, chain = self._samplers.get(seq) or (None, None)
        if chain is None:
            # numpy's argmax beats the sampler chain for plain greedy decoding (big vocabularies).
            row = np.ctypeslib.as_array(self._L.llama_get_logits_ith(self._ctx, index), shape=(self.n_vocab,))
            token = int(row.argmax())
        else:
            token = int(self._L.llama_sampler_sample(chain, self._ctx, index))
        if sampling is not None and sampling.logprobs is not None:
            # the raw logits row, which the sampler chain read into its own copy and left as it was
            row = np.ctypeslib.as_array(self._L.llama_get_logits_ith(self._ctx, index), shape=(self.n_vocab,))
            self._logprobs[seq] = token_logprobs(row, token, sampling.logprobs)
        return token

    def logprobs(self, seq: int) -> TokenLogprobs | None:
        return self._logprobs.get(seq)

    # ---- Runner: decoding ---------------------------------------------------------------------
    def cached(self, seq: int) -> int:
        return self._pos.get(seq, 0)

    def step(self, batch: Sequence[SequenceStep]) -> dict[int, int]:
        """Decode every listed sequence's new tokens together; chunks larger than one llama batch are
        split, and each sequence is sampled right after the chunk holding its last token."""
        flat_tok: list[int] = []
        flat_seq: list[int] = []
        flat_pos: list[int] = []
        last_index: dict[int, int] = {}
        for item in batch:
            start = self._pos.get(item.seq, 0)
            n = len(item.tokens)
            if n == 0:
                continue
            flat_tok.extend(item.tokens)
            flat_seq.extend([item.seq] * n)
            flat_pos.extend(range(start, start + n))
            if item.sample:
                last_index[len(flat_tok) - 1] = item.seq
        results: dict[int, int] = {}
        total = len(flat_tok)
        for lo in range(0, total, self._cap):
            hi = min(total, lo + self._cap)
            n = hi - lo
            self._tok[:n] = flat_tok[lo:hi]
            self._posarr[:n] = flat_pos[lo:hi]
            self._seqarr[:n] = flat_seq[lo:hi]
            self._out[:n] = 0
            sample_here = [(i - lo, s) for i, s in last_index.items() if lo <= i < hi]
            for local, _seq in sample_here:
                self._out[local] = 1
            self._batch.n_tokens = n
            rc = self._L.llama_decode(self._ctx, self._batch)
            if rc != 0:
                # Undo what this chunk may have written so the sequences stay consistent.
                for s in set(flat_seq[lo:hi]):
                    self.truncate(s, min(p for p, q in zip(flat_pos[lo:hi], flat_seq[lo:hi], strict=True) if q == s))
                if rc == 1:
                    raise CorralError("the context is full: no room left in the KV cache (raise num_ctx)")
                raise CorralError(f"llama_decode failed with code {rc}")
            for s in set(flat_seq[lo:hi]):
                self._pos[s] = max(p for p, q in zip(flat_pos[lo:hi], flat_seq[lo:hi], strict=True) if q == s) + 1
            for local, s in sample_here:
                results[s] = self._sample(s, local)
        return results

    def truncate(self, seq: int, keep: int) -> int:
        if keep <= 0 or not self._L.llama_memory_seq_rm(self._mem, seq, keep, -1):
            # Some caches (sliding-window, recurrent) cannot drop a tail: start the sequence over.
            self._L.llama_memory_seq_rm(self._mem, seq, 0, -1)
            keep = 0
        self._pos[seq] = min(keep, self._pos.get(seq, 0))
        return self._pos[seq]

    def shift(self, seq: int, keep: int, discard: int) -> bool:
        """Context shift, as llama.cpp's server does it: remove positions [keep, keep + discard) from
        ``seq``'s cache and move the later ones left by ``discard`` (RoPE is re-applied to their keys).
        False, with the cache untouched, where the memory cannot shift (recurrent, some SWA models)."""
        L, pos = self._L, self._pos.get(seq, 0)
        discard = min(discard, pos - keep)
        if keep < 0 or discard <= 0 or not L.llama_memory_can_shift(self._mem):
            return False
        if not L.llama_memory_seq_rm(self._mem, seq, keep, keep + discard):
            return False
        L.llama_memory_seq_add(self._mem, seq, keep + discard, pos, -discard)
        self._pos[seq] = pos - discard
        return True

    # ---- Runner: embeddings ------------------------------------------------------------------
    def embed(self, texts: Sequence[str], seq: int | None = None) -> list[list[float]]:
        """Embed ``texts`` one by one in sequence ``seq``, which it empties: the worker names a free
        slot's where each has its own stream. By default the shared pool's scratch sequence, else the last."""
        L = self._L
        if seq is None:
            seq = self.scratch_seq if self.scratch_seq is not None else self.num_parallel - 1
        out: list[list[float]] = []
        L.llama_set_embeddings(self._ctx, True)
        try:
            pooled = L.llama_pooling_type(self._ctx) != L.LLAMA_POOLING_TYPE_NONE
            for text in texts:
                tokens = self.tokenize(text, add_bos=self.info.add_bos) or [self.info.bos_token or 0]
                if len(tokens) > self.info.embed_tokens:
                    raise PromptTooLong(
                        f"input is {len(tokens)} tokens, more than the {self.info.embed_tokens} one embedding may have"
                    )
                self.truncate(seq, 0)
                n = len(tokens)
                self._tok[:n] = tokens
                self._posarr[:n] = np.arange(n)
                self._seqarr[:n] = seq
                self._out[:n] = 1
                self._batch.n_tokens = n
                if L.llama_decode(self._ctx, self._batch) != 0:
                    raise CorralError("llama_decode failed while embedding")
                dim = self.info.n_embd
                if pooled:
                    vec = np.ctypeslib.as_array(L.llama_get_embeddings_seq(self._ctx, seq), shape=(dim,)).copy()
                else:  # generative models pool nothing themselves: mean over the tokens
                    rows = [
                        np.ctypeslib.as_array(L.llama_get_embeddings_ith(self._ctx, i), shape=(dim,)) for i in range(n)
                    ]
                    vec = np.mean(rows, axis=0)
                out.append(vec.astype(float).tolist())
        finally:
            self.truncate(seq, 0)
            L.llama_set_embeddings(self._ctx, False)
        return out

    def close(self) -> None:
        L = self._L
        for _s, chain in self._samplers.values():
            if chain:
                L.llama_sampler_free(chain)
        self._samplers.clear()
        if self._ctx:
            L.llama_free(self._ctx)
            self._ctx = None
        if self._model:
            L.llama_model_free(self._model)
            self._model = None


def _is_plain_greedy(s: Sampling) -> bool:
    return (
        s.temperature <= 0
        and s.repeat_penalty == 1.0
        and not s.presence_penalty
        and not s.frequency_penalty
        and not s.grammar
    )
