"""engines.dispatch: the engine for a model file, and the estimate that fills in the offload decisions
(layer count, multi-GPU tensor_split, main_gpu's single GPU) for the backends to load with; and the
explanation of it that `corral show --fit` prints."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from corral.engines.dispatch import engine_for, estimate, explain
from corral.errors import BadRequest, InsufficientMemory
from corral.hookspecs import Device, LoadSpec

GIB = 1 << 30
HOST = Device("cpu", 0, "host", "cpu", 64 * GIB, 60 * GIB)
GPUS = (Device("cuda", 0, "gpu0", "gpu", 24 * GIB, 20 * GIB), Device("cuda", 1, "gpu1", "gpu", 24 * GIB, 20 * GIB))


def spec(path: Path, **kw: object) -> LoadSpec:
    return LoadSpec(model_path=path, num_ctx=256, num_parallel=1, **kw)  # type: ignore[arg-type]


def test_the_engine_follows_the_file(tiny_gguf: Path, tmp_path: Path) -> None:
    folder = tmp_path / "genai"
    folder.mkdir()
    (folder / "genai_config.json").write_text("{}")
    (tmp_path / "notes.txt").write_text("not a model")
    assert [engine_for(p) for p in (tiny_gguf, folder, tmp_path / "notes.txt", tmp_path / "absent")] == [
        "llama.cpp", "onnx", None, None,
    ]


def test_on_the_cpu_alone_the_spec_is_unchanged(tiny_gguf: Path) -> None:
    asked = spec(tiny_gguf)
    result = estimate(asked, [HOST])
    assert result is not None and result.spec == asked
    assert result.size_bytes > 0 and result.size_on_device == 0 and result.processor_label == "100% CPU"


def test_two_gpus_get_every_layer_and_the_planned_split(tiny_gguf: Path) -> None:
    result = estimate(spec(tiny_gguf), [*GPUS, HOST])
    assert result is not None
    n_layer = 2  # ggumaker's tiny llama
    assert result.spec.num_gpu == n_layer + 1  # every layer and the output layer
    assert len(result.spec.tensor_split) == 2 and sum(result.spec.tensor_split) == n_layer + 1
    assert result.processor_label == "100% GPU" and 0 < result.size_on_device <= result.size_bytes


def test_a_given_layer_count_is_kept(tiny_gguf: Path) -> None:
    result = estimate(spec(tiny_gguf, num_gpu=1), [*GPUS, HOST])
    assert result is not None and result.spec.num_gpu == 1


def test_main_gpu_plans_for_that_gpu_alone(tiny_gguf: Path) -> None:
    result = estimate(spec(tiny_gguf, main_gpu=1), [*GPUS, HOST])
    assert result is not None
    assert result.spec.tensor_split == () and result.spec.main_gpu == 1 and result.spec.num_gpu == 3


@pytest.mark.parametrize(
    ("main_gpu", "devices", "message"),
    [(5, [*GPUS, HOST], r"main_gpu=5 names no GPU here \(GPUs: 0, 1\)"), (0, [HOST], "main_gpu=0 needs a GPU")],
)
def test_a_main_gpu_that_is_not_there_is_refused(
    tiny_gguf: Path, main_gpu: int, devices: list[Device], message: str
) -> None:
    with pytest.raises(BadRequest, match=message):
        estimate(spec(tiny_gguf, main_gpu=main_gpu), devices)


def test_an_onnx_folder_is_checked_whole_and_has_no_figures(tmp_path: Path) -> None:
    decoder = {"num_hidden_layers": 2, "num_key_value_heads": 2, "head_size": 16}
    (tmp_path / "genai_config.json").write_text(
        json.dumps({"model": {"context_length": 512, "vocab_size": 100, "decoder": decoder}})
    )
    (tmp_path / "model.onnx").write_bytes(b"\0" * 1000)
    assert estimate(spec(tmp_path), [HOST]) is None
    with pytest.raises(InsufficientMemory, match="the model needs"):
        estimate(spec(tmp_path), [Device("cpu", 0, "host", "cpu", 2000, 2000)])


def test_explain_shows_the_offload_plan_and_says_when_it_does_not_fit(tiny_gguf: Path, tmp_path: Path) -> None:
    text = explain(spec(tiny_gguf), [HOST])
    assert "llama.cpp: n_gpu_layers=0" in text and "-> 100% CPU" in text
    assert text.splitlines()[-1].split()[0] == "total" and text.endswith("yes")
    split = explain(spec(tiny_gguf), [*GPUS, HOST])
    assert "tensor_split=" in split and "-> 100% GPU" in split
    tiny = Device("cpu", 0, "host", "cpu", 1000, 1000)
    assert explain(spec(tiny_gguf), [tiny]).startswith("Does not fit: ")
    (tmp_path / "notes.txt").write_text("not a model")
    assert explain(spec(tmp_path / "notes.txt"), [HOST]).startswith("No estimate: ")


def test_explain_weighs_an_onnx_folder_against_its_one_device(tmp_path: Path) -> None:
    decoder = {"num_hidden_layers": 2, "num_key_value_heads": 2, "head_size": 16}
    (tmp_path / "genai_config.json").write_text(
        json.dumps({"model": {"context_length": 512, "vocab_size": 100, "decoder": decoder}})
    )
    (tmp_path / "model.onnx").write_bytes(b"\0" * 1000)
    lines = explain(spec(tmp_path), [*GPUS, HOST], onnx_on_gpu=True).splitlines()
    assert lines[0].startswith("ONNX model:") and lines[1] == "Weights:   1000 B"
    assert lines[-1] == "Fits:      20.0 GiB free on gpu0"
    on_cpu = explain(spec(tmp_path), [Device("cpu", 0, "host", "cpu", 2000, 2000)])
    assert on_cpu.splitlines()[-1].startswith("Does not fit: the model needs")
