"""What a /metrics scrape costs while a real `corral serve` (SmolLM2) answers a burst of 200 requests.

Runs the same burst twice, without scraping and with a scraper polling /metrics every 0.1 s (150
times Prometheus' default rate), and prints the burst's wall time and token rate for each, and the
scrapes' latency. Also times the scrape's own work in-process. Prints a table; asserts nothing.

    .venv/bin/python bench/scrape_cost.py [--requests 200] [--concurrency 8]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from common import corral_server

MODEL = "smollm2:135m"
KEY = "bench-key"
AUTH = {"authorization": f"Bearer {KEY}"}


TOKENS = 8  # generated per request (--tokens)


async def burst(url: str, requests: int, concurrency: int) -> tuple[float, int]:
    """Wall seconds for ``requests`` short generations, ``concurrency`` at a time, and tokens made."""
    limit = asyncio.Semaphore(concurrency)
    tokens = 0

    async def one(client: httpx.AsyncClient, i: int) -> None:
        nonlocal tokens
        async with limit:
            body = {
                "model": MODEL,
                "prompt": f"Say a word about the number {i}.",
                "stream": False,
                "options": {"num_predict": TOKENS, "temperature": 0},
            }
            r = await client.post("/api/generate", json=body)
            r.raise_for_status()
            tokens += r.json()["eval_count"]

    async with httpx.AsyncClient(base_url=url, headers=AUTH, timeout=600) as client:
        t0 = time.perf_counter()
        await asyncio.gather(*(one(client, i) for i in range(requests)))
        return time.perf_counter() - t0, tokens


async def scraper(url: str, stop: asyncio.Event, latencies: list[float]) -> None:
    async with httpx.AsyncClient(base_url=url, headers=AUTH, timeout=60) as client:
        while not stop.is_set():
            t0 = time.perf_counter()
            r = await client.get("/metrics")
            r.raise_for_status()
            latencies.append(time.perf_counter() - t0)
            await asyncio.sleep(0.1)


async def measure(url: str, requests: int, concurrency: int, scrape: bool) -> tuple[float, int, list[float]]:
    latencies: list[float] = []
    stop = asyncio.Event()
    task = asyncio.create_task(scraper(url, stop, latencies)) if scrape else None
    wall, tokens = await burst(url, requests, concurrency)
    stop.set()
    if task:
        await task
    return wall, tokens, latencies


def in_process_cost(url: str, n: int = 200) -> float:
    """Median seconds of one scrape seen from the client, the server otherwise idle."""
    times = []
    with httpx.Client(base_url=url, headers=AUTH) as client:
        for _ in range(n):
            t0 = time.perf_counter()
            client.get("/metrics").raise_for_status()
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    global TOKENS
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=8, help="tokens generated per request")
    parser.add_argument("--rounds", type=int, default=2, help="pairs of bursts (without, with scraping)")
    args = parser.parse_args()
    TOKENS = args.tokens
    home = Path(tempfile.mkdtemp(prefix="corral-bench-"))
    # Ready means SmolLM2 is loaded (CORRAL_PRELOAD): the bursts time serving, not the load.
    serving = corral_server(home=home, probe="/health/ready", poll=0.5, CORRAL_API_KEYS=KEY, CORRAL_PRELOAD=MODEL)
    with serving as (url, _proc):
        asyncio.run(burst(url, 16, args.concurrency))  # warm up
        idle = in_process_cost(url)
        size = len(httpx.get(f"{url}/metrics", headers=AUTH).content)
        print(f"burst: {args.requests} requests x {TOKENS} tokens, {args.concurrency} at a time, SmolLM2-135M on CPU")
        print(f"scrape on an idle server: median {idle * 1e3:.2f} ms, {size} bytes")
        print("| scraping | wall s | tokens/s | scrapes | scrape median ms | scrape max ms |")
        print("| --- | --- | --- | --- | --- | --- |", flush=True)
        for scrape in [False, True] * args.rounds:  # interleaved, so drift in machine load shows
            wall, tokens, latencies = asyncio.run(measure(url, args.requests, args.concurrency, scrape))
            med = f"{statistics.median(latencies) * 1e3:.1f}" if latencies else "-"
            top = f"{max(latencies) * 1e3:.1f}" if latencies else "-"
            label = "every 0.1 s" if scrape else "none"
            print(f"| {label} | {wall:.1f} | {tokens / wall:.1f} | {len(latencies)} | {med} | {top} |", flush=True)


if __name__ == "__main__":
    main()
