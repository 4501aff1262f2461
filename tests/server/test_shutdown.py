"""SIGTERM draining with a fake backend on a real HTTP server: new requests get 503 while streams in
flight finish; past the grace period the rest end with a final error line, never a torn body."""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from corral.config import Settings
from corral.runtime.scheduler import Scheduler
from corral.server.app import create_app
from corral.server.service import DrainingServer
from fakes import FakeBackend, fake_scheduler, write_fake_model
from serverproc import free_port

SCRIPT = b"0123456789" * 40


def _serve(tmp_path: Path, grace: float) -> tuple[str, DrainingServer, threading.Thread, Scheduler]:
    settings = Settings(
        home=tmp_path, models=tmp_path / "models", isolate_runners=False, num_parallel=4, shutdown_grace=grace
    )
    write_fake_model(settings.models_dir, "fake:latest")
    scheduler = fake_scheduler(settings, FakeBackend(script=SCRIPT, step_delay=0.01))
    app = create_app(settings, scheduler)
    port = free_port()
    server = DrainingServer(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"), app.state.lifecycle, scheduler, grace
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    return f"http://127.0.0.1:{port}", server, thread, scheduler


class Stream(threading.Thread):
    def __init__(self, url: str, num_predict: int) -> None:
        super().__init__()
        self.url, self.num_predict = url, num_predict
        self.started = threading.Event()
        self.lines: list[dict[str, Any]] = []
        self.ended_at = 0.0

    def run(self) -> None:
        body = {"model": "fake", "prompt": "go", "options": {"num_predict": self.num_predict}}
        with httpx.stream("POST", f"{self.url}/api/generate", json=body, timeout=60) as r:
            for line in r.iter_lines():
                self.lines.append(json.loads(line))
                self.started.set()
        self.ended_at = time.monotonic()


@pytest.fixture
def streams_in_flight(
    tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[tuple[str, DrainingServer, threading.Thread, Scheduler, list[Stream]]]:
    grace, num_predict = request.param
    url, server, thread, scheduler = _serve(tmp_path, grace)
    streams = [Stream(url, num_predict) for _ in range(3)]
    for s in streams:
        s.start()
    for s in streams:
        assert s.started.wait(30)
    yield url, server, thread, scheduler, streams
    server.should_exit = True
    thread.join(10)


@pytest.mark.parametrize("streams_in_flight", [(60.0, 300)], indirect=True)
def test_sigterm_lets_streams_finish_and_refuses_new_work(streams_in_flight: Any) -> None:
    url, server, thread, scheduler, streams = streams_in_flight
    server.handle_exit(signal.SIGTERM, None)  # what the signal handler calls
    while not server.lifecycle.draining:
        time.sleep(0.01)
    refused = httpx.post(f"{url}/api/generate", json={"model": "fake", "prompt": "late"})
    refused_at = time.monotonic()
    assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
    assert httpx.get(f"{url}/health/ready").status_code == 503
    assert httpx.get(f"{url}/health/live").status_code == 200
    for s in streams:
        s.join(60)
    thread.join(60)
    assert not thread.is_alive()  # the server returned: the process would exit 0
    for s in streams:
        assert s.ended_at > refused_at
        assert s.lines[-1]["done"] and s.lines[-1]["done_reason"] == "length" and s.lines[-1]["eval_count"] == 300
        assert "".join(line.get("response", "") for line in s.lines) == SCRIPT[:300].decode()
    assert scheduler.ps() == []  # unloaded on the way out


@pytest.mark.parametrize("streams_in_flight", [(0.3, 400)], indirect=True)
def test_past_the_grace_period_streams_end_with_an_error_line(streams_in_flight: Any) -> None:
    _url, server, thread, scheduler, streams = streams_in_flight
    server.handle_exit(signal.SIGTERM, None)
    for s in streams:
        s.join(60)
    thread.join(60)
    assert not thread.is_alive()
    for s in streams:
        assert s.lines[-1] == {"error": "the model was unloaded"}
    assert scheduler.ps() == []
