"""Corral against llama.cpp's own llama-server (what Ollama runs for GGUF models), side by side.

Each serves the bundled SmolLM2 with the same threads, slots, context per slot and flash attention,
over /v1/completions, greedy, no repeat penalty. Rounds are paired and interleaved (Corral then
llama-server, then the other way round) so machine drift hits both alike; a pair during which other
processes used more than --max-foreign of the CPU is repeated, and counted as disturbed if it never
comes clean. Printed: each side's median (min–max) and the median (min–max) of the per-pair ratios.

    .venv/bin/python bench/vs_llama_server.py [--rounds 5] [--streams 1,4,8,16] [--tokens 96]
        [--corral before=/other/venv/bin/python --corral after=.venv/bin/python]  # checkouts side by side
        [--kv-cache-type f16|q8_0|q4_0]

llama-server is built once (about 5 minutes on 2 cores) from the llama.cpp vendored in the pinned
llama-cpp-python sdist, into ~/.cache/corral-bench/llama-server-<version>/. A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import statistics
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from common import (
    CACHE,
    MAX_FOREIGN,
    THREADS,
    Disturbance,
    corral_server,
    ensure_in_store,
    free_port,
    models_dir,
    process_tree,
    smollm2,
    wait_ready,
)

LLAMA_CPP_PYTHON = "0.3.36"
SLOTS = 4
NUM_CTX = 4096  # per slot, on both sides
OPENING = (
    "Once upon a time, in a quiet harbour town at the edge of a great grey sea, there lived an old clockmaker named"
)


# ---- llama-server ------------------------------------------------------------------------------
def ensure_llama_server() -> Path:
    """The llama-server binary, built from the vendored llama.cpp of the pinned sdist on first use."""
    root = CACHE / f"llama-server-{LLAMA_CPP_PYTHON}"
    source = root / "src" / f"llama_cpp_python-{LLAMA_CPP_PYTHON}" / "vendor" / "llama.cpp"
    binary = source / "build" / "bin" / "llama-server"
    if binary.exists():
        return binary
    root.mkdir(parents=True, exist_ok=True)
    print(
        f"building llama-server from llama-cpp-python {LLAMA_CPP_PYTHON}'s sources (about 5 minutes)…", file=sys.stderr
    )
    sdist = root / "sdist" / f"llama_cpp_python-{LLAMA_CPP_PYTHON}.tar.gz"
    if not sdist.exists():
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", "llama-cpp-python",
             f"llama-cpp-python=={LLAMA_CPP_PYTHON}", "-d", str(sdist.parent)],
            check=True,
        )  # fmt: skip
    if not source.exists():
        with tarfile.open(sdist) as tar:
            tar.extractall(root / "src", filter="data")
    nice = ["nice", "-n", "10"]
    subprocess.run([*nice, "cmake", "-B", "build", "-DGGML_NATIVE=ON", "-DLLAMA_CURL=OFF", "-DLLAMA_USE_PREBUILT_UI=OFF",
                    "-DCMAKE_BUILD_TYPE=Release"], cwd=source, check=True, stdout=subprocess.DEVNULL)  # fmt: skip
    subprocess.run(
        [*nice, "cmake", "--build", "build", "--target", "llama-server", f"-j{os.cpu_count() or 2}"],
        cwd=source,
        check=True,
    )
    return binary


@contextmanager
def llama_server(binary: Path, gguf: Path, alias: str, kv_type: str, log: Path) -> Iterator[tuple[str, int]]:
    port = free_port()
    cmd = [
        str(binary), "--model", str(gguf), "--alias", alias, "--host", "127.0.0.1", "--port", str(port),
        "--threads", str(THREADS), "--threads-batch", str(THREADS), "--parallel", str(SLOTS),
        "--ctx-size", str(NUM_CTX * SLOTS), "--flash-attn", "on", "--cache-type-k", kv_type, "--cache-type-v", kv_type,
        "--no-webui",
    ]  # fmt: skip
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(f"{url}/health", 120)
        yield url, proc.pid
    finally:
        proc.terminate()
        proc.wait(30)


# ---- one request ---------------------------------------------------------------------------------
@dataclass
class Stream:
    first: float = 0.0  # seconds from the start of the trial to the first text
    last: float = 0.0
    tokens: int = 0


def body(alias: str, prompt: str, tokens: int, stream: bool) -> dict[str, object]:
    """One body both servers read alike: llama-server takes ``repeat_penalty`` at the top level,
    Corral in ``options`` (OpenAI's defaults would otherwise give it Ollama's 1.1)."""
    return {
        "model": alias, "prompt": prompt, "max_tokens": tokens, "temperature": 0, "stream": stream,
        "repeat_penalty": 1.0, "options": {"repeat_penalty": 1.0, "num_thread": THREADS},
        **({"stream_options": {"include_usage": True}} if stream else {}),
    }  # fmt: skip


def stream_one(client: httpx.Client, url: str, alias: str, prompt: str, tokens: int, t0: float) -> Stream:
    got = Stream()
    chunks = 0
    with client.stream("POST", f"{url}/v1/completions", json=body(alias, prompt, tokens, True)) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            data = json.loads(line[6:])
            usage = data.get("usage")
            if usage:
                got.tokens = int(usage["completion_tokens"])
            choices = data.get("choices") or []
            if choices and choices[0].get("text"):
                now = time.perf_counter() - t0
                got.first = got.first or now
                got.last = now
                chunks += 1
    got.tokens = got.tokens or chunks
    return got


@dataclass
class Trial:
    value: float  # what the row reports (tok/s, or ms for TTFT)
    extra: dict[str, float] = field(default_factory=dict)


def streams_trial(url: str, alias: str, n: int, tokens: int, k: int) -> Trial:
    """n streams sent together: aggregate tok/s from the first request to the last token, and the worst TTFT."""
    results: list[Stream | BaseException] = [Stream() for _ in range(n)]
    with httpx.Client(timeout=300) as client:
        t0 = time.perf_counter()

        def run(i: int) -> None:
            try:
                results[i] = stream_one(client, url, alias, f"{k}-{i}. {OPENING}", tokens, t0)
            except BaseException as exc:  # reported below, with the trial
                results[i] = exc

        threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    errors = [r for r in results if isinstance(r, BaseException)]
    if errors:
        raise RuntimeError(f"{len(errors)} of {n} streams failed: {errors[0]!r}")
    done = [r for r in results if isinstance(r, Stream)]
    total = sum(r.tokens for r in done)
    end = max(r.last for r in done)
    return Trial(total / end, {"worst_ttft_ms": max(r.first for r in done) * 1e3, "tokens": total})


def long_prompt(k: int, target_tokens: int, count: Callable[[str], int]) -> str:
    sentences = [
        "The lighthouse keeper counted the ships that passed the rocks each evening.",
        "Her brother repaired nets in a shed that smelled of tar and salt.",
        "In winter the market moved indoors, and the baker sold bread by candlelight.",
        "Nobody remembered who had planted the orchard on the hill above the chapel.",
        "Twice a year a travelling tinker came with pots, knives and improbable stories.",
    ]
    text, i = f"Chronicle {k}.", 0
    while count(text) < target_tokens - 20:
        text += " " + sentences[i % len(sentences)]
        i += 1
    return text


def prefill_trial(url: str, alias: str, prompt: str) -> Trial:
    """One long prompt, one token out: prompt tokens per second, request to answer."""
    t0 = time.perf_counter()
    r = httpx.post(f"{url}/v1/completions", json=body(alias, prompt, 1, False), timeout=300)
    elapsed = time.perf_counter() - t0
    r.raise_for_status()
    n = int(r.json()["usage"]["prompt_tokens"])
    return Trial(n / elapsed, {"prompt_tokens": n})


# ---- memory --------------------------------------------------------------------------------------
def memory_of(pid: int) -> dict[str, float]:
    """RSS and PSS (shared pages counted once across the processes) of a process and its children, MiB."""
    rss = pss = 0
    for p in process_tree(pid):
        try:
            with open(f"/proc/{p}/smaps_rollup") as fh:
                for line in fh:
                    name, _, rest = line.partition(":")
                    if name == "Rss":
                        rss += int(rest.split()[0])
                    elif name == "Pss":
                        pss += int(rest.split()[0])
        except OSError:
            continue
    return {"rss": rss / 1024, "pss": pss / 1024, "processes": float(len(process_tree(pid)))}


def kv_bytes_per_slot(gguf: Path, cells: int, kv_type: str) -> int:
    """K and V for ``cells`` tokens, every layer, from the GGUF's own header (llama.cpp's formula)."""
    from corral.formats.gguf import read_header

    per_element = {"f16": 2.0, "q8_0": 34 / 32, "q4_0": 18 / 32}[kv_type]
    kv, _tensors = read_header(gguf)
    arch = kv["general.architecture"]
    layers = int(kv[f"{arch}.block_count"])
    heads = int(kv[f"{arch}.attention.head_count"])
    heads_kv = kv.get(f"{arch}.attention.head_count_kv", heads)
    head_kv = heads_kv if isinstance(heads_kv, list) else [heads_kv] * layers
    dim = int(kv[f"{arch}.embedding_length"]) // heads
    dim_k = int(kv.get(f"{arch}.attention.key_length", dim))
    dim_v = int(kv.get(f"{arch}.attention.value_length", dim))
    return int(sum(cells * (dim_k + dim_v) * int(h) * per_element for h in head_kv))


def llama_server_kv_mib(log: Path) -> float | None:
    match = re.search(r"llama_kv_cache: size = +([\d.]+) MiB", log.read_text(errors="replace"))
    return float(match.group(1)) if match else None


# ---- the table ------------------------------------------------------------------------------------
def spread(values: list[float], fmt: str = "{:.1f}") -> str:
    if not values:
        return "n/a"
    return f"{fmt.format(statistics.median(values))} ({fmt.format(min(values))}–{fmt.format(max(values))})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--streams", default="1,4,8,16")
    parser.add_argument("--tokens", type=int, default=96)
    parser.add_argument("--prefill-tokens", type=int, default=2000)
    parser.add_argument(
        "--corral", action="append", metavar="[LABEL=]PYTHON",
        help="a Python whose `corral` to serve; repeat to compare checkouts in the same rounds (default: this one)",
    )  # fmt: skip
    parser.add_argument("--kv-cache-type", default="f16", choices=["f16", "q8_0", "q4_0"])
    parser.add_argument("--max-foreign", type=float, default=MAX_FOREIGN)
    parser.add_argument(
        "--tries",
        type=int,
        default=3,
        help="attempts at an undisturbed round of a measure before keeping a disturbed one",
    )
    args = parser.parse_args()
    counts = [int(x) for x in args.streams.split(",")]
    corrals: dict[str, str] = {}
    for item in args.corral or [sys.executable]:
        label, _, python = item.rpartition("=")
        corrals[label or ("corral" if len(args.corral or []) <= 1 else python)] = python

    binary = ensure_llama_server()
    model = smollm2()
    ensure_in_store(models_dir(), model)
    log = CACHE / "llama-server.log"
    env = {
        "CORRAL_NUM_PARALLEL": str(SLOTS), "CORRAL_NUM_CTX": str(NUM_CTX), "CORRAL_FLASH_ATTENTION": "true",
        "CORRAL_KV_CACHE_TYPE": args.kv_cache_type, "CORRAL_KEEP_ALIVE": "-1",
    }  # fmt: skip
    import llama_cpp

    vocab_model = _vocab_only(llama_cpp, model.path)
    prompt_2k = lambda k: long_prompt(k, args.prefill_tokens, lambda t: _count(llama_cpp, vocab_model, t))  # noqa: E731

    with contextlib.ExitStack() as stack:
        sides: dict[str, str] = {}
        pids: dict[str, int] = {}
        for label, python in corrals.items():
            url, proc = stack.enter_context(corral_server(python=python, **env))
            sides[label], pids[label] = url, proc.pid
        sides["llama-server"], pids["llama-server"] = stack.enter_context(
            llama_server(binary, model.path, model.name, args.kv_cache_type, log)
        )
        for url in sides.values():  # load the model and touch every path once
            streams_trial(url, model.name, 4, 8, -1)
            prefill_trial(url, model.name, prompt_2k(-1))

        measures: list[tuple[str, Callable[[str, int], Trial]]] = [
            (f"{n} stream{'s' if n > 1 else ''}", lambda url, k, n=n: streams_trial(url, model.name, n, args.tokens, k))
            for n in counts
        ]
        measures.append(
            (f"prefill {args.prefill_tokens} tokens", lambda url, k: prefill_trial(url, model.name, prompt_2k(k)))
        )
        results: dict[str, dict[str, list[Trial]]] = {name: {s: [] for s in sides} for name, _ in measures}
        disturbed: dict[str, int] = {name: 0 for name, _ in measures}
        k = 0
        for r in range(args.rounds):
            order = list(sides) if r % 2 == 0 else list(reversed(sides))
            for name, fn in measures:
                for attempt in range(args.tries):
                    group: dict[str, Trial] = {}
                    with Disturbance() as d:
                        for side in order:
                            k += 1
                            group[side] = fn(sides[side], k)
                    if d.foreign <= args.max_foreign or attempt == args.tries - 1:
                        break
                if d.foreign > args.max_foreign:
                    disturbed[name] += 1
                for side, trial in group.items():
                    results[name][side].append(trial)
                print(f"round {r + 1} {name}: " + ", ".join(f"{s} {t.value:.1f}" for s, t in group.items())
                      + f" (others {d.foreign:.0%})", file=sys.stderr, flush=True)  # fmt: skip
        memory = {side: memory_of(pid) for side, pid in pids.items()}
        server_kv = llama_server_kv_mib(log)

    corral_sides = list(corrals)
    header = ["", *corral_sides, "llama-server", *(f"{c} / llama-server" for c in corral_sides), "disturbed rounds"]
    rows: list[list[str]] = []
    for name, _fn in measures:
        ref = results[name]["llama-server"]
        unit = "prompt tok/s" if name.startswith("prefill") else "tok/s"
        rows.append([
            f"{name}, {unit}", *(spread([t.value for t in results[name][c]]) for c in corral_sides), spread([t.value for t in ref]),
            *(spread([a.value / b.value for a, b in zip(results[name][c], ref, strict=False)], "{:.2f}") for c in corral_sides),
            f"{disturbed[name]}/{args.rounds}",
        ])  # fmt: skip
        if name == "4 streams":
            worst = {side: [t.extra["worst_ttft_ms"] for t in results[name][side]] for side in sides}
            rows.append([
                "4 streams, worst TTFT ms", *(spread(worst[c], "{:.0f}") for c in corral_sides), spread(worst["llama-server"], "{:.0f}"),
                *(spread([a - b for a, b in zip(worst[c], worst["llama-server"], strict=False)], "{:+.0f}") + " ms" for c in corral_sides),
                f"{disturbed[name]}/{args.rounds}",
            ])  # fmt: skip
    lm = memory["llama-server"]
    for key, what in (("rss", "RSS MiB, all processes"), ("pss", "PSS MiB, shared pages counted once")):
        rows.append([
            what, *(f"{memory[c][key]:.0f}" for c in corral_sides), f"{lm[key]:.0f}",
            *(f"{memory[c][key] / lm[key]:.2f}" for c in corral_sides), "",
        ])  # fmt: skip
    per_slot = kv_bytes_per_slot(model.path, NUM_CTX, args.kv_cache_type) / 2**20
    measured = f" (its log: {server_kv / SLOTS:.1f})" if server_kv else ""
    rows.append([
        f"KV cache per slot MiB ({args.kv_cache_type}, {NUM_CTX} tokens)", *(f"{per_slot:.1f}" for _ in corral_sides),
        f"{per_slot:.1f}{measured}", *("" for _ in corral_sides), "",
    ])  # fmt: skip

    print(
        f"\nCorral vs llama-server ({model.name}, {THREADS} threads, {SLOTS} slots x {NUM_CTX} tokens, flash attention, "
        f"KV {args.kv_cache_type}, greedy, {args.tokens} tokens per stream, /v1/completions); "
        f"median (min–max) of {args.rounds} interleaved rounds"
    )
    for label, python in corrals.items():
        print(f"  {label}: {python}")
    print()
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    print("| " + " | ".join(h.ljust(w) for h, w in zip(header, widths, strict=False)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in rows:
        print("| " + " | ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=False)) + " |")


def _vocab_only(llama_cpp: object, gguf: Path) -> object:
    L = llama_cpp
    params = L.llama_model_default_params()  # type: ignore[attr-defined]
    params.vocab_only = True
    return L.llama_model_load_from_file(str(gguf).encode(), params)  # type: ignore[attr-defined]


def _count(llama_cpp: object, model: object, text: str) -> int:
    import ctypes

    L = llama_cpp
    vocab = L.llama_model_get_vocab(model)  # type: ignore[attr-defined]
    data = text.encode()
    arr = (ctypes.c_int32 * (len(data) + 8))()
    return int(L.llama_tokenize(vocab, data, len(data), arr, len(data) + 8, True, True))  # type: ignore[attr-defined]


if __name__ == "__main__":
    main()
