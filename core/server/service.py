"""Corral as a service: the probes, metrics and draining an app gets, and ``corral serve``'s server
loop (the key check before binding elsewhere, SIGTERM draining, exit 0)."""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
from types import FrameType

import uvicorn
from fastapi import FastAPI

from corral.config import Settings
from corral.errors import CorralError
from corral.runtime.scheduler import Scheduler
from corral.server.health import Lifecycle, install_health
from corral.server.metrics import install_metrics
from corral.server.security import KeyRing, bound_to_loopback

log = logging.getLogger("corral.server.service")


def install_service(app: FastAPI, settings: Settings, scheduler: Scheduler) -> None:
    """Added after the security middleware, so these run outside it: a 401 is counted, and a
    draining server answers 503 before anything else."""
    install_metrics(app, settings, scheduler)
    install_health(app, settings, scheduler)


def check_exposure(settings: Settings) -> None:
    """Binding beyond loopback without keys would open the models (and the disk, through create and
    pull) to the network: refuse unless told so explicitly."""
    if bound_to_loopback(settings) or KeyRing.from_settings(settings).enabled or settings.insecure_no_auth:
        return
    raise CorralError(
        f"refusing to serve on {settings.base_url} without API keys: set CORRAL_API_KEYS or "
        "CORRAL_API_KEYS_FILE, or pass --insecure-no-auth (CORRAL_INSECURE_NO_AUTH=1) to serve it open"
    )


class DrainingServer(uvicorn.Server):
    """uvicorn, except that SIGTERM drains first: new requests get 503 while those in flight finish
    (up to CORRAL_SHUTDOWN_GRACE), then the usual shutdown unloads the models and the process exits 0.
    A second SIGTERM or a Ctrl+C stops at once."""

    def __init__(self, config: uvicorn.Config, lifecycle: Lifecycle, scheduler: Scheduler, grace: float) -> None:
        super().__init__(config)
        self.lifecycle = lifecycle
        self.scheduler = scheduler
        self.grace = grace
        self._drain: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().startup(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if sig == signal.SIGTERM and self._loop is not None and not self.lifecycle.draining:
            # Not recorded in _captured_signals: uvicorn would re-raise it after shutdown and the
            # default handler would turn a clean drain into exit status 143.
            self._loop.call_soon_threadsafe(self._start_drain)
            return
        if sig == signal.SIGTERM:
            self.should_exit = True
            return
        super().handle_exit(sig, frame)

    def _start_drain(self) -> None:
        self.lifecycle.begin_drain()
        self._drain = asyncio.ensure_future(self._drain_then_exit())

    async def _drain_then_exit(self) -> None:
        if not await self.lifecycle.drained(self.grace):
            # Unloading ends each remaining stream with a final error line, so clients see a clean
            # end (and a reason) instead of a connection torn mid-body.
            log.warning("shutdown grace of %.0f s is over: ending %d request(s)", self.grace, self.lifecycle.inflight)
            await self.scheduler.close()
            await self.lifecycle.drained(5)
        self.should_exit = True


def run_server(app: FastAPI, settings: Settings, log_level: str = "warning") -> None:
    """``corral serve``: bind, serve ``app`` (from create_app) until SIGTERM or Ctrl+C, drain, unload,
    return. The caller builds the app, so this module, which create_app uses, does not import it back."""
    check_exposure(settings)
    address = settings.base_url.split("://", 1)[1]
    bind, port = address.rsplit(":", 1)
    config = uvicorn.Config(
        app, host=bind.strip("[]"), port=int(port), log_level=log_level,
        timeout_graceful_shutdown=5,  # the drain already waited; this only bounds what is left
    )  # fmt: skip
    DrainingServer(config, app.state.lifecycle, app.state.scheduler, settings.shutdown_grace).run()
