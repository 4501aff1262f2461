"""One KV pool the slots share (``kv_unified``) against a stream per slot (the default since the
per-slot change), on llama.cpp through Corral's own runner, SmolLM2, 4 slots of 4096, 2 threads:

- 4 streams decoding together after ~135-token prompts (in a shared pool each token attends the
  cells of all four sequences; in its own stream only its own);
- a 2,000-token prefill in one slot while the other three hold idle prefix caches.

Trials alternate between the two layouts so machine drift hits both alike.

    .venv/bin/python bench/kv_streams.py [--reps 5]
"""

from __future__ import annotations

import argparse
import time

from common import THREADS, median_spread, print_table, smollm2
from corral.engines.llamacpp.runner import LlamaCppRunner
from corral.hookspecs import LoadSpec, Sampling, SequenceStep

SLOTS, NUM_CTX, DECODE_STEPS, PREFILL_TOKENS = 4, 4096, 96, 2000
OPENING = "The lighthouse keeper counted the ships that passed the rocks each evening. " * 8
LONG = "Her brother repaired nets in a shed that smelled of tar and salt. " * 140


def trial(unified: bool) -> tuple[float, float]:
    """(4-stream decode tok/s, prefill tok/s beside three idle caches) for one freshly loaded runner."""
    spec = LoadSpec(
        model_path=smollm2().path, num_ctx=NUM_CTX, num_parallel=SLOTS, num_thread=THREADS,
        flash_attention=True, kv_unified=unified,
    )  # fmt: skip
    runner = LlamaCppRunner(spec)
    try:
        greedy = Sampling(temperature=0, repeat_penalty=1.0)
        for seq in range(SLOTS):
            runner.set_sampling(seq, greedy)
        prompt = runner.tokenize(OPENING, add_bos=True)
        sampled = runner.step([SequenceStep(seq, [seq + 10, *prompt]) for seq in range(SLOTS)])
        t0 = time.perf_counter()
        for _ in range(DECODE_STEPS):
            sampled = runner.step([SequenceStep(seq, [sampled[seq]]) for seq in range(SLOTS)])
        decode = SLOTS * DECODE_STEPS / (time.perf_counter() - t0)

        runner.truncate(0, 0)
        long = runner.tokenize(LONG, add_bos=True)[:PREFILL_TOKENS]
        t0 = time.perf_counter()
        for lo in range(0, len(long), runner.n_batch):  # as the worker feeds a long prompt: a batch a step
            runner.step([SequenceStep(0, long[lo : lo + runner.n_batch], sample=lo + runner.n_batch >= len(long))])
        prefill = len(long) / (time.perf_counter() - t0)
        return decode, prefill
    finally:
        runner.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    results: dict[bool, list[tuple[float, float]]] = {True: [], False: []}
    for _ in range(args.reps):
        for unified in (True, False):
            results[unified].append(trial(unified))
    rows = []
    for label, unified in (("shared pool (kv_unified)", True), ("a stream per slot", False)):
        rows.append(
            [label, median_spread([d for d, _ in results[unified]]), median_spread([p for _, p in results[unified]])]
        )
    ratios = [
        f"{sum(a[i] / b[i] for a, b in zip(results[False], results[True], strict=True)) / args.reps:.2f}×"
        for i in (0, 1)
    ]
    rows.append(["per slot / shared (mean of paired ratios)", *ratios])
    print_table(
        f"KV layout, SmolLM2 Q4_1, {SLOTS} slots × {NUM_CTX}, {THREADS} threads, median (min–max) of {args.reps}",
        ["layout", f"{SLOTS} streams decode tok/s", f"prefill {PREFILL_TOKENS} tok/s beside 3 idle caches"],
        rows,
    )


if __name__ == "__main__":
    main()
