"""Start-up as a user meets it: `corral --help`, and the first token of `corral run` with no server up
(the CLI auto-starts one, which loads the model), next to a bare `python -c pass`.

Trials of each kind are interleaved so machine drift hits all alike; several checkouts can be set side by
side with --corral LABEL=PYTHON (each Python's own `corral`).

    .venv/bin/python bench/startup.py [--reps 7] [--corral before=/tmp/before/.venv/bin/python]
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from common import corral_server, ensure_in_store, free_port, median_spread, print_table, smollm2

PROMPT = "Why is the sky blue?"


def wall(cmd: list[str], env: dict[str, str] | None = None) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    return time.perf_counter() - t0


def corral_script(python: str) -> str:
    """The `corral` command installed beside that Python, as a user runs it."""
    return str(Path(python).parent / "corral")


def first_token(python: str, models: Path) -> float:
    """Seconds from starting `corral run` (no server up) to its first byte of answer on stdout."""
    home = Path(tempfile.mkdtemp(prefix="corral-startup-"))
    env = {
        **os.environ,
        "CORRAL_HOME": str(home),
        "CORRAL_MODELS": str(models),
        "CORRAL_HOST": f"127.0.0.1:{free_port()}",
    }
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [corral_script(python), "run", "smollm2:135m", PROMPT],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert proc.stdout is not None
        if not proc.stdout.read(1):
            raise RuntimeError("corral run printed nothing")
        elapsed = time.perf_counter() - t0
        proc.stdout.read()
        proc.wait(300)
    finally:
        proc.kill()
        pid_file = home / "logs" / "server.pid"
        if pid_file.exists():  # the auto-started server outlives the command by design: stop it
            try:
                os.kill(int(pid_file.read_text()), signal.SIGTERM)
            except ProcessLookupError:
                pass
    return elapsed


def stages(python: str, models: Path) -> tuple[float, float, float]:
    """Where `corral run`'s first token goes: `corral serve` up (answering /api/version), the first
    /api/generate (model load, prefill, one token), and a second one (prefill, one token)."""
    home = Path(tempfile.mkdtemp(prefix="corral-stages-"))
    t0 = time.perf_counter()
    with corral_server(python, home=home, poll=0.01, CORRAL_MODELS=str(models)) as (url, _proc):
        up = time.perf_counter() - t0
        body = {"model": "smollm2:135m", "prompt": PROMPT, "stream": False, "options": {"num_predict": 1}}
        t1 = time.perf_counter()
        httpx.post(f"{url}/api/generate", json=body, timeout=300).raise_for_status()
        cold = time.perf_counter() - t1
        body["prompt"] = PROMPT + " Say it briefly."  # not a cached prefix of the first
        t2 = time.perf_counter()
        httpx.post(f"{url}/api/generate", json=body, timeout=300).raise_for_status()
        warm = time.perf_counter() - t2
    return up, cold, warm


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--corral", action="append", default=[], metavar="[LABEL=]PYTHON")
    args = parser.parse_args()
    checkouts = [c.split("=", 1) if "=" in c else [c, c] for c in args.corral] or [["this", sys.executable]]
    models = Path(tempfile.mkdtemp(prefix="corral-models-"))
    ensure_in_store(models, smollm2())
    bare: list[float] = []
    helps: dict[str, list[float]] = {label: [] for label, _ in checkouts}
    runs: dict[str, list[float]] = {label: [] for label, _ in checkouts}
    parts: dict[str, list[tuple[float, float, float]]] = {label: [] for label, _ in checkouts}
    for _ in range(args.reps):
        bare.append(wall([sys.executable, "-c", "pass"]))
        for label, python in checkouts:
            helps[label].append(wall([corral_script(python), "--help"]))
            runs[label].append(first_token(python, models))
            parts[label].append(stages(python, models))
    rows = [["python -c pass", median_spread([b * 1e3 for b in bare]), ""]]
    rows += [
        [f"corral ({label})", median_spread([h * 1e3 for h in helps[label]]), median_spread(runs[label])]
        for label, _ in checkouts
    ]
    print_table(
        f"Start-up, median (min–max) of {args.reps} interleaved trials",
        ["command", "--help ms", "`corral run` first token s (no server up)"],
        rows,
    )
    print_table(
        "Where the first token goes (the same trials): serve up, first /api/generate of one token, the next one",
        ["checkout", "serve answers s", "first request s (load)", "next request s"],
        [[label] + [median_spread([p[i] for p in parts[label]]) for i in range(3)] for label, _ in checkouts],
    )


if __name__ == "__main__":
    main()
