"""How many layers of a model go on which GPU: a pure planner, from tensor sizes and free memory.

``plan(profile, devices, num_ctx=..., num_parallel=...)`` decides where llama.cpp should put a
model: how many of its repeating layers (``blk.N.*``) go on each GPU and how many stay on the CPU,
whether the output layer is offloaded, and what that costs on every device (weights, KV cache,
compute buffers, a fixed per-GPU overhead) against the free memory each ``Device`` reports. It
reads no hardware and allocates nothing; ``plan_for_gguf`` adds reading the sizes from a GGUF
header. The result feeds llama.cpp (``n_gpu_layers``, ``tensor_split``), ``corral ps``
(``processor_label``) and ``corral show --fit`` (``explain()``).

How llama.cpp places a model, which this mirrors (``llama_model::load_tensors``):

* The input embedding (``token_embd``) always stays in host memory.
* ``n_gpu_layers = N`` offloads the *last* N repeating layers; ``N > n_layer`` offloads the output
  layer (``output_norm`` + ``output``) too. A model with tied embeddings has no ``output`` tensor
  and llama.cpp copies ``token_embd`` to the output layer's device instead.
* With several GPUs, ``tensor_split`` gives each GPU's share of the offloaded layers; the shares
  are used as cumulative fractions, so passing the per-GPU layer counts of this plan reproduces it
  exactly, GPU 0 taking the first offloaded layers and the last GPU the output layer.
* Each layer's KV cache lives on its layer's device: ``n_ctx * (head_dim_k + head_dim_v) *
  n_head_kv * bytes_per_element`` per layer, where ``n_ctx = num_ctx * num_parallel`` (Corral
  uses one unified KV pool for all slots).

The compute-buffer estimate was calibrated against llama.cpp's own report (``sched_reserve:
compute buffer size``) for SmolLM2-135M: the logits of one micro-batch (``4 * n_batch *
n_vocab`` bytes) dominate with flash attention, and the attention scores (``4 * n_batch *
n_ctx * n_head``) without it. The per-GPU overhead stands for the CUDA/HIP context, cuBLAS
workspaces and allocator slack, which no GGUF describes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from corral.engines.llamacpp.profile import ModelProfile, profile_from_gguf
from corral.errors import InsufficientMemory
from corral.formats.units import MiB, human_bytes
from corral.hookspecs import Device

GPU_OVERHEAD = 512 * MiB  # CUDA/HIP context, cuBLAS/hipBLAS workspace, allocator slack, per GPU used

# Bytes per KV-cache element for llama.cpp's cache types (quantised types: block bytes / block size).
KV_CACHE_BYTES: dict[str, float] = {"f32": 4.0, "f16": 2.0, "bf16": 2.0, "q8_0": 34 / 32, "q4_0": 18 / 32}

_QUANTISED_KV = {"q8_0": 32, "q4_0": 32}  # block sizes: a head's K and V rows must hold whole blocks


def kv_cache_type_for(requested: str, flash_attention: bool, head_dims: Sequence[int] = ()) -> tuple[str, str]:
    """The KV cache type llama.cpp is given, and why it is not the one asked for ("" when it is).

    As Ollama does with OLLAMA_KV_CACHE_TYPE, a quantised cache falls back to f16 where llama.cpp
    cannot use it: without flash attention (which the quantised V cache needs), or for heads whose
    size is not a whole number of blocks. The memory estimate and the runner both call this."""
    if requested not in KV_CACHE_BYTES:
        raise ValueError(f"unknown KV cache type {requested!r} (one of {', '.join(KV_CACHE_BYTES)})")
    block = _QUANTISED_KV.get(requested)
    if block is None:
        return requested, ""
    if not flash_attention:
        return "f16", f"the {requested} KV cache needs flash attention, which is off: f16 is used"
    if any(d % block for d in head_dims):
        return "f16", (
            f"the {requested} KV cache needs heads of a multiple of {block} values, "
            f"and this model's are {max(head_dims)}: f16 is used"
        )
    return requested, ""


@dataclass(frozen=True)
class DeviceUse:
    """What the plan puts on one device, in bytes."""

    device: Device | None  # None: host memory with no CPU device to check it against
    layers: int = 0  # repeating layers placed here
    output: bool = False  # the output layer is here
    weights: int = 0
    kv_cache: int = 0
    compute: int = 0  # compute (scratch) buffers, estimated
    overhead: int = 0  # fixed runtime overhead (GPUs)
    first_layer: int = 0  # index of the first repeating layer here (meaningful when layers > 0)

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache + self.compute + self.overhead

    @property
    def free(self) -> int | None:
        return self.device.free_memory if self.device is not None else None

    @property
    def fits(self) -> bool:
        return self.free is None or self.total <= self.free

    @property
    def label(self) -> str:
        if self.device is None:
            return "CPU"
        if self.device.kind == "cpu":
            return "CPU"
        return f"GPU {self.device.index}"


@dataclass(frozen=True)
class Plan:
    """Where each part of a model goes, and what it costs on each device."""

    model: ModelProfile
    num_ctx: int  # tokens of context per sequence (capped at the training context)
    num_parallel: int
    num_batch: int
    kv_cache_type: str
    flash_attention: bool
    gpus: tuple[DeviceUse, ...]  # every GPU considered, in device order (some may hold nothing)
    cpu: DeviceUse
    forced: bool = False  # num_gpu fixed the layer count
    notes: tuple[str, ...] = ()

    # ---- placement -------------------------------------------------------------------------
    @property
    def n_ctx(self) -> int:
        """Cells of the unified KV cache (all slots together)."""
        return self.num_ctx * self.num_parallel

    @property
    def gpu_layers(self) -> int:
        return sum(g.layers for g in self.gpus)

    @property
    def cpu_layers(self) -> int:
        return self.cpu.layers

    @property
    def output_offloaded(self) -> bool:
        return any(g.output for g in self.gpus)

    @property
    def n_gpu_layers(self) -> int:
        """llama.cpp's ``n_gpu_layers``: offloaded repeating layers, plus one for the output layer."""
        return self.gpu_layers + (1 if self.output_offloaded else 0)

    @property
    def tensor_split(self) -> list[float]:
        """llama.cpp's ``tensor_split``: per GPU (by device index), its share of the offloaded layers."""
        return [float(g.layers + (1 if g.output else 0)) for g in self.gpus]

    @property
    def main_gpu(self) -> int:
        """The GPU holding the most offloaded layers (llama.cpp's ``main_gpu`` for small tensors)."""
        if not self.gpus:
            return 0
        best = max(self.gpus, key=lambda g: (g.layers + g.output, -g.device.index if g.device else 0))
        return best.device.index if best.device is not None else 0

    # ---- memory ----------------------------------------------------------------------------
    @property
    def gpu_bytes(self) -> int:
        return sum(g.total for g in self.gpus)

    @property
    def cpu_bytes(self) -> int:
        return self.cpu.total

    @property
    def total_bytes(self) -> int:
        return self.gpu_bytes + self.cpu_bytes

    @property
    def fits(self) -> bool:
        return self.cpu.fits and all(g.fits for g in self.gpus)

    @property
    def kv_cache_bytes(self) -> int:
        return self.cpu.kv_cache + sum(g.kv_cache for g in self.gpus)

    # ---- what `corral ps` shows ------------------------------------------------------------
    @property
    def gpu_percent(self) -> int:
        """Share of the offloadable part (layers with their KV cache, and the output layer) on GPUs."""
        if self.gpu_layers == 0 and not self.output_offloaded:
            return 0
        if self.cpu_layers == 0 and self.output_offloaded:
            return 100
        on_gpu = sum(g.weights + g.kv_cache for g in self.gpus)
        on_cpu = self.cpu.weights - self.model.input_bytes + self.cpu.kv_cache
        percent = round(100 * on_gpu / max(on_gpu + on_cpu, 1))
        return min(max(percent, 1), 99)  # a partial split never reads as all on one side

    @property
    def cpu_percent(self) -> int:
        return 100 - self.gpu_percent

    @property
    def processor_label(self) -> str:
        """Ollama's PROCESSOR column: "100% GPU", "100% CPU" or "48%/52% CPU/GPU"."""
        if self.gpu_percent == 100:
            return "100% GPU"
        if self.gpu_percent == 0:
            return "100% CPU"
        return f"{self.cpu_percent}%/{self.gpu_percent}% CPU/GPU"

    # ---- for people --------------------------------------------------------------------------
    def placement(self) -> str:
        n = self.model.n_layer
        if self.gpu_layers == 0 and not self.output_offloaded:
            return f"all {n} layers on the CPU"
        parts = [f"{g.layers} on {g.label}" for g in self.gpus if g.layers or g.output]
        where = ", ".join(parts)
        text = f"{self.gpu_layers}/{n} layers on GPU ({where})"
        output = next(g.label for g in self.gpus if g.output) if self.output_offloaded else "CPU"
        text += f", output layer on {output}"
        if self.cpu_layers:
            text += f", {self.cpu_layers} layers on CPU"
        return text

    def explain(self) -> str:
        """The estimate against free memory, device by device (``corral show --fit``)."""
        m = self.model
        kv_type = self.kv_cache_type
        lines = [
            f"Model:     {m.name} ({m.architecture}, {m.n_layer} layers, {human_bytes(m.weights_bytes)} of weights)",
            f"Context:   {self.num_ctx} tokens x {self.num_parallel} parallel = {self.n_ctx} tokens of "
            f"{kv_type} KV cache ({human_bytes(self.kv_cache_bytes)})",
            f"Placement: {self.placement()} -> {self.processor_label}" + (" (num_gpu forced)" if self.forced else ""),
            f"llama.cpp: n_gpu_layers={self.n_gpu_layers}"
            + (f", tensor_split={_fmt_split(self.tensor_split)}" if len(self.gpus) > 1 else ""),
            "",
        ]
        header = ["DEVICE", "LAYERS", "WEIGHTS", "KV CACHE", "COMPUTE", "OVERHEAD", "TOTAL", "FREE", "FITS"]
        rows = []
        for use in (*self.gpus, self.cpu):
            name = use.label if use.device is None else f"{use.label} {use.device.name}"
            layers = str(use.layers) + (" +out" if use.output else "")
            rows.append(
                [
                    name[:40],
                    layers,
                    human_bytes(use.weights),
                    human_bytes(use.kv_cache),
                    human_bytes(use.compute),
                    human_bytes(use.overhead),
                    human_bytes(use.total),
                    "unknown" if use.free is None else human_bytes(use.free),
                    "yes" if use.fits else "NO",
                ]
            )
        free_total = sum(u.free or 0 for u in (*self.gpus, self.cpu))
        rows.append(
            [
                "total",
                str(m.n_layer) + " +out",
                "",
                "",
                "",
                "",
                human_bytes(self.total_bytes),
                human_bytes(free_total),
                "yes" if self.fits else "NO",
            ]
        )
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
        for row in [header, *rows]:
            cells = (
                cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths, strict=True))
            )
            lines.append("  ".join(cells).rstrip())
        lines += [f"Note: {note}" for note in self.notes]
        return "\n".join(lines)


# ---- the planner ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Costs:
    layer: tuple[int, ...]  # weights + KV per repeating layer
    layer_weights: tuple[int, ...]
    layer_kv: tuple[int, ...]
    output_weights_gpu: int  # output layer weights when on a GPU (tied: includes the token_embd copy)
    output_weights_cpu: int  # output layer weights when on the CPU (tied: only output_norm)
    graph_layers: int  # compute buffer of a device running repeating layers
    graph_output: int  # compute buffer of the device computing the logits
    graph_host_min: int  # host compute/staging buffers when everything is offloaded
    host_output_buffer: int  # llama.cpp's logits output buffer, always in host memory


def plan(
    model: ModelProfile,
    devices: Sequence[Device],
    *,
    num_ctx: int,
    num_parallel: int = 1,
    num_gpu: int | None = None,
    num_batch: int = 512,
    kv_cache_type: str = "f16",
    flash_attention: bool = True,
    gpu_overhead: int = GPU_OVERHEAD,
) -> Plan:
    """Place ``model`` on ``devices`` (GPUs and at most one CPU); raise ``InsufficientMemory`` if it cannot fit.

    ``num_gpu`` forces how many layers to offload, as Ollama's option does (``None`` or negative: as
    many as fit; more than the model has: all of them and the output layer). A forced count that
    overfills a device raises too, with the numbers, instead of failing later inside llama.cpp.
    Without a CPU device, host memory is reported but not checked.
    """
    if num_ctx < 1 or num_parallel < 1 or num_batch < 1:
        raise ValueError("num_ctx, num_parallel and num_batch must be positive")
    notes: list[str] = []
    kv_cache_type, why = kv_cache_type_for(kv_cache_type, flash_attention, (model.head_dim_k, model.head_dim_v))
    if why:
        notes.append(why)
    seq_ctx = num_ctx
    if model.n_ctx_train and num_ctx > model.n_ctx_train:
        seq_ctx = model.n_ctx_train
        notes.append(f"num_ctx {num_ctx} is capped at the model's training context of {model.n_ctx_train} tokens")
    costs = _costs(
        model, seq_ctx * num_parallel, num_parallel + 1, num_batch, KV_CACHE_BYTES[kv_cache_type], flash_attention
    )

    gpus = sorted((d for d in devices if d.kind == "gpu"), key=lambda d: d.index)
    cpus = [d for d in devices if d.kind == "cpu"]
    cpu_device = cpus[0] if cpus else None
    if cpu_device is None:
        notes.append("no CPU device given: host memory is not checked")
    capacities = [d.free_memory - gpu_overhead - costs.graph_layers for d in gpus]

    forced = num_gpu is not None and num_gpu >= 0
    max_slots = model.n_layer + 1  # every repeating layer and the output layer
    if forced:
        assert num_gpu is not None
        n = min(num_gpu, max_slots)
        if n and not gpus:
            notes.append(f"num_gpu={num_gpu} ignored: there is no GPU")
            n = 0
        split = _split(costs, n, capacities, allow_overflow=True)
    else:
        caps = [max(c, 0) for c in capacities]
        n = max_slots
        while n > 0 and _fill(_slots(costs, n), caps) is None:  # a greedy fill is exact for feasibility
            n -= 1
        split = _split(costs, n, capacities) if n else [0] * len(gpus)
    assert split is not None

    result = _build(
        model,
        costs,
        gpus,
        cpu_device,
        split,
        n,
        gpu_overhead,
        seq_ctx,
        num_parallel,
        num_batch,
        kv_cache_type,
        flash_attention,
        forced,
        notes,
    )
    if not result.fits:
        raise InsufficientMemory(_no_fit_message(result, num_gpu if forced else None))
    return result


def _costs(model: ModelProfile, n_ctx: int, n_seq: int, n_batch: int, kv_bpe: float, flash_attention: bool) -> _Costs:
    kv = tuple(model.kv_bytes(i, n_ctx, kv_bpe) for i in range(model.n_layer))
    batch = n_batch
    activations = 4 * batch * (4 * model.n_embd + 2 * model.n_ff)
    if flash_attention:
        attention = 2 * batch * n_ctx  # the f16 mask; FA never materialises the scores
    else:
        attention = 4 * batch * n_ctx * (model.n_head + 1)  # scores + mask, one layer at a time
    graph_layers = activations + attention
    graph_logits = 4 * batch * (model.n_vocab + model.n_embd)
    return _Costs(
        layer=tuple(w + k for w, k in zip(model.layer_bytes, kv, strict=False)),
        layer_weights=tuple(model.layer_bytes),
        layer_kv=kv,
        output_weights_gpu=model.output_bytes + model.tied_output_bytes,
        output_weights_cpu=model.output_bytes,
        graph_layers=graph_layers,
        graph_output=max(graph_logits, graph_layers),
        graph_host_min=4 * batch * model.n_embd * 2,
        host_output_buffer=4 * model.n_vocab * n_seq,  # logits of one token per sequence; llama.cpp grows it on demand
    )


def _slots(costs: _Costs, n: int) -> list[int]:
    """Bytes of the last ``n`` offloadable slots, in llama.cpp's order (the output layer last)."""
    n_layer = len(costs.layer)
    layers = min(n, n_layer)
    slots = list(costs.layer[n_layer - layers :])
    if n > n_layer:  # the output layer; its device also computes the logits
        slots.append(costs.output_weights_gpu + (costs.graph_output - costs.graph_layers))
    return slots


def _fill(slots: list[int], budgets: Sequence[float]) -> list[int] | None:
    """Contiguous greedy fill: each device in order takes slots while they fit its budget."""
    counts = []
    i = 0
    for budget in budgets:
        used = 0
        start = i
        while i < len(slots) and used + slots[i] <= budget:
            used += slots[i]
            i += 1
        counts.append(i - start)
    return counts if i == len(slots) else None


def _split(costs: _Costs, n: int, capacities: list[int], allow_overflow: bool = False) -> list[int] | None:
    """Split the last ``n`` slots over the GPUs so each fills the same fraction of its capacity.

    Returns the slot count per GPU, or None when they do not fit (or, with ``allow_overflow``,
    the split that overfills the GPUs least, for a forced layer count).
    """
    if not capacities:
        return [] if n == 0 else None
    slots = _slots(costs, n)
    if not slots:
        return [0] * len(capacities)
    caps = [max(c, 0) for c in capacities]
    if sum(caps) <= 0:
        if not allow_overflow:
            return None
        caps = [1] * len(capacities)  # nothing is free anywhere: spread evenly, it overflows anyway
    # Smallest fill ratio r with a contiguous split where GPU i holds at most r * capacity_i.
    lo, hi = 0.0, (sum(slots) + max(slots)) / max(min(c for c in caps if c > 0), 1) + 1.0
    if _fill(slots, [hi * c for c in caps]) is None:
        return None
    for _ in range(64):
        mid = (lo + hi) / 2
        if _fill(slots, [mid * c for c in caps]) is None:
            lo = mid
        else:
            hi = mid
    if hi > 1.0 and not allow_overflow:
        return None
    return _fill(slots, [hi * c for c in caps])


def _build(
    model: ModelProfile,
    costs: _Costs,
    gpus: list[Device],
    cpu_device: Device | None,
    split: list[int],
    n: int,
    gpu_overhead: int,
    seq_ctx: int,
    num_parallel: int,
    num_batch: int,
    kv_cache_type: str,
    flash_attention: bool,
    forced: bool,
    notes: list[str],
) -> Plan:
    n_layer = model.n_layer
    output_on_gpu = n > n_layer
    gpu_layer_total = min(n, n_layer)
    first = n_layer - gpu_layer_total
    uses: list[DeviceUse] = []
    last_with_slots = max((i for i, c in enumerate(split) if c), default=-1)
    layer = first
    for i, (device, count) in enumerate(zip(gpus, split, strict=False)):
        has_output = output_on_gpu and i == last_with_slots
        layers = count - (1 if has_output else 0)
        weights = sum(costs.layer_weights[layer : layer + layers])
        kv = sum(costs.layer_kv[layer : layer + layers])
        compute = 0
        if layers:
            compute = costs.graph_layers
        if has_output:
            compute = costs.graph_output
            weights += costs.output_weights_gpu
        uses.append(
            DeviceUse(
                device=device,
                layers=layers,
                output=has_output,
                weights=weights,
                kv_cache=kv,
                compute=compute,
                overhead=gpu_overhead if count else 0,
                first_layer=layer,
            )
        )
        layer += layers
    cpu_weights = model.input_bytes + sum(costs.layer_weights[:first])
    cpu_kv = sum(costs.layer_kv[:first])
    if first or not output_on_gpu:
        cpu_compute = costs.graph_output if not output_on_gpu else costs.graph_layers
    else:
        cpu_compute = costs.graph_host_min
    if not output_on_gpu:
        cpu_weights += costs.output_weights_cpu
    cpu = DeviceUse(
        device=cpu_device,
        layers=first,
        output=not output_on_gpu,
        weights=cpu_weights,
        kv_cache=cpu_kv,
        compute=cpu_compute + costs.host_output_buffer,
        first_layer=0,
    )
    return Plan(
        model=model,
        num_ctx=seq_ctx,
        num_parallel=num_parallel,
        num_batch=num_batch,
        kv_cache_type=kv_cache_type,
        flash_attention=flash_attention,
        gpus=tuple(uses),
        cpu=cpu,
        forced=forced,
        notes=tuple(notes),
    )


def _no_fit_message(p: Plan, num_gpu: int | None) -> str:
    free = [(u.label, u.free) for u in (*p.gpus, p.cpu) if u.free is not None]
    free_total = sum(f for _, f in free)
    where = ", ".join(f"{label}: {human_bytes(f)}" for label, f in free)
    needs = (
        f"{p.model.name} needs {human_bytes(p.total_bytes)} (weights {human_bytes(p.model.weights_bytes)}, "
        f"KV cache {human_bytes(p.kv_cache_bytes)} for {p.n_ctx} tokens)"
    )
    over = [u for u in (*p.gpus, p.cpu) if not u.fits]
    detail = "; ".join(
        f"{u.label} would need {human_bytes(u.total)} with {human_bytes(u.free or 0)} free" for u in over
    )
    if num_gpu is not None:
        return (
            f"num_gpu={num_gpu} does not fit: {detail} ({p.placement()}); "
            "lower num_gpu or leave it unset to fit automatically"
        )
    if p.total_bytes > free_total:
        msg = f"{needs} but only {human_bytes(free_total)} is free ({where})"
    else:
        msg = f"{needs}; {human_bytes(free_total)} is free ({where}) but it does not split that way: {detail}"
    if p.kv_cache_bytes > p.total_bytes // 4:
        msg += "; a smaller num_ctx or num_parallel shrinks the KV cache"
    return msg


# ---- from a GGUF file --------------------------------------------------------------------------


def plan_for_gguf(
    path: Path | str,
    num_ctx: int,
    num_parallel: int,
    devices: Sequence[Device],
    num_gpu: int | None = None,
    **options: Any,
) -> Plan:
    """``plan`` for a GGUF file; ``options`` are plan()'s (num_batch, kv_cache_type, flash_attention, gpu_overhead)."""
    return plan(
        profile_from_gguf(path), devices, num_ctx=num_ctx, num_parallel=num_parallel, num_gpu=num_gpu, **options
    )


# ---- formatting ----------------------------------------------------------------------------------


def _fmt_split(split: list[float]) -> str:
    return "[" + ", ".join(str(int(s)) if math.isclose(s, int(s)) else f"{s:.2f}" for s in split) + "]"
