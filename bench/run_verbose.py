"""`corral run --verbose` as a user runs it (a fresh server each time, so the load is real) next to
llama-cpp-python loading the same GGUF and answering the same chat prompt with the same threads.

    .venv/bin/python bench/run_verbose.py [--reps 5]
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import MAX_FOREIGN, THREADS, Disturbance, median_spread, print_table, smollm2
from corral.chat.jinja import render_chat

PROMPT = "Why is the sky blue?"
UNITS = {"µs": 1e-6, "ms": 1e-3, "s": 1.0}


def _seconds(label: str, text: str) -> float:
    match = re.search(rf"{label}:\s+([\d.]+)(µs|ms|s)", text)
    if not match:
        raise RuntimeError(f"no '{label}' in: {text}")
    return float(match.group(1)) * UNITS[match.group(2)]


def _rate(label: str, text: str) -> float:
    match = re.search(rf"{label}:\s+([\d.]+) tokens/s", text)
    return float(match.group(1)) if match else 0.0


def corral_trial(models: Path) -> dict[str, float]:
    """A new server each time, so `corral run` loads the model. The server is started here rather than
    by the CLI's autostart so that it stays in this process tree (its CPU is ours, not a disturbance)."""
    from common import free_port, wait_ready

    home = Path(tempfile.mkdtemp(prefix="corral-run-"))
    port = free_port()
    env = {**os.environ, "CORRAL_HOME": str(home), "CORRAL_MODELS": str(models), "CORRAL_HOST": f"127.0.0.1:{port}"}
    server = subprocess.Popen(
        [sys.executable, "-m", "corral.cli.main", "serve"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_ready(f"http://127.0.0.1:{port}/api/version")
        out = subprocess.run(
            [sys.executable, "-m", "corral.cli.main", "run", "--verbose", "smollm2:135m", PROMPT],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
            check=True,
        )
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(30)
    return {
        "load_s": _seconds("load duration", out.stderr),
        "prompt_tps": _rate("prompt eval rate", out.stderr),
        "decode_tps": _rate("eval rate", out.stderr.split("prompt eval rate")[1]),
        "tokens": float(re.search(r"\neval count:\s+(\d+)", out.stderr).group(1)),  # type: ignore[union-attr]
    }


def direct_trial(path: Path) -> dict[str, float]:
    from llama_cpp import Llama

    t0 = time.perf_counter()
    llm = Llama(
        model_path=str(path), n_threads=THREADS, n_threads_batch=THREADS, n_ctx=4096, flash_attn=True, verbose=False
    )
    load = time.perf_counter() - t0
    messages = [{"role": "user", "content": PROMPT}]
    rendered = render_chat(llm.metadata.get("tokenizer.chat_template"), messages)
    prompt_tokens = len(llm.tokenize(rendered.encode(), add_bos=False, special=True))
    stamps: list[float] = []
    t_start = time.perf_counter()
    for chunk in llm.create_chat_completion(messages, stream=True):
        if chunk["choices"][0]["delta"].get("content"):
            stamps.append(time.perf_counter())
    del llm
    return {
        "load_s": load,
        "prompt_tps": prompt_tokens / (stamps[0] - t_start),  # time to the first token, as Corral's prompt eval
        "decode_tps": (len(stamps) - 1) / (stamps[-1] - stamps[0]),
        "tokens": float(len(stamps)),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--max-foreign", type=float, default=MAX_FOREIGN)
    args = parser.parse_args()
    model = smollm2()
    models = Path(tempfile.mkdtemp(prefix="corral-models-"))
    from common import ensure_in_store

    ensure_in_store(models, model)
    results: dict[str, list[dict[str, float]]] = {"corral run --verbose": [], "llama-cpp-python direct": []}
    tries = 0
    while min(len(v) for v in results.values()) < args.reps and tries < args.reps * 6:
        for label, run in (
            ("corral run --verbose", lambda: corral_trial(models)),
            ("llama-cpp-python direct", lambda: direct_trial(model.path)),
        ):
            if len(results[label]) >= args.reps:
                continue
            tries += 1
            with Disturbance() as d:
                trial = run()
            if d.foreign <= args.max_foreign:
                results[label].append(trial)
    rows = [
        [
            label,
            median_spread([t["load_s"] * 1e3 for t in ts]),
            median_spread([t["prompt_tps"] for t in ts]),
            median_spread([t["decode_tps"] for t in ts]),
            median_spread([t["tokens"] for t in ts]),
        ]
        for label, ts in results.items()
    ]
    print_table(
        f"SmolLM2-135M Q4_1, '{PROMPT}', {THREADS} threads, default sampling, median (min–max) of {args.reps}",
        ["engine", "load ms", "prompt tok/s", "decode tok/s", "tokens"],
        rows,
    )


if __name__ == "__main__":
    main()
