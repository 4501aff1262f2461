"""Health probes and the server's life cycle: /health/live, /health/ready, draining on SIGTERM, preloading.

Draining: new requests get 503 while those in flight (streams included) finish; the probes still
answer, readiness with 503, so a load balancer stops sending work before the process goes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from corral.config import Settings
from corral.errors import CorralError, ModelNotFound
from corral.runtime import generation
from corral.runtime.generation import Target
from corral.runtime.scheduler import Scheduler

log = logging.getLogger("corral.server.health")
PROBES = ("/health/live", "/health/ready")


class Lifecycle:
    """Requests in flight, whether we are draining, and whether the preloaded models are in."""

    def __init__(self, preload: list[str]) -> None:
        self.inflight = 0
        self.draining = False
        self.preload = preload
        self.preload_error: str | None = None
        self.preloaded = not preload
        self._idle = asyncio.Event()
        self._idle.set()

    def started(self) -> None:
        self.inflight += 1
        self._idle.clear()

    def finished(self) -> None:
        self.inflight -= 1
        if self.inflight == 0:
            self._idle.set()

    def begin_drain(self) -> None:
        if not self.draining:
            log.warning("draining: %d request(s) in flight; new requests get 503", self.inflight)
        self.draining = True

    async def drained(self, grace: float) -> bool:
        """Wait until nothing is in flight or ``grace`` seconds pass; True when everything finished."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout=grace)
            return True
        except TimeoutError:
            return False


def _json_reply(status: int, body: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    start = {"type": "http.response.start", "status": status, "headers": [(b"content-type", b"application/json")]}
    return start, {"type": "http.response.body", "body": json.dumps(body).encode()}


class DrainMiddleware:
    """Counts requests in flight (a stream counts until its last byte) and refuses new ones while draining."""

    def __init__(self, app: ASGIApp, lifecycle: Lifecycle) -> None:
        self.app = app
        self.lifecycle = lifecycle

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in PROBES:
            await self.app(scope, receive, send)
            return
        if self.lifecycle.draining:
            message = "the server is shutting down; retry on another replica"
            body: Any = {"error": message}
            if scope["path"].startswith("/v1/"):
                body = {"error": {"message": message, "type": "server_error", "param": None, "code": None}}
            start, end = _json_reply(503, body)
            start["headers"].append((b"retry-after", b"1"))
            start["headers"].append((b"connection", b"close"))
            await send(start)
            await send(end)
            return
        self.lifecycle.started()
        try:
            await self.app(scope, receive, send)
        finally:
            self.lifecycle.finished()


async def preload(scheduler: Scheduler, lifecycle: Lifecycle) -> None:
    """Load (pulling first if needed) each CORRAL_PRELOAD model and keep it loaded; ready afterwards."""
    for model in lifecycle.preload:
        t0 = time.perf_counter()
        try:
            try:
                await generation.load(scheduler, Target(model, keep_alive=-1))
            except ModelNotFound:
                await asyncio.to_thread(_pull, scheduler, model)
                await generation.load(scheduler, Target(model, keep_alive=-1))
            log.warning("preloaded %s in %.1f s", model, time.perf_counter() - t0)
        except CorralError as exc:
            lifecycle.preload_error = f"preloading {model} failed: {exc}"
            log.error("%s", lifecycle.preload_error)
            return
    lifecycle.preloaded = True


def _pull(scheduler: Scheduler, model: str) -> None:
    from corral.models import registry
    from corral.models.names import ModelName

    registry.pull(scheduler.store, ModelName.parse(model))


def install_health(app: FastAPI, settings: Settings, scheduler: Scheduler) -> Lifecycle:
    lifecycle = Lifecycle([m.strip() for m in settings.preload.split(",") if m.strip()])
    app.state.lifecycle = lifecycle
    app.add_middleware(DrainMiddleware, lifecycle=lifecycle)
    _wrap_lifespan(app, lambda: preload(scheduler, lifecycle) if lifecycle.preload else None)

    @app.get("/health/live")
    async def live() -> dict[str, str]:
        return {"status": "alive"}

    @app.get("/health/ready")
    async def ready(model: str | None = None) -> JSONResponse:
        reason = _not_ready(scheduler, lifecycle, model)
        if reason:
            return JSONResponse({"status": "not ready", "reason": reason}, status_code=503)
        return JSONResponse({"status": "ready"})

    return lifecycle


def _not_ready(scheduler: Scheduler, lifecycle: Lifecycle, model: str | None) -> str | None:
    if lifecycle.draining:
        return "shutting down"
    if lifecycle.preload_error:
        return lifecycle.preload_error
    if not lifecycle.preloaded:
        return f"loading {', '.join(lifecycle.preload)}"
    if not any(entry.probe().available for entry in scheduler.plugins.backends):
        return "no backend is available (see `corral backends`)"
    if scheduler.queued >= scheduler.settings.max_queue:
        return "the request queue is full"
    if model is not None:
        wanted = model if ":" in model else f"{model}:latest"
        if not any(m.recipe.name.display in (model, wanted) for m in scheduler.ps()):
            return f"model '{model}' is not loaded"
    return None


def _wrap_lifespan(app: FastAPI, starting: Callable[[], Any]) -> None:
    """Run ``starting()``'s coroutine in the background once the app is up (the app's own lifespan
    stays as it is); cancel it at shutdown."""
    inner = app.router.lifespan_context

    @contextlib.asynccontextmanager
    async def lifespan(the_app: Any) -> AsyncIterator[Any]:
        async with inner(the_app) as state:
            work = starting()
            task = asyncio.ensure_future(work) if work is not None else None
            try:
                yield state
            finally:
                if task is not None and not task.done():
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task

    app.router.lifespan_context = lifespan
