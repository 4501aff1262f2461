"""Load options reach llama.cpp: main_gpu, use_mmap and the planner's tensor_split arrive in the
llama_model_params struct that llama-cpp-python hands to llama_model_load_from_file.

These tests capture that struct on a CPU build; whether a GPU build then places the layers as told
is llama.cpp's part and is not checked here (no GPU on the test machine).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import llama_cpp
import pytest

from corral.engines.llamacpp.runner import LlamaCppRunner
from corral.errors import BadRequest, InvalidModelFile
from corral.hookspecs import LoadSpec
from runnerchecks import greedy


@dataclasses.dataclass
class Captured:
    n_gpu_layers: int
    split_mode: int
    main_gpu: int
    load_mode: int
    lazy_mode: int
    tensor_split: list[float] | None


def capture_loads(monkeypatch: pytest.MonkeyPatch, *, then_load: bool) -> list[Captured]:
    """Record the params of every llama_model_load_from_file call; load for real or return NULL."""
    seen: list[Captured] = []
    real = llama_cpp.llama_model_load_from_file

    def spy(path: bytes, params: Any) -> Any:
        split = params.tensor_split
        seen.append(Captured(
            params.n_gpu_layers, params.split_mode, params.main_gpu, params.load_mode, params.lazy_mode,
            [split[i] for i in range(llama_cpp.LLAMA_MAX_DEVICES)] if split else None,
        ))  # fmt: skip
        return real(path, params) if then_load else None

    monkeypatch.setattr(llama_cpp, "llama_model_load_from_file", spy)
    return seen


def spec(path: Path, **kw: Any) -> LoadSpec:
    return LoadSpec(model_path=path, num_ctx=128, num_parallel=1, num_thread=2, **kw)


def test_defaults_leave_llama_cpp_to_decide(tiny_gguf: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen = capture_loads(monkeypatch, then_load=True)
    defaults = llama_cpp.llama_model_default_params()
    LlamaCppRunner(spec(tiny_gguf)).close()
    assert seen == [Captured(0, defaults.split_mode, defaults.main_gpu, defaults.load_mode, defaults.lazy_mode, None)]


def test_use_mmap_false_reads_the_file_in_and_the_model_still_answers(
    tiny_gguf: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = capture_loads(monkeypatch, then_load=True)
    runner = LlamaCppRunner(spec(tiny_gguf, use_mmap=False))
    try:
        read_in = greedy(runner, "hello world", 8)
    finally:
        runner.close()
    assert (seen[0].load_mode, seen[0].lazy_mode) == (llama_cpp.LLAMA_LOAD_MODE_NONE, llama_cpp.LLAMA_LAZY_MODE_OFF)
    mapped = LlamaCppRunner(spec(tiny_gguf, use_mmap=True))
    try:
        assert greedy(mapped, "hello world", 8) == read_in
    finally:
        mapped.close()
    assert seen[1].load_mode == llama_cpp.LLAMA_LOAD_MODE_MMAP


def test_tensor_split_arrives_as_a_float_array_of_llama_max_devices(
    tiny_gguf: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = capture_loads(monkeypatch, then_load=True)
    LlamaCppRunner(spec(tiny_gguf, tensor_split=(3.0, 1.0))).close()  # a CPU build loads it all the same
    assert seen[0].tensor_split == [3.0, 1.0] + [0.0] * (llama_cpp.LLAMA_MAX_DEVICES - 2)


def test_main_gpu_runs_the_model_on_that_gpu_alone(tiny_gguf: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen = capture_loads(monkeypatch, then_load=False)  # a CPU build has no GPU 1 to load onto
    with pytest.raises(InvalidModelFile, match="could not load"):
        LlamaCppRunner(spec(tiny_gguf, main_gpu=1), n_gpu_layers=-1)
    assert (seen[0].n_gpu_layers, seen[0].split_mode, seen[0].main_gpu) == (-1, llama_cpp.LLAMA_SPLIT_MODE_NONE, 1)


def test_main_gpu_is_left_out_when_nothing_is_offloaded(tiny_gguf: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # llama.cpp refuses main_gpu without GPUs; the CPU backend's estimate refuses it with a clear 400 first.
    seen = capture_loads(monkeypatch, then_load=True)
    LlamaCppRunner(spec(tiny_gguf, main_gpu=0)).close()
    assert seen[0].split_mode == llama_cpp.llama_model_default_params().split_mode


def test_a_tensor_split_longer_than_llama_cpp_takes_is_refused(tiny_gguf: Path) -> None:
    with pytest.raises(BadRequest, match="tensor_split has 17 entries"):
        LlamaCppRunner(spec(tiny_gguf, tensor_split=(1.0,) * 17))
