"""Faults under load on a real HTTP server (fake backend): a flood beyond the queue, and mass disconnects."""

from __future__ import annotations

import asyncio
import gc
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from corral.config import Settings
from corral.runtime.scheduler import Scheduler
from corral.server.app import create_app
from fakes import FakeBackend, fake_scheduler, write_fake_model
from serverproc import app_in_thread


def _rss() -> int:
    import psutil  # the same number as /proc/self/statm's resident pages, on every system

    return int(psutil.Process().memory_info().rss)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, Scheduler, FakeBackend]]:
    settings = Settings(home=tmp_path, models=tmp_path / "models", isolate_runners=False, max_queue=64, num_parallel=4)
    write_fake_model(settings.models_dir, "fake:latest")
    backend = FakeBackend(script=b"abcdefghij" * 3, step_delay=0.0005)
    scheduler = fake_scheduler(settings, backend)
    with app_in_thread(create_app(settings, scheduler), backlog=2048) as url:
        yield url, scheduler, backend


def _room_for_descriptors() -> None:
    """The flood holds ~2,000 sockets in this one process (client and server ends). mlx, imported by
    earlier tests in the same run, lowers the soft RLIMIT_NOFILE to 2048; take back up to the hard limit."""
    try:
        import resource
    except ImportError:  # Windows: no such limit
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard if hard != resource.RLIM_INFINITY else max(soft, 8192), hard))


def test_a_flood_beyond_the_queue_gets_503_and_every_accepted_request_completes(
    served: tuple[str, Scheduler, FakeBackend],
) -> None:
    url, scheduler, _backend = served
    _room_for_descriptors()

    async def flood() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=1000, max_keepalive_connections=0)
        async with httpx.AsyncClient(base_url=url, limits=limits, timeout=120) as client:
            body = {"model": "fake", "prompt": "go", "stream": False}
            return await asyncio.gather(*[client.post("/api/generate", json=body) for _ in range(1000)])

    responses = asyncio.run(flood())
    statuses = [r.status_code for r in responses]
    assert set(statuses) <= {200, 503}
    accepted = [r for r in responses if r.status_code == 200]
    busy = [r for r in responses if r.status_code == 503]
    assert len(busy) > 0 and len(accepted) >= 64
    assert all(r.json()["done"] and r.json()["response"] == "abcdefghij" * 3 for r in accepted)
    assert all("server busy" in r.json()["error"] for r in busy)
    assert scheduler._queued == 0
    again = httpx.post(f"{url}/api/generate", json={"model": "fake", "prompt": "after", "stream": False}, timeout=30)
    assert again.status_code == 200


def test_clients_that_disconnect_mid_stream_leak_nothing(served: tuple[str, Scheduler, FakeBackend]) -> None:
    url, scheduler, backend = served
    backend.script = b"z" * 100_000  # longer than anyone will wait for
    httpx.post(
        f"{url}/api/generate",
        json={"model": "fake", "prompt": "warm", "options": {"num_predict": 2}, "stream": False},
        timeout=30,
    )
    backend.runners[0].script = backend.script

    def leave_early(i: int) -> None:
        with httpx.stream(
            "POST", f"{url}/api/generate", json={"model": "fake", "prompt": f"client {i}"}, timeout=30
        ) as r:
            next(r.iter_lines())

    def hundred_disconnects() -> int:
        threads = [threading.Thread(target=leave_early, args=(i,)) for i in range(100)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        deadline = time.monotonic() + 10
        while scheduler._queued and time.monotonic() < deadline:
            time.sleep(0.05)
        gc.collect()
        return _rss()

    after_first = hundred_disconnects()  # the allocator's pools grow once
    after_more = [hundred_disconnects() for _ in range(3)]
    assert scheduler._queued == 0
    worker = scheduler.ps()[0].worker
    assert all(slot.job is None for slot in worker.slots)  # type: ignore[union-attr]
    assert max(after_more) - after_first < 20 << 20  # memory returns to its level: no per-request leak
    runner = backend.runners[0]
    steps_after = len(runner.history)
    time.sleep(0.3)
    assert len(runner.history) == steps_after  # nothing is still generating for the departed clients
    backend.runners[0].script = b"done"
    r = httpx.post(f"{url}/api/generate", json={"model": "fake", "prompt": "next", "stream": False}, timeout=30)
    assert r.json()["response"] == "done"


@pytest.mark.parametrize(
    "path, body",
    [
        ("/api/generate", {"model": "fake", "prompt": "long", "stream": False}),
        ("/api/chat", {"model": "fake", "messages": [{"role": "user", "content": "long"}], "stream": False}),
        ("/v1/chat/completions", {"model": "fake", "messages": [{"role": "user", "content": "long"}]}),
        ("/v1/completions", {"model": "fake", "prompt": "long"}),
    ],
)
def test_a_client_that_leaves_a_non_streamed_answer_stops_its_job(
    served: tuple[str, Scheduler, FakeBackend], path: str, body: dict[str, object]
) -> None:
    url, scheduler, backend = served
    backend.script, backend.step_delay = (
        b"z" * 1_000_000,
        0.005,
    )  # the context fills in 20 s: only a cancel ends it sooner
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{url}{path}", json=body, timeout=0.5)
    deadline = time.monotonic() + 2
    while (scheduler._queued or any(m.inflight for m in scheduler.ps())) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert scheduler._queued == 0 and all(m.inflight == 0 for m in scheduler.ps())
    runner = backend.runners[0]
    steps = len(runner.history)
    time.sleep(0.3)
    assert len(runner.history) == steps  # nothing is generating for the client that left
    assert all(slot.job is None for slot in scheduler.ps()[0].worker.slots)  # type: ignore[union-attr]
