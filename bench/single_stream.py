"""Single stream: decode tok/s and time to first token, Corral's /api/generate vs llama-cpp-python direct.

Also Corral with runner isolation off, which gives the per-token cost of the runner process.
Trials are interleaved (direct, isolated, in-process, direct, …) so machine drift hits all alike;
a trial during which other processes used more than 10 % of the CPU is repeated.

    .venv/bin/python bench/single_stream.py [--reps 5] [--tokens 128] [--models smollm2,gemma]
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import httpx

from common import (
    MAX_FOREIGN,
    THREADS,
    BenchModel,
    Disturbance,
    corral_server,
    ensure_in_store,
    gemma,
    median_spread,
    models_dir,
    print_table,
    smollm2,
)

STORY = "Once upon a time, in a small village at the edge of a great forest, there lived an old clockmaker who"


def prompt_for(k: int) -> str:
    # A different opening each trial, so neither side can reuse a cached prefix.
    return f"Story number {k}. {STORY}"


def corral_trial(url: str, model: str, prompt: str, tokens: int) -> dict[str, float]:
    body = {
        "model": model, "prompt": prompt, "raw": True, "stream": True,
        "options": {"temperature": 0, "num_predict": tokens, "repeat_penalty": 1.0, "num_thread": THREADS},
    }
    stamps: list[float] = []
    t0 = time.perf_counter()
    with httpx.stream("POST", f"{url}/api/generate", json=body, timeout=None) as r:
        for line in r.iter_lines():
            data = json.loads(line)
            if data.get("response"):
                stamps.append(time.perf_counter())
    return _rates(t0, stamps)


def direct_trial(llm: Any, prompt: str, tokens: int) -> dict[str, float]:
    stamps: list[float] = []
    t0 = time.perf_counter()
    for chunk in llm.create_completion(prompt, max_tokens=tokens, temperature=0.0, repeat_penalty=1.0, stream=True):
        if chunk["choices"][0]["text"]:
            stamps.append(time.perf_counter())
    return _rates(t0, stamps)


def _rates(t0: float, stamps: list[float]) -> dict[str, float]:
    decode = (len(stamps) - 1) / (stamps[-1] - stamps[0]) if len(stamps) > 1 else 0.0
    return {"ttft_ms": (stamps[0] - t0) * 1e3, "decode": decode, "tokens": float(len(stamps))}


def bench_model(model: BenchModel, reps: int, tokens: int, max_foreign: float = MAX_FOREIGN) -> list[list[str]]:
    from llama_cpp import Llama

    ensure_in_store(models_dir(), model)
    llm = Llama(
        model_path=str(model.path),
        n_threads=THREADS,
        n_threads_batch=THREADS,
        n_ctx=4096,
        n_batch=512,
        flash_attn=True,
        verbose=False,
    )
    results: dict[str, list[dict[str, float]]] = {
        "llama-cpp-python direct": [],
        "corral (runner process)": [],
        "corral (in-process)": [],
    }
    with corral_server() as (isolated_url, _), corral_server(CORRAL_ISOLATE_RUNNERS="0") as (inproc_url, _):
        for url in (isolated_url, inproc_url):  # load and warm both
            corral_trial(url, model.name, prompt_for(-1), 8)
        direct_trial(llm, prompt_for(-2), 8)
        k = 0
        while min(len(v) for v in results.values()) < reps:
            for label, run in (
                ("llama-cpp-python direct", lambda p: direct_trial(llm, p, tokens)),
                ("corral (runner process)", lambda p: corral_trial(isolated_url, model.name, p, tokens)),
                ("corral (in-process)", lambda p: corral_trial(inproc_url, model.name, p, tokens)),
            ):
                if len(results[label]) >= reps:
                    continue
                k += 1
                with Disturbance() as d:
                    trial = run(prompt_for(k))
                if d.foreign <= max_foreign:
                    results[label].append(trial)
    base = sorted(r["decode"] for r in results["llama-cpp-python direct"])[reps // 2]
    base_ttft = sorted(r["ttft_ms"] for r in results["llama-cpp-python direct"])[reps // 2]
    rows = []
    for label, trials in results.items():
        decode = [t["decode"] for t in trials]
        ttft = [t["ttft_ms"] for t in trials]
        med = sorted(decode)[reps // 2]
        med_ttft = sorted(ttft)[reps // 2]
        rows.append(
            [
                model.name,
                label,
                median_spread(decode),
                f"{med / base:.3f}×",
                median_spread(ttft),
                f"{med_ttft - base_ttft:+.1f}",
                f"{int(sorted(t['tokens'] for t in trials)[reps // 2])}",
            ]
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--models", default="smollm2,gemma")
    parser.add_argument(
        "--max-foreign", type=float, default=MAX_FOREIGN, help="share of CPU others may use in a kept trial"
    )
    args = parser.parse_args()
    pick = {"smollm2": smollm2, "gemma": gemma}
    rows = []
    for key in args.models.split(","):
        rows += bench_model(pick[key](), args.reps, args.tokens, args.max_foreign)
    print_table(
        f"Single stream, {args.tokens} tokens greedy, {THREADS} threads, "
        f"median (min–max) of {args.reps} undisturbed trials",
        ["model", "engine", "decode tok/s", "vs direct", "TTFT ms", "TTFT Δ ms", "tokens"],
        rows,
    )


if __name__ == "__main__":
    main()
