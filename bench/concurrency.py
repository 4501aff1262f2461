"""Concurrent streams: aggregate and per-stream tok/s, Corral vs llama-cpp-python's own server.

Both servers get the same model, threads and prompts; N clients start together, each asking for
the same number of greedy tokens. Corral serves with CORRAL_NUM_PARALLEL=8 so 8 streams run at once.

    .venv/bin/python bench/concurrency.py [--streams 1,2,4,8] [--reps 3] [--tokens 96] [--models smollm2,gemma]

Needs the server extra of llama-cpp-python: pip install sse-starlette starlette-context
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import httpx

from common import (
    MAX_FOREIGN,
    THREADS,
    BenchModel,
    Disturbance,
    corral_server,
    ensure_in_store,
    free_port,
    gemma,
    models_dir,
    print_table,
    smollm2,
    wait_ready,
)


@contextmanager
def llama_cpp_server(model: BenchModel, parallel: int) -> Iterator[str]:
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "llama_cpp.server",
        "--model",
        str(model.path),
        "--port",
        str(port),
        "--host",
        "127.0.0.1",
        "--n_threads",
        str(THREADS),
        "--n_threads_batch",
        str(THREADS),
        "--n_ctx",
        "4096",
        "--flash_attn",
        "true",
        "--model_alias",
        model.name,
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(f"{url}/v1/models")
        yield url
    finally:
        proc.terminate()
        proc.wait(30)


def stream_corral(url: str, model: str, prompt: str, tokens: int) -> list[float]:
    body = {
        "model": model,
        "prompt": prompt,
        "raw": True,
        "options": {"temperature": 0, "num_predict": tokens, "repeat_penalty": 1.0},
    }
    stamps = []
    with httpx.stream("POST", f"{url}/api/generate", json=body, timeout=None) as r:
        for line in r.iter_lines():
            if json.loads(line).get("response"):
                stamps.append(time.perf_counter())
    return stamps


def stream_llama_server(url: str, model: str, prompt: str, tokens: int) -> list[float]:
    body = {
        "model": model,
        "prompt": prompt,
        "max_tokens": tokens,
        "temperature": 0,
        "repeat_penalty": 1.0,
        "stream": True,
    }
    stamps = []
    with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=None) as r:
        for line in r.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]" and json.loads(line[6:])["choices"][0]["text"]:
                stamps.append(time.perf_counter())
    return stamps


def trial(
    fn: Callable[[str, str, str, int], list[float]], url: str, model: str, n: int, tokens: int, k: int
) -> tuple[float, float, float]:
    """(aggregate tok/s, median per-stream tok/s, worst time to first token in s) for n streams at once."""
    results: list[list[float]] = [[] for _ in range(n)]
    t0 = time.perf_counter()

    def run(i: int) -> None:
        try:
            results[i] = fn(
                url, model, f"Client {i}, story {k}. Once upon a time, a traveller reached a city where", tokens
            )
        except httpx.HTTPError:  # llama-cpp-python's server sometimes drops concurrent streams
            results[i] = []

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    done = [r for r in results if r]
    if not done:
        return 0.0, 0.0, float("inf")
    end = max(r[-1] for r in done)
    total = sum(len(r) for r in done)
    per_stream = [(len(r) - 1) / (r[-1] - r[0]) for r in results if len(r) > 1]
    first = max(r[0] - t0 for r in done)
    return total / (end - t0), statistics.median(per_stream), first


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--streams", default="1,2,4,8")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=96)
    parser.add_argument("--models", default="smollm2,gemma")
    parser.add_argument("--max-foreign", type=float, default=MAX_FOREIGN)
    args = parser.parse_args()
    counts = [int(x) for x in args.streams.split(",")]
    rows = []
    for key in args.models.split(","):
        model = {"smollm2": smollm2, "gemma": gemma}[key]()
        ensure_in_store(models_dir(), model)
        measured: dict[tuple[str, int], list[tuple[float, float, float]]] = {}
        with corral_server(CORRAL_NUM_PARALLEL="8") as (corral_url, _), llama_cpp_server(model, 1) as llama_url:
            stream_corral(corral_url, model.name, "warm up", 4)
            stream_llama_server(llama_url, model.name, "warm up", 4)
            k = 0
            for n in counts:
                for label, fn, url in (
                    ("corral", stream_corral, corral_url),
                    ("llama-cpp-python server", stream_llama_server, llama_url),
                ):
                    got: list[tuple[float, float, float]] = []
                    tries = 0
                    while len(got) < args.reps and tries < args.reps * 4:
                        tries += 1
                        k += 1
                        with Disturbance() as d:
                            result = trial(fn, url, model.name, n, args.tokens, k)
                        if d.foreign <= args.max_foreign:
                            got.append(result)
                    measured[(label, n)] = got
        single = statistics.median(a for a, _, _ in measured[("corral", counts[0])])
        for n in counts:
            c = measured[("corral", n)]
            ll = measured[("llama-cpp-python server", n)]
            c_agg, l_agg = statistics.median(a for a, _, _ in c), statistics.median(a for a, _, _ in ll)
            rows.append(
                [
                    model.name,
                    str(n),
                    f"{c_agg:.1f} ({min(a for a, _, _ in c):.1f}–{max(a for a, _, _ in c):.1f})",
                    f"{statistics.median(p for _, p, _ in c):.1f}",
                    f"{statistics.median(f for _, _, f in c):.2f}",
                    f"{l_agg:.1f} ({min(a for a, _, _ in ll):.1f}–{max(a for a, _, _ in ll):.1f})",
                    f"{statistics.median(p for _, p, _ in ll):.1f}",
                    f"{statistics.median(f for _, _, f in ll):.2f}",
                    f"{c_agg / l_agg:.2f}×",
                    f"{c_agg / single:.2f}×",
                ]
            )
    print_table(
        f"Concurrent streams, {args.tokens} tokens each, greedy, {THREADS} threads, "
        f"median (min–max) of {args.reps} trials",
        [
            "model",
            "streams",
            "corral agg tok/s",
            "corral per-stream",
            "corral worst TTFT s",
            "llama server agg tok/s",
            "llama per-stream",
            "llama worst TTFT s",
            "corral / llama server",
            "corral vs its 1 stream",
        ],
        rows,
    )


if __name__ == "__main__":
    main()
