"""The engines side by side on SmolLM2: llama.cpp (GGUF Q4_1), ONNX int8 (``corral create --format
onnx``) and MLX (mlx's CPU device), each served by Corral where a user meets it and also driven
directly through its Runner, against llama-cpp-python called directly. Greedy, one stream, the same
prompts; trials interleaved, disturbed ones repeated.

On Linux the MLX engine runs only on mlx's CPU device, which is slow (it exists for CI); on a Mac
it runs on the GPU through the metal backend. ONNX int8 and MLX pick different tokens than
llama.cpp at near-ties, so the number of tokens generated can differ; rates are per token.

    .venv/bin/python bench/engines.py [--reps 3] [--tokens 64]
"""

from __future__ import annotations

import argparse
import importlib.util
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from common import (
    CACHE,
    MAX_FOREIGN,
    THREADS,
    Disturbance,
    corral_server,
    ensure_in_store,
    median_spread,
    models_dir,
    print_table,
    smollm2,
)
from corral.hookspecs import LoadSpec, Runner, Sampling, SequenceStep
from single_stream import _rates, corral_trial, direct_trial, prompt_for

ONNX_NAME = "smollm2-onnx:int8"


def ensure_onnx_model() -> None:
    """``corral create smollm2-onnx:int8 --format onnx`` (FROM smollm2:135m) in the bench store, once."""
    from corral.models.create import create_model
    from corral.models.names import ModelName
    from corral.models.store import Store
    from corral.types import CreateRequest

    store = Store(models_dir())
    if not store.exists(ModelName.parse(ONNX_NAME)):
        t0 = time.perf_counter()
        create_model(
            store, CreateRequest.model_validate({"model": ONNX_NAME, "from": "smollm2:135m", "format": "onnx"})
        )
        print(f"created {ONNX_NAME} in {time.perf_counter() - t0:.1f} s")


def runner_trial(runner: Runner, prompt: str, tokens: int) -> dict[str, float]:
    ids = runner.tokenize(prompt, add_bos=runner.info.add_bos)
    runner.truncate(0, 0)
    runner.set_sampling(0, Sampling(temperature=0, repeat_penalty=1.0))
    t0 = time.perf_counter()
    token = runner.step([SequenceStep(0, ids)])[0]
    stamps = [time.perf_counter()]
    while len(stamps) < tokens and not runner.is_end_of_generation(token):
        token = runner.step([SequenceStep(0, [token])])[0]
        stamps.append(time.perf_counter())
    return _rates(t0, stamps)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--max-foreign", type=float, default=MAX_FOREIGN)
    args = parser.parse_args()

    from llama_cpp import Llama

    from corral.engines.onnx.runner import OnnxRunner
    from corral.models.recipes import resolve
    from corral.models.store import Store

    model = smollm2()
    ensure_in_store(models_dir(), model)
    ensure_onnx_model()
    spec = LoadSpec(model_path=model.path, num_ctx=1024, num_parallel=1, num_thread=THREADS)
    onnx_folder = resolve(Store(models_dir()), ONNX_NAME).model_path
    llm = Llama(
        model_path=str(model.path),
        n_threads=THREADS,
        n_threads_batch=THREADS,
        n_ctx=4096,
        flash_attn=True,
        verbose=False,
    )
    runners: dict[str, Runner] = {"onnx int8, OnnxRunner direct": OnnxRunner(replace(spec, model_path=onnx_folder))}
    if importlib.util.find_spec("mlx") is not None:
        from corral_backend_metal.mlx_engine import MLXRunner

        runners["mlx (cpu device), MLXRunner direct"] = MLXRunner(spec, device="cpu", cache_root=CACHE / "mlx")

    with corral_server() as (url, _):
        engines: dict[str, Callable[[str], dict[str, float]]] = {
            "llama-cpp-python direct": lambda p: direct_trial(llm, p, args.tokens),
            "gguf, corral /api/generate": lambda p: corral_trial(url, model.name, p, args.tokens),
            "onnx int8, corral /api/generate": lambda p: corral_trial(url, ONNX_NAME, p, args.tokens),
        }
        engines.update({label: (lambda p, r=r: runner_trial(r, p, args.tokens)) for label, r in runners.items()})
        for run in engines.values():  # load and warm every engine
            run(prompt_for(-1))
        results: dict[str, list[dict[str, float]]] = {label: [] for label in engines}
        k = 0
        while min(len(v) for v in results.values()) < args.reps:
            for label, run in engines.items():
                if len(results[label]) >= args.reps:
                    continue
                k += 1
                with Disturbance() as d:
                    trial = run(prompt_for(k))
                if d.foreign <= args.max_foreign:
                    results[label].append(trial)
    for r in runners.values():
        r.close()
    print_table(
        f"SmolLM2-135M, one stream, up to {args.tokens} greedy tokens, {THREADS} threads, "
        f"median (min–max) of {args.reps}",
        ["engine, path", "decode tok/s", "vs llama-cpp-python", "TTFT ms", "tokens"],
        _rows(results, args.reps),
    )


def _rows(results: dict[str, list[dict[str, float]]], reps: int) -> list[list[str]]:
    def median(trials: list[dict[str, float]], key: str) -> float:
        return sorted(t[key] for t in trials)[reps // 2]

    base = median(results["llama-cpp-python direct"], "decode")
    rows: list[list[Any]] = []
    for label, trials in results.items():
        rows.append([
            label, median_spread([t["decode"] for t in trials]), f"{median(trials, 'decode') / base:.3f}×",
            median_spread([t["ttft_ms"] for t in trials]), f"{int(median(trials, 'tokens'))}",
        ])  # fmt: skip
    return rows


if __name__ == "__main__":
    main()
