"""A 10-turn chat: time to first token of each turn, with the prefix cache on and off.

Each turn sends the whole conversation so far (as chat clients do) behind a long system prompt;
with the cache, only the new user message is evaluated.

    .venv/bin/python bench/chat_turns.py [--turns 10] [--reps 3] [--models smollm2,gemma]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import httpx

from common import MAX_FOREIGN, Disturbance, corral_server, ensure_in_store, gemma, models_dir, print_table, smollm2

SYSTEM = (
    "You are a patient assistant for a hardware shop. You know the catalogue: hammers, screwdrivers, drills, "
    "saws, sanders, clamps, levels, tape measures, ladders, paint, brushes, rollers, glue, nails, screws, bolts, "
    "washers, hinges, locks, chains, ropes, gloves, goggles, masks and first-aid kits. Answer in two sentences, "
    "be precise about sizes and materials, suggest safety equipment where it matters, and never invent products "
    "that are not in the catalogue. If the customer is unsure, ask one short question. " * 3
)
QUESTIONS = [
    "I want to hang a heavy mirror on a brick wall. What do I need?",
    "Which drill bit size for that?",
    "Do I need goggles?",
    "What about the screws?",
    "How long should they be?",
    "Can I use glue instead?",
    "What if the wall is plasterboard?",
    "Which level is best?",
    "Do you sell gloves?",
    "Thanks, what is the total list?",
]


def run_chat(url: str, model: str, turns: int, k: int) -> list[float]:
    messages = [{"role": "system", "content": f"Session {k}. {SYSTEM}"}]
    ttfts = []
    for question in QUESTIONS[:turns]:
        messages.append({"role": "user", "content": question})
        body = {"model": model, "messages": messages, "options": {"temperature": 0, "num_predict": 32}}
        t0 = time.perf_counter()
        first = None
        answer = []
        with httpx.stream("POST", f"{url}/api/chat", json=body, timeout=None) as r:
            for line in r.iter_lines():
                piece = json.loads(line).get("message", {}).get("content", "")
                if piece:
                    first = first or time.perf_counter()
                    answer.append(piece)
        ttfts.append(((first or time.perf_counter()) - t0) * 1e3)
        messages.append({"role": "assistant", "content": "".join(answer)})
    return ttfts


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--turns", type=int, default=10)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--models", default="smollm2,gemma")
    parser.add_argument("--max-foreign", type=float, default=MAX_FOREIGN)
    args = parser.parse_args()
    for key in args.models.split(","):
        model = {"smollm2": smollm2, "gemma": gemma}[key]()
        ensure_in_store(models_dir(), model)
        runs: dict[str, list[list[float]]] = {"cache on": [], "cache off": []}
        with corral_server() as (on_url, _), corral_server(CORRAL_PREFIX_CACHE="0") as (off_url, _):
            for url in (on_url, off_url):
                run_chat(url, model.name, 1, -1)
            k, tries = 0, 0
            while min(len(v) for v in runs.values()) < args.reps and tries < args.reps * 6:
                for label, url in (("cache on", on_url), ("cache off", off_url)):
                    if len(runs[label]) >= args.reps:
                        continue
                    k += 1
                    tries += 1
                    with Disturbance() as d:
                        ttfts = run_chat(url, model.name, args.turns, k)
                    if d.foreign <= args.max_foreign:
                        runs[label].append(ttfts)
        rows = []
        for turn in range(args.turns):
            on = statistics.median(r[turn] for r in runs["cache on"])
            off = statistics.median(r[turn] for r in runs["cache off"])
            rows.append([str(turn + 1), f"{on:.1f}", f"{off:.1f}", f"{on / off:.2f}"])
        print_table(
            f"{model.name}: time to first token per chat turn (ms), median of {args.reps} conversations",
            ["turn", "prefix cache on", "prefix cache off", "on / off"],
            rows,
        )


if __name__ == "__main__":
    main()
