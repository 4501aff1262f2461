"""The plugin contract: what a Corral backend implements, on one screen.

A backend is a module listed in the entry-point group ``corral`` that implements
``corral_register_backends``. It hands Corral one or more ``Backend`` objects. A backend
probes its devices (cheaply, never raising), may estimate what a model will take, and loads
models into ``Runner`` objects. The per-token hot path is methods on the Runner, not hooks.
Import heavy libraries (llama_cpp, onnxruntime, mlx, pynvml) inside ``probe``/``estimate``/``load``,
never at module level.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol, runtime_checkable

import pluggy

hookspec = pluggy.HookspecMarker("corral")
hookimpl = pluggy.HookimplMarker("corral")


@dataclass(frozen=True)
class Device:
    """One compute device a backend can place a model on."""

    backend: str
    index: int
    name: str
    kind: Literal["cpu", "gpu"]
    total_memory: int  # bytes
    free_memory: int  # bytes
    details: dict[str, str] = field(default_factory=dict)  # driver, compute capability, gfx version…


@dataclass(frozen=True)
class Probe:
    """What a backend found on this machine. ``reason`` says why it is unavailable."""

    available: bool
    devices: tuple[Device, ...] = ()
    reason: str = ""


@dataclass(frozen=True)
class LoadSpec:
    """Everything a backend needs to load one model."""

    model_path: Path
    num_ctx: int  # context length of one sequence
    num_parallel: int  # sequences the runner must advance together
    num_thread: int | None = None  # None: the backend's best default
    num_batch: int = 512
    num_gpu: int | None = None  # layers to offload; None: the backend decides
    main_gpu: int | None = None  # device index of the one GPU to run the model on; None: the backend decides
    tensor_split: tuple[float, ...] = ()  # each GPU's share of the offloaded layers, by device index
    use_mmap: bool | None = None  # map the model file (True) or read it into memory; None: the engine decides
    adapters: tuple[Path, ...] = ()
    embedding: bool = False
    flash_attention: bool = True
    # llama.cpp's K and V cache type: f16, q8_0, q4_0 (the quantised ones need flash attention)
    kv_cache_type: str = "f16"
    devices: tuple[Device, ...] = ()
    # One KV pool all sequences share, so one request may take more than num_ctx of it (a per-request
    # num_ctx above the load's); False: a stream of num_ctx per sequence, which llama.cpp attends faster
    # (a token attends only its own sequence's cells, as in llama-server's default).
    kv_unified: bool = False


@dataclass(frozen=True)
class Estimate:
    """What loading a model will take; ``spec`` is the one to load (e.g. with num_gpu filled in)."""

    spec: LoadSpec
    size_bytes: int  # weights, caches and compute buffers, on every device together
    size_on_device: int  # the part of it on accelerators
    processor: str = ""  # Ollama's PROCESSOR column, e.g. "48%/52% CPU/GPU"; "": from the sizes

    @property
    def processor_label(self) -> str:
        if self.processor:
            return self.processor
        if self.size_on_device <= 0 or self.size_bytes <= 0:
            return "100% CPU"
        gpu = min(round(100 * self.size_on_device / self.size_bytes), 100)
        return "100% GPU" if gpu == 100 else f"{100 - gpu}%/{gpu}% CPU/GPU"


@dataclass(frozen=True)
class Sampling:
    """Per-sequence sampling settings; temperature 0 means greedy."""

    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.9
    min_p: float = 0.0
    typical_p: float = 1.0
    repeat_penalty: float = 1.1
    repeat_last_n: int = 64
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None
    grammar: str | None = None  # GBNF, e.g. for format=json
    logprobs: int | None = None  # report each sampled token's log-probability and this many alternatives (0-20)


@dataclass(frozen=True)
class TokenLogprobs:
    """A sampled token's log-probability and the most likely alternatives, under the model's own
    distribution: a log-softmax of the raw logits, before penalties, grammar and temperature."""

    token: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()


@dataclass(frozen=True)
class ModelInfo:
    """Facts about a loaded model that the core needs to drive it."""

    architecture: str
    n_ctx_train: int
    n_ctx: int  # tokens of KV cache available to one sequence
    n_vocab: int
    n_embd: int
    num_parallel: int
    bos_token: int | None
    add_bos: bool
    bos_text: str  # what the chat template calls bos_token / eos_token
    eos_text: str
    chat_template: str | None
    size_bytes: int
    size_on_device: int  # bytes placed on an accelerator
    embed_tokens: int = 0  # the most tokens one embedding input may have (llama.cpp: one batch); 0: n_ctx
    # True: the num_parallel sequences share one KV pool of n_ctx * num_parallel cells. False: each has
    # its own n_ctx, and an embedding runs in a free slot's sequence (``Runner.embed(texts, seq=...)``).
    kv_unified: bool = True


@dataclass(frozen=True)
class SequenceStep:
    """Feed ``tokens`` to sequence ``seq`` (appended after what its cache holds)."""

    seq: int
    tokens: Sequence[int]
    sample: bool = True  # sample the next token after these ones


@runtime_checkable
class Runner(Protocol):
    """A loaded model. One owner thread calls it; it never needs to be thread-safe."""

    info: ModelInfo

    def tokenize(self, text: str, *, special: bool = True, add_bos: bool = False) -> list[int]:
        """Text to token ids; ``special`` parses control tokens like <|im_end|>."""

    def token_bytes(self, token: int) -> bytes:
        """The bytes one token stands for (may be a partial UTF-8 character)."""

    def is_end_of_generation(self, token: int) -> bool:
        """True for EOS/EOT-like tokens."""

    def set_sampling(self, seq: int, sampling: Sampling) -> None:
        """Use these settings for ``seq`` from now on (resets its sampler state)."""

    def step(self, batch: Sequence[SequenceStep]) -> dict[int, int]:
        """Advance all listed sequences in one batched decode; return the next token per
        sequence that asked to sample."""

    def cached(self, seq: int) -> int:
        """How many tokens ``seq``'s cache holds."""

    # Optional: ``logprobs(seq) -> TokenLogprobs | None``, the last token sampled for a sequence whose
    # Sampling asked for ``logprobs`` (see corral.engines.sampling.token_logprobs); a runner without it
    # reports none.

    def truncate(self, seq: int, keep: int) -> int:
        """Forget ``seq``'s cache past its first ``keep`` tokens (0 clears it); return what is kept,
        which may be 0 where the cache cannot drop a tail."""

    # Optional: ``shift(seq, keep, discard) -> bool``, context shift: drop ``discard`` cached tokens after
    # the first ``keep`` and move the rest left, so the sequence goes on with room to grow; False where
    # the cache cannot drop a span (the caller then re-reads what it keeps, as Ollama does).

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """One pooled, unnormalised embedding per text."""

    def close(self) -> None:
        """Free the model; the runner is unusable afterwards."""


class Backend(Protocol):
    """A kind of hardware and the engines that run models on it."""

    name: str  # "cpu", "cuda", … (what --backend takes)
    priority: int  # the best available backend wins: cuda 40 > rocm 30 > metal 20 > cpu 10
    description: str

    def probe(self) -> Probe:
        """Find devices. Cheap and idempotent; say why in ``Probe.reason`` when unavailable."""

    def load(self, spec: LoadSpec) -> Runner:
        """Load a model file; raise ``corral.errors.CorralError`` subclasses on bad input."""

    # Optional: ``estimate(self, spec: LoadSpec, devices: Sequence[Device]) -> Estimate | None``.
    # What ``spec`` would take on ``devices`` (this backend's, probed just now, free memory as it is);
    # raise ``corral.errors.InsufficientMemory`` when it cannot fit, and the scheduler unloads idle
    # models and asks again. None: nothing to report. Without it, models load unchecked.
    # Optional: ``explain(self, spec: LoadSpec, devices: Sequence[Device]) -> str``, how ``estimate``
    # sees it, device by device, for ``corral show --fit`` (a model that cannot fit is explained, not
    # raised). Without it, ``--fit`` shows the estimate's sizes.
    # Optional: ``prepare(self) -> None``, import the engine's libraries ahead of a load; a spare runner
    # process calls it while it waits for its first model, so that load pays only for reading the file.
    # Errors are logged, never raised to a user.


class HookSpecs:
    @hookspec
    def corral_register_backends(self, register: Callable[[Backend], None]) -> None:
        """Call ``register(backend)`` for each backend this plugin provides."""
