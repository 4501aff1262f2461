"""Servers for tests: a real ``corral serve`` process or an app in a thread, on free loopback ports; or
the app in this process behind httpx's ASGI transport."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import httpx
import uvicorn


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def running_server(home: Path, **env: str) -> Iterator[str]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    environment = {**os.environ, "CORRAL_HOME": str(home), "CORRAL_HOST": f"127.0.0.1:{port}", **env}
    log = open(home / f"serve-{port}.log", "wb")  # noqa: SIM115  (closed below)
    proc = subprocess.Popen(
        [sys.executable, "-m", "corral.cli.main", "serve"], env=environment, stdout=log, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"corral serve exited: {(home / f'serve-{port}.log').read_text()}")
            try:
                if httpx.get(f"{url}/api/version", timeout=0.5).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@contextmanager
def app_in_thread(app: Any, port: int | None = None, **config: Any) -> Iterator[str]:
    """Serve the ASGI ``app`` with uvicorn in a daemon thread on 127.0.0.1; yields its URL.
    ``port``: one already chosen (an app whose settings name its own address); ``config``: uvicorn's."""
    port = port or free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, **{"log_level": "error", **config}))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError(f"uvicorn stopped before it served on port {port}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"uvicorn did not start on port {port} in 30 s")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


@asynccontextmanager
async def tiny_app_client(home: Path, tiny_gguf: Path, **settings: Any) -> AsyncIterator[httpx.AsyncClient]:
    """The app in this process, reached through httpx's ASGI transport, over a store in ``home`` holding
    ``tiny_gguf`` as tiny:latest; a real llama.cpp runner on the CPU backend, in this process too.
    ``settings`` override Settings fields (num_ctx, num_parallel...). The scheduler is closed after."""
    from corral.config import Settings
    from corral.models.recipes import store_gguf
    from corral.models.store import Store
    from corral.runtime.scheduler import Scheduler
    from corral.server.app import create_app

    config = Settings(
        **{"home": home, "models": home / "models", "isolate_runners": False, "backend": "cpu", **settings}
    )
    store = Store(config.models_dir)
    store_gguf(store, "tiny:latest", tiny_gguf)
    scheduler = Scheduler(config, store=store)
    transport = httpx.ASGITransport(app=create_app(config, scheduler))
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:11434", timeout=120) as client:
            yield client
    finally:
        await scheduler.close()
