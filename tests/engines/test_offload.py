"""The offload planner: which layers go on which GPU, against recorded device descriptions and real GGUFs."""

from __future__ import annotations

import bisect
import re
from dataclasses import replace
from pathlib import Path

import gguf
import numpy as np
import pytest

from corral.engines.llamacpp.offload import (
    GPU_OVERHEAD,
    InsufficientMemory,
    ModelProfile,
    plan,
    plan_for_gguf,
    profile_from_gguf,
)
from corral.errors import CorralError
from corral.formats.units import GiB, MiB
from corral.hookspecs import Device

# ---- recorded devices (as the cuda and cpu probes describe them; free memory from nvidia-smi / MemAvailable) ----

RTX_4090 = Device(
    "cuda", 0, "NVIDIA GeForce RTX 4090", "gpu", total_memory=24564 * MiB, free_memory=23_170 * MiB,
    details={"compute_capability": "8.9", "driver": "550.54.14", "nvml_index": "0"},
)
GTX_1650 = Device(
    "cuda", 0, "NVIDIA GeForce GTX 1650", "gpu", total_memory=4096 * MiB, free_memory=3_780 * MiB,
    details={"compute_capability": "7.5", "driver": "535.171.04", "nvml_index": "0"},
)
RTX_A6000 = Device(
    "cuda", 0, "NVIDIA RTX A6000", "gpu", total_memory=49140 * MiB, free_memory=48_400 * MiB,
    details={"compute_capability": "8.6", "driver": "550.54.14", "nvml_index": "0"},
)
RTX_3090 = Device(
    "cuda", 1, "NVIDIA GeForce RTX 3090", "gpu", total_memory=24576 * MiB, free_memory=24_100 * MiB,
    details={"compute_capability": "8.6", "driver": "550.54.14", "nvml_index": "1"},
)
RTX_3060 = Device(
    "cuda", 1, "NVIDIA GeForce RTX 3060", "gpu", total_memory=12288 * MiB, free_memory=11_900 * MiB,
    details={"compute_capability": "8.6", "driver": "550.54.14", "nvml_index": "1"},
)
RYZEN_64G = Device(
    "cpu", 0, "AMD Ryzen 9 7950X 16-Core Processor", "cpu", total_memory=64 * GiB, free_memory=52 * GiB,
    details={"physical_cores": "16", "logical_cpus": "32"},
)
LAPTOP_16G = Device(
    "cpu", 0, "Intel(R) Core(TM) i7-1165G7 @ 2.80GHz", "cpu", total_memory=16 * GiB, free_memory=int(9.5 * GiB),
    details={"physical_cores": "4", "logical_cpus": "8"},
)


def llama_like(name: str, n_layer: int, n_embd: int, n_head: int, n_head_kv: int, n_ff: int, n_vocab: int,
               bits: float, ctx_train: int = 131072) -> ModelProfile:
    """A llama-shaped model at ``bits`` per weight (the shapes of Llama 3.1 8B / 70B)."""
    head = n_embd // n_head
    per_layer = (n_embd * n_embd * 2 + 2 * n_embd * head * n_head_kv + 3 * n_embd * n_ff) * bits / 8 + 2 * 4 * n_embd
    return ModelProfile(
        n_layer=n_layer, n_embd=n_embd, n_head=n_head, n_head_kv=(n_head_kv,) * n_layer, head_dim_k=head,
        head_dim_v=head, n_ff=n_ff, n_vocab=n_vocab, layer_bytes=(int(per_layer),) * n_layer,
        input_bytes=int(n_vocab * n_embd * bits / 8), output_bytes=int(n_vocab * n_embd * 6.5625 / 8) + 4 * n_embd,
        n_ctx_train=ctx_train, name=name,
    )


LLAMA_8B = llama_like("llama3.1:8b-q4_K_M", 32, 4096, 32, 8, 14336, 128256, 4.5)
LLAMA_70B = llama_like("llama3.1:70b-q4_K_M", 80, 8192, 64, 8, 28672, 128256, 4.5)


def llama_cpp_layer_devices(n_layer: int, n_gpu_layers: int, tensor_split: list[float]) -> list[int | None]:
    """llama_model::load_tensors' placement: the device of each layer (the output layer last); None is the CPU."""
    splits = np.cumsum(np.array(tensor_split, dtype=np.float32), dtype=np.float32)
    splits = (splits / splits[-1]).astype(np.float32).tolist()
    start = max(n_layer - n_gpu_layers, 0)
    act = min(n_gpu_layers, n_layer + 1)
    out: list[int | None] = []
    for il in range(n_layer + 1):
        if il < start or il - start >= act:
            out.append(None)
        else:
            out.append(bisect.bisect_right(splits, float(np.float32(il - start) / np.float32(act))))
    return out


def plan_layer_devices(p) -> list[int | None]:  # type: ignore[no-untyped-def]
    devices: list[int | None] = [None] * (p.model.n_layer + 1)
    for i, g in enumerate(p.gpus):
        for layer in range(g.first_layer, g.first_layer + g.layers):
            devices[layer] = i
        if g.output:
            devices[p.model.n_layer] = i
    return devices


# ---- one GPU --------------------------------------------------------------------------------------


def test_a_model_that_fits_goes_entirely_on_the_gpu() -> None:
    p = plan(LLAMA_8B, [RTX_4090, RYZEN_64G], num_ctx=4096, num_parallel=1)
    (gpu,) = p.gpus
    assert (gpu.layers, gpu.output, p.cpu_layers) == (32, True, 0)
    assert p.n_gpu_layers == 33 and p.tensor_split == [33.0]
    assert p.processor_label == "100% GPU"
    # 4096 cells x (128 + 128) x 8 KV heads x 2 bytes x 32 layers
    assert gpu.kv_cache == 512 * MiB and p.cpu.kv_cache == 0
    assert gpu.weights == sum(LLAMA_8B.layer_bytes) + LLAMA_8B.output_bytes
    assert p.cpu.weights == LLAMA_8B.input_bytes  # the token embedding stays in host memory
    assert gpu.overhead == GPU_OVERHEAD
    assert gpu.total < RTX_4090.free_memory and p.fits
    assert p.total_bytes == gpu.total + p.cpu.total


def test_a_model_too_big_for_the_gpu_is_split_with_the_last_layers_offloaded() -> None:
    p = plan(LLAMA_8B, [GTX_1650, RYZEN_64G], num_ctx=4096, num_parallel=1)
    (gpu,) = p.gpus
    assert 0 < gpu.layers < 32 and not p.output_offloaded
    assert gpu.layers + p.cpu_layers == 32
    assert gpu.first_layer == 32 - gpu.layers  # llama.cpp offloads the last n_gpu_layers
    assert p.n_gpu_layers == gpu.layers
    assert gpu.total <= GTX_1650.free_memory
    one_more = LLAMA_8B.layer_bytes[0] + gpu.kv_cache // gpu.layers
    assert gpu.total + one_more > GTX_1650.free_memory  # as many layers as fit, no fewer
    assert re.fullmatch(r"(\d+)%/(\d+)% CPU/GPU", p.processor_label)
    cpu_pct, gpu_pct = map(int, re.findall(r"\d+", p.processor_label))
    assert cpu_pct + gpu_pct == 100 and abs(gpu_pct - 100 * gpu.layers / 33) < 6
    assert p.cpu.compute > 0 and gpu.compute > 0


def test_without_a_gpu_everything_is_on_the_cpu() -> None:
    p = plan(LLAMA_8B, [RYZEN_64G], num_ctx=4096, num_parallel=2)
    assert p.gpus == () and p.cpu_layers == 32 and p.n_gpu_layers == 0
    assert p.processor_label == "100% CPU" and p.tensor_split == []
    assert p.cpu.weights == LLAMA_8B.weights_bytes
    assert p.cpu.kv_cache == 2 * 512 * MiB  # two slots share one pool of 8192 cells


def test_the_output_layer_is_offloaded_only_after_every_repeating_layer() -> None:
    # Room for all 32 layers but not for the 430 MB output layer as well.
    need = plan(LLAMA_8B, [RTX_4090], num_ctx=4096).gpus[0].total
    tight = Device("cuda", 0, "tight", "gpu", 24 * GiB, need - 300 * MiB)
    p = plan(LLAMA_8B, [tight, RYZEN_64G], num_ctx=4096)
    assert p.gpu_layers == 32 and not p.output_offloaded and p.n_gpu_layers == 32
    assert p.processor_label.endswith("CPU/GPU")


# ---- does not fit -----------------------------------------------------------------------------------


def test_a_model_that_fits_nowhere_says_what_it_needs_and_what_is_free() -> None:
    with pytest.raises(InsufficientMemory) as err:
        plan(LLAMA_70B, [RTX_4090, LAPTOP_16G], num_ctx=4096, num_parallel=1)
    assert isinstance(err.value, CorralError)
    message = str(err.value)
    assert re.search(
        r"llama3\.1:70b-q4_K_M needs \d+\.\d GiB \(weights \d+\.\d GiB, KV cache 1\.2 GiB for 4096 tokens\) "
        r"but only 32\.1 GiB is free \(GPU 0: 22\.6 GiB, CPU: 9\.5 GiB\)",
        message,
    ), message


def test_cpu_only_without_enough_ram_is_an_error_too() -> None:
    with pytest.raises(InsufficientMemory, match=r"needs .* but only 9\.5 GiB is free \(CPU: 9\.5 GiB\)"):
        plan(LLAMA_70B, [LAPTOP_16G], num_ctx=2048)


def test_a_big_context_is_named_as_the_thing_to_shrink() -> None:
    with pytest.raises(InsufficientMemory, match="smaller num_ctx or num_parallel"):
        plan(LLAMA_8B, [LAPTOP_16G], num_ctx=131072, num_parallel=4)


def test_without_a_cpu_device_host_memory_is_not_checked() -> None:
    p = plan(LLAMA_70B, [RTX_4090], num_ctx=2048)
    assert p.fits and p.cpu.free is None and 0 < p.gpu_layers < 80
    assert "host memory is not checked" in p.explain()


# ---- several GPUs -----------------------------------------------------------------------------------


def test_layers_are_split_across_gpus_in_proportion_to_free_memory() -> None:
    p = plan(LLAMA_70B, [RTX_A6000, RTX_3090, RYZEN_64G], num_ctx=8192, num_parallel=1)
    a6000, r3090 = p.gpus
    assert p.gpu_layers == 80 and p.output_offloaded and p.cpu_layers == 0
    assert p.processor_label == "100% GPU"
    assert r3090.output and not a6000.output  # llama.cpp puts the output layer on the last GPU
    # the layers divide as the usable memory does (free less overhead and compute buffers)
    usable = [g.device.free_memory - g.overhead - g.compute for g in p.gpus]  # type: ignore[union-attr]
    expected = 81 * usable[0] / sum(usable)
    assert abs((a6000.layers) - expected) <= 2, (a6000.layers, r3090.layers, expected)
    fill = [g.total / g.device.free_memory for g in p.gpus]  # type: ignore[union-attr]
    assert abs(fill[0] - fill[1]) < 0.1 and max(fill) <= 1.0
    assert p.tensor_split == [float(a6000.layers), float(r3090.layers + 1)]
    assert sum(p.tensor_split) == p.n_gpu_layers == 81


def test_tensor_split_reproduces_the_plan_in_llama_cpp() -> None:
    cases = [
        plan(LLAMA_70B, [RTX_A6000, RTX_3090, RYZEN_64G], num_ctx=8192),
        plan(LLAMA_70B, [replace(RTX_3090, index=0), replace(RTX_4090, index=1), RYZEN_64G], num_ctx=8192),
        plan(
            LLAMA_8B,
            [
                Device("cuda", 0, "a", "gpu", 4 * GiB, 3 * GiB),
                Device("cuda", 1, "b", "gpu", 2 * GiB, 1900 * MiB),
                RYZEN_64G,
            ],
            num_ctx=4096,
        ),
    ]
    for p in cases:
        assert plan_layer_devices(p) == llama_cpp_layer_devices(p.model.n_layer, p.n_gpu_layers, p.tensor_split)


def test_two_gpus_too_small_together_leave_the_first_layers_on_the_cpu() -> None:
    p = plan(LLAMA_70B, [replace(RTX_3090, index=0), RTX_3060, RYZEN_64G], num_ctx=4096)
    assert 0 < p.cpu_layers < 80 and all(g.layers > 15 for g in p.gpus) and not p.output_offloaded
    assert all(g.total <= g.device.free_memory for g in p.gpus)  # type: ignore[union-attr]
    assert p.gpus[0].first_layer == p.cpu_layers
    assert p.gpus[1].first_layer == p.cpu_layers + p.gpus[0].layers


# ---- num_gpu ----------------------------------------------------------------------------------------


def test_num_gpu_zero_forces_the_cpu() -> None:
    p = plan(LLAMA_8B, [RTX_4090, RYZEN_64G], num_ctx=4096, num_gpu=0)
    assert p.gpu_layers == 0 and p.n_gpu_layers == 0 and not p.output_offloaded and p.forced
    assert p.gpus[0].total == 0  # an unused GPU costs nothing, not even the runtime overhead
    assert p.processor_label == "100% CPU" and p.tensor_split == [0.0]
    assert p.cpu.weights == LLAMA_8B.weights_bytes


def test_num_gpu_sets_the_layer_count() -> None:
    p = plan(LLAMA_8B, [RTX_4090, RYZEN_64G], num_ctx=4096, num_gpu=10)
    assert (p.gpu_layers, p.cpu_layers, p.n_gpu_layers, p.gpus[0].first_layer) == (10, 22, 10, 22)
    everything = plan(LLAMA_8B, [RTX_4090, RYZEN_64G], num_ctx=4096, num_gpu=999)
    assert everything.n_gpu_layers == 33 and everything.processor_label == "100% GPU"
    auto = plan(LLAMA_8B, [GTX_1650, RYZEN_64G], num_ctx=4096, num_gpu=-1)  # Ollama's "as many as fit"
    assert not auto.forced and auto.gpu_layers == plan(LLAMA_8B, [GTX_1650, RYZEN_64G], num_ctx=4096).gpu_layers


def test_a_forced_num_gpu_that_overfills_the_gpu_says_so() -> None:
    with pytest.raises(InsufficientMemory, match=r"num_gpu=33 does not fit: GPU 0 would need .* with 3\.7 GiB free"):
        plan(LLAMA_8B, [GTX_1650, RYZEN_64G], num_ctx=4096, num_gpu=33)


def test_num_gpu_without_a_gpu_is_ignored() -> None:
    p = plan(LLAMA_8B, [RYZEN_64G], num_ctx=4096, num_gpu=20)
    assert p.gpu_layers == 0 and any("no GPU" in n for n in p.notes)


# ---- knobs --------------------------------------------------------------------------------------------


def test_kv_cache_type_and_flash_attention_change_the_estimate() -> None:
    f16 = plan(LLAMA_8B, [RYZEN_64G], num_ctx=8192)
    q8 = plan(LLAMA_8B, [RYZEN_64G], num_ctx=8192, kv_cache_type="q8_0")
    assert q8.kv_cache_bytes == f16.kv_cache_bytes * 34 // 64
    no_fa = plan(LLAMA_8B, [RYZEN_64G], num_ctx=8192, flash_attention=False)
    assert no_fa.cpu.compute > f16.cpu.compute  # attention scores are materialised without flash attention
    with pytest.raises(ValueError, match="unknown KV cache type"):
        plan(LLAMA_8B, [RYZEN_64G], num_ctx=8192, kv_cache_type="q3")


def test_a_quantised_kv_cache_falls_back_to_f16_where_llama_cpp_cannot_use_it() -> None:
    f16 = plan(LLAMA_8B, [RYZEN_64G], num_ctx=8192)
    q4 = plan(LLAMA_8B, [RYZEN_64G], num_ctx=8192, kv_cache_type="q4_0")
    assert (q4.kv_cache_type, q4.kv_cache_bytes, q4.notes) == ("q4_0", f16.kv_cache_bytes * 18 // 64, ())
    no_fa = plan(LLAMA_8B, [RYZEN_64G], num_ctx=8192, kv_cache_type="q8_0", flash_attention=False)
    assert no_fa.kv_cache_type == "f16" and no_fa.kv_cache_bytes == f16.kv_cache_bytes
    assert "the q8_0 KV cache needs flash attention, which is off: f16 is used" in no_fa.notes
    small_heads = replace(LLAMA_8B, head_dim_k=16, head_dim_v=16)
    odd = plan(small_heads, [RYZEN_64G], num_ctx=8192, kv_cache_type="q8_0")
    assert odd.kv_cache_type == "f16" and any("multiple of 32" in n for n in odd.notes)


def test_the_gpu_overhead_is_configurable() -> None:
    a = plan(LLAMA_8B, [RTX_4090, RYZEN_64G], num_ctx=4096, gpu_overhead=0)
    b = plan(LLAMA_8B, [RTX_4090, RYZEN_64G], num_ctx=4096, gpu_overhead=1 * GiB)
    assert b.gpus[0].total - a.gpus[0].total == 1 * GiB


def test_explain_lists_each_device_against_its_free_memory() -> None:
    text = plan(LLAMA_8B, [GTX_1650, RYZEN_64G], num_ctx=4096).explain()
    assert "GPU 0 NVIDIA GeForce GTX 1650" in text and "CPU AMD Ryzen 9 7950X" in text
    assert "3.7 GiB" in text and "52.0 GiB" in text  # free memory of each
    assert "n_gpu_layers=" in text and "CPU/GPU" in text
    for header in ("WEIGHTS", "KV CACHE", "COMPUTE", "OVERHEAD", "TOTAL", "FREE"):
        assert header in text


# ---- real files ------------------------------------------------------------------------------------


def test_the_tiny_gguf_profile_matches_its_tensors(tiny_gguf: Path) -> None:
    reader = gguf.GGUFReader(tiny_gguf)
    tensor_bytes = sum(int(t.n_bytes) for t in reader.tensors)
    profile = profile_from_gguf(tiny_gguf)
    assert profile.weights_bytes == tensor_bytes <= profile.file_size  # type: ignore[operator]
    assert profile.n_layer == len({t.name.split(".")[1] for t in reader.tensors if t.name.startswith("blk.")})
    assert all(b > 0 for b in profile.layer_bytes) and len(set(profile.layer_bytes)) == 1
    p = plan_for_gguf(tiny_gguf, 256, 2, [RYZEN_64G])
    assert p.fits and p.processor_label == "100% CPU" and p.cpu.weights == profile.weights_bytes
    on_gpu = plan_for_gguf(tiny_gguf, 256, 2, [RTX_4090, RYZEN_64G])
    assert on_gpu.processor_label == "100% GPU" and on_gpu.n_gpu_layers == profile.n_layer + 1


def test_smollm2_sizes_match_the_file_and_llama_cpp(smollm2: Path) -> None:
    profile = profile_from_gguf(smollm2)
    assert (profile.n_layer, profile.n_embd, profile.n_head, profile.n_head_kv[0]) == (30, 576, 9, 3)
    assert (profile.head_dim_k, profile.n_vocab, profile.n_ctx_train) == (64, 49152, 8192)
    size = smollm2.stat().st_size
    assert 0.97 * size < profile.weights_bytes < size  # everything but the header (vocabulary, template)
    assert profile.tied_output_bytes > 0  # SmolLM2 ties its output to token_embd
    p = plan_for_gguf(smollm2, 4096, 4, [RYZEN_64G])
    # What llama.cpp itself reports for this load (CORRAL_DEBUG=1, flash attention on):
    #   llama_kv_cache: size = 360.00 MiB (16384 cells, 30 layers, 5/1 seqs)
    #   sched_reserve: CPU compute buffer size = 98.26 MiB
    assert p.kv_cache_bytes == 360 * MiB
    assert abs(p.cpu.compute - 98.26 * MiB) < 0.1 * 98.26 * MiB
    assert p.cpu.weights == profile.weights_bytes  # llama.cpp: "CPU_Mapped model buffer size = 92.10 MiB"
    assert round(p.cpu.weights / MiB, 2) == 92.10


def test_smollm2_on_a_gpu_copies_the_tied_embedding(smollm2: Path) -> None:
    p = plan_for_gguf(smollm2, 4096, 4, [GTX_1650, RYZEN_64G])
    assert p.processor_label == "100% GPU" and p.n_gpu_layers == 31
    profile = p.model
    assert p.gpus[0].weights == sum(profile.layer_bytes) + profile.output_bytes + profile.tied_output_bytes
    assert p.cpu.weights == profile.input_bytes  # token_embd stays in host memory as well


def test_num_ctx_is_capped_at_the_training_context(smollm2: Path) -> None:
    p = plan_for_gguf(smollm2, 100_000, 1, [RYZEN_64G])
    assert p.num_ctx == 8192 and any("capped" in n for n in p.notes)


def test_a_damaged_file_is_an_invalid_model_error(tmp_path: Path) -> None:
    from corral.errors import InvalidModelFile

    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF\x03\x00\x00\x00" + b"\xff" * 20)
    with pytest.raises(InvalidModelFile):
        plan_for_gguf(bad, 2048, 1, [RYZEN_64G])
