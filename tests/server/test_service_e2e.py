"""A real `corral serve` with the bundled SmolLM2, run as a service: metrics under four concurrent
streams, preloading and readiness, and SIGTERM draining three streams before a clean exit."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from serverproc import free_port
from test_metrics import scrape, value

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]  # a shared, loaded machine can be slow

MODEL = "smollm2:135m"
KEY = "service-test-key"
AUTH = {"authorization": f"Bearer {KEY}"}
LONG = {"temperature": 0, "num_predict": 48}
COUNTING = [{"role": "user", "content": "Count from 1 to 300, one number per line."}]  # long: it stops at num_predict


@contextmanager
def serve(home: Path, **env: str) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    environment = {
        **os.environ, "CORRAL_HOME": str(home), "CORRAL_HOST": f"127.0.0.1:{port}", "CORRAL_API_KEYS": KEY,
        "CORRAL_PRELOAD": MODEL, "CORRAL_NUM_PARALLEL": "4", **env,
    }  # fmt: skip
    log = open(home / f"serve-{port}.log", "wb")  # noqa: SIM115  (closed below)
    proc = subprocess.Popen(
        [sys.executable, "-m", "corral.cli.main", "serve"], env=environment, stdout=log, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # ready only once the preloaded model is in
            assert proc.poll() is None, (home / f"serve-{port}.log").read_text()
            try:
                if httpx.get(f"{url}/health/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        yield url, proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        log.close()


class Stream(threading.Thread):
    """One streamed /api/chat; ``started`` is set at its first line."""

    def __init__(self, url: str) -> None:
        super().__init__()
        self.url = url
        self.started = threading.Event()
        self.lines: list[dict[str, Any]] = []
        self.finished_at = 0.0

    def run(self) -> None:
        body = {"model": MODEL, "messages": COUNTING, "options": LONG}
        with httpx.stream("POST", f"{self.url}/api/chat", json=body, headers=AUTH, timeout=120) as r:
            for line in r.iter_lines():
                if line:
                    self.lines.append(json.loads(line))
                    self.started.set()
        self.finished_at = time.monotonic()


def test_metrics_under_four_streams_and_token_counters(_corral_home: Path) -> None:
    with serve(_corral_home) as (url, _proc):
        assert httpx.get(f"{url}/health/ready", params={"model": MODEL}).status_code == 200
        assert httpx.get(f"{url}/metrics").status_code == 401
        before = scrape(url, **AUTH)
        streams = [Stream(url) for _ in range(4)]
        for s in streams:
            s.start()
        for s in streams:
            assert s.started.wait(120)
        during = scrape(url, **AUTH)
        for s in streams:
            s.join(180)
        after = scrape(url, **AUTH)
    assert value(during, "corral:num_requests_running", model_name=MODEL) == 4
    assert 0 < value(during, "corral:kv_cache_usage_perc", model_name=MODEL) <= 1
    finals = [s.lines[-1] for s in streams]
    assert all(f["done"] for f in finals)
    generated = sum(f["eval_count"] for f in finals)
    evaluated = sum(f["prompt_eval_count"] for f in finals)
    assert (
        value(after, "corral:generation_tokens_total", model_name=MODEL)
        - value(before, "corral:generation_tokens_total", model_name=MODEL)
        == generated
    )
    assert (
        value(after, "corral:prompt_tokens_total", model_name=MODEL)
        - value(before, "corral:prompt_tokens_total", model_name=MODEL)
        == evaluated
    )
    assert value(after, "corral:num_requests_running", model_name=MODEL) == 0
    assert value(after, "corral:model_loaded", model_name=MODEL, backend="cpu", processor="100% CPU") == 1


def test_sigterm_drains_three_streams_then_exits_0(_corral_home: Path) -> None:
    grace = 300  # a bound, not a timing: this machine may be shared and slow
    with serve(_corral_home, CORRAL_SHUTDOWN_GRACE=str(grace)) as (url, proc):
        streams = [Stream(url) for _ in range(3)]
        for s in streams:
            s.start()
        for s in streams:
            assert s.started.wait(120)
        proc.send_signal(signal.SIGTERM)
        refused = httpx.post(f"{url}/api/chat", json={"model": MODEL, "messages": COUNTING}, headers=AUTH, timeout=30)
        refused_at = time.monotonic()
        openai_refused = httpx.post(
            f"{url}/v1/chat/completions", json={"model": MODEL, "messages": COUNTING}, headers=AUTH, timeout=30
        )
        ready = httpx.get(f"{url}/health/ready", timeout=30)
        live = httpx.get(f"{url}/health/live", timeout=30)
        try:
            code = proc.wait(grace)
        except subprocess.TimeoutExpired:
            pytest.fail(
                f"corral serve did not exit: {sorted(_corral_home.glob('serve-*.log'))[-1].read_text()[-3000:]}"
            )
        for s in streams:
            s.join(30)
    assert refused.status_code == 503 and "shutting down" in refused.json()["error"]
    assert openai_refused.status_code == 503 and openai_refused.json()["error"]["type"] == "server_error"
    assert ready.status_code == 503 and live.status_code == 200
    for s in streams:
        assert s.finished_at > refused_at  # still streaming when the new request was refused
        final = s.lines[-1]
        assert final["done"] and final["done_reason"] in ("stop", "length") and "error" not in final
        assert (
            final["eval_count"] >= len(s.lines) - 1 and "".join(line["message"]["content"] for line in s.lines).strip()
        )
    assert code == 0
