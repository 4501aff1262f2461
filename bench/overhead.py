"""CPU that Corral's serving path spends per generated token, around the engine.

A simulated engine (a plugin found through PYTHONPATH, as a third-party one would be) sleeps for
--step-ms per batched step instead of decoding and emits one letter per sequence, so everything
the processes spend is Corral's own work: HTTP, scheduling, the runner-process pipe, the owner
thread's bookkeeping, SSE/NDJSON framing. CPU time barely depends on what else the machine does,
so unlike the speed benchmarks this one gives usable figures on a busy machine.

    .venv/bin/python bench/overhead.py [--streams 1,4,16] [--tokens 96] [--rounds 3] [--step-ms 6]
        [--corral-python /other/venv/bin/python] [--api openai|ollama]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import httpx

from common import corral_server, cpu_jiffies, proc_stats

SIMULATED = """
import time
from corral.hookspecs import ModelInfo, Probe, hookimpl

class Runner:
    def __init__(self, spec, delay):
        self.delay = delay
        self.info = ModelInfo("sim", 4096, spec.num_ctx, 300, 4, spec.num_parallel, None, False, "", "", None, 10, 0)
        self.pos = {}
    def tokenize(self, text, *, special=True, add_bos=False): return list(text.encode())
    def token_bytes(self, token): return bytes([token]) if token < 256 else b""
    def is_end_of_generation(self, token): return token == 299
    def set_sampling(self, seq, sampling): pass
    def cached(self, seq): return self.pos.get(seq, 0)
    def truncate(self, seq, keep):
        self.pos[seq] = min(keep, self.pos.get(seq, 0))
        return self.pos[seq]
    def step(self, batch):
        time.sleep(self.delay)
        out = {}
        for s in batch:
            self.pos[s.seq] = self.pos.get(s.seq, 0) + len(s.tokens)
            if s.sample:
                out[s.seq] = 97 + self.pos[s.seq] % 26
        return out
    def embed(self, texts): return [[0.0] * 4 for _ in texts]
    def close(self): pass

class Simulated:
    name, priority, description = "sim", 1, "sleeps instead of decoding"
    def probe(self): return Probe(available=True)
    def load(self, spec):
        import os
        return Runner(spec, float(os.environ.get("CORRAL_SIM_STEP_MS", "6")) / 1000)

@hookimpl
def corral_register_backends(register):
    register(Simulated())
"""


def install_plugin(site: Path) -> None:
    (site / "corral_sim.py").write_text(textwrap.dedent(SIMULATED))
    info = site / "corral_sim-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: corral-sim\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[corral]\nsim = corral_sim\n")


def cpu_seconds(pid: int) -> tuple[float, float]:
    """User + system CPU of a process, and of its children (the runner process)."""
    stats = proc_stats()
    own = cpu_jiffies(stats[pid]) if pid in stats else 0
    children = sum(cpu_jiffies(fields) for fields in stats.values() if int(fields[1]) == pid)
    hz = os.sysconf("SC_CLK_TCK")
    return own / hz, children / hz


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.3f} ({min(values):.3f}–{max(values):.3f})"


def one_stream(url: str, api: str, prompt: str, tokens: int) -> int:
    if api == "openai":
        body = {"model": "sim", "prompt": prompt, "max_tokens": tokens, "stream": True, "temperature": 0}
        path, n = "/v1/completions", 0
        with httpx.stream("POST", url + path, json=body, timeout=300) as r:
            for line in r.iter_lines():
                if line.startswith("data: {") and json.loads(line[6:])["choices"][0]["text"]:
                    n += 1
        return n
    body = {"model": "sim", "prompt": prompt, "raw": True, "options": {"num_predict": tokens, "temperature": 0}}
    n = 0
    with httpx.stream("POST", url + "/api/generate", json=body, timeout=300) as r:
        for line in r.iter_lines():
            if json.loads(line).get("response"):
                n += 1
    return n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", default="1,4,16")
    parser.add_argument("--tokens", type=int, default=96)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--step-ms", type=float, default=6.0)
    parser.add_argument("--api", default="openai", choices=["openai", "ollama"])
    parser.add_argument("--corral-python", default=sys.executable)
    parser.add_argument("--isolate", default="true", help="CORRAL_ISOLATE_RUNNERS")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        site = Path(tmp) / "site"
        site.mkdir()
        install_plugin(site)
        models = Path(tmp) / "models"
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        from fakes import write_fake_model

        write_fake_model(models, "sim:latest")
        env = {
            "PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")])),
            "CORRAL_MODELS": str(models), "CORRAL_BACKEND": "sim", "CORRAL_SIM_STEP_MS": str(args.step_ms),
            "CORRAL_NUM_PARALLEL": "4", "CORRAL_KEEP_ALIVE": "-1", "CORRAL_ISOLATE_RUNNERS": args.isolate,
        }  # fmt: skip
        rows = []
        with corral_server(python=args.corral_python, **env) as (url, proc):
            one_stream(url, args.api, "warm up", 4)
            for n in (int(x) for x in args.streams.split(",")):
                per_token: list[float] = []
                server: list[float] = []
                runner: list[float] = []
                for r in range(args.rounds):
                    got = [0] * n
                    c0, t0 = cpu_seconds(proc.pid), time.perf_counter()

                    def run(i: int, r: int = r, got: list[int] = got) -> None:
                        got[i] = one_stream(url, args.api, f"{r}-{i}. Once upon a time", args.tokens)

                    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
                    for t in threads:
                        t.start()
                    for t in threads:
                        t.join()
                    wall = time.perf_counter() - t0
                    c1, tokens = cpu_seconds(proc.pid), max(1, sum(got))
                    server.append((c1[0] - c0[0]) / tokens * 1e3)
                    runner.append((c1[1] - c0[1]) / tokens * 1e3)
                    per_token.append(server[-1] + runner[-1])
                rows.append(
                    f"| {n} | {spread(per_token)} | {spread(server)} | {spread(runner)} | {sum(got) / wall:.0f} |"
                )
    print(
        f"\nCorral's own CPU per generated token ({args.api} API, isolate={args.isolate}, simulated {args.step_ms} ms steps)"
    )
    print(f"corral: {args.corral_python}\n")
    print("| streams | CPU ms/token, median (min–max) | server process | runner process | tokens/s (last round) |")
    print("|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
