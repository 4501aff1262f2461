"""What logprobs and a forced tool call cost: decode tokens/s with logprobs on vs off, and of a forced
tool call (tool_choice "required", grammar-constrained) vs a plain answer, on the bundled SmolLM2
through a real `corral serve`, in interleaved trials of one run (medians, with their spread).

    .venv/bin/python bench/clients_cost.py [--trials 7]
"""

from __future__ import annotations

import argparse

import httpx

from common import Disturbance, MAX_FOREIGN, corral_server, ensure_in_store, median_spread, models_dir, print_table, smollm2

TOOL = {
    "type": "function",
    "function": {
        "name": "get_forecast",
        "parameters": {
            "type": "object",
            "properties": {"days": {"type": "integer"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
            "required": ["days", "unit"],
        },
    },
}
PROMPT = [{"role": "user", "content": "What will the weather be like this week? Answer in detail."}]
MAX_TOKENS = 96
VARIANTS: dict[str, dict[str, object]] = {
    "plain answer": {},
    "logprobs on (top 5)": {"logprobs": True, "top_logprobs": 5},
    "forced tool call": {"tools": [TOOL], "tool_choice": "required"},
}


def decode_rate(client: httpx.Client, model: str, extra: dict[str, object], seed: int) -> tuple[float, int]:
    """Ollama's eval_count / eval_duration for one chat (the decode phase only: prompt time excluded)."""
    body = {"model": model, "messages": PROMPT, "stream": False, "options": {"num_predict": MAX_TOKENS, "seed": seed, "temperature": 0.8}, **extra}
    reply = client.post("/api/chat", json=body).json()
    return reply["eval_count"] / (reply["eval_duration"] / 1e9), reply["eval_count"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trials", type=int, default=7)
    args = parser.parse_args()
    model = smollm2()
    ensure_in_store(models_dir(), model)
    rates: dict[str, list[float]] = {name: [] for name in VARIANTS}
    tokens: dict[str, list[int]] = {name: [] for name in VARIANTS}
    with corral_server(CORRAL_NUM_PARALLEL="1", CORRAL_KEEP_ALIVE="-1") as (url, _proc), httpx.Client(base_url=url, timeout=600) as client:
        decode_rate(client, model.name, {}, 0)  # load and warm up
        trial = 0
        while min(len(v) for v in rates.values()) < args.trials and trial < args.trials * 4:
            trial += 1
            for name, extra in VARIANTS.items():  # interleaved, so drift hits every variant alike
                with Disturbance() as seen:
                    rate, count = decode_rate(client, model.name, extra, trial)
                if seen.foreign <= MAX_FOREIGN and count >= 8:
                    rates[name].append(rate)
                    tokens[name].append(count)
    rows = [[name, median_spread(rates[name]), str(len(rates[name])), median_spread([float(t) for t in tokens[name]])] for name in VARIANTS]
    print_table(
        f"SmolLM2-135M, /api/chat decode tokens/s (median, min–max), {MAX_TOKENS} tokens at most, 1 slot",
        ["variant", "tokens/s", "trials", "tokens"], rows,
    )


if __name__ == "__main__":
    main()
