"""The scheduler: which models are loaded where, for how long, and who waits for what.

It resolves a model, picks a backend, loads the model on its own owner thread (``ModelWorker``) or
reuses it, hands jobs to that thread and streams their events back to asyncio. Models stay loaded
for their keep-alive; the most-loaded cap evicts idle models, shortest keep-alive first.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
import re
import threading
import time
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from corral.config import Settings
from corral.errors import BadRequest, CorralError, InsufficientMemory, ServerBusy
from corral.hookspecs import Estimate, LoadSpec, Sampling
from corral.models.recipes import Recipe, resolve
from corral.models.store import Store
from corral.plugins import BackendEntry, Plugins
from corral.runtime.isolation import ProcessWorker, SpareRunner
from corral.runtime.telemetry import Telemetry
from corral.runtime.worker import Event, Job, ModelWorker
from corral.types import Options

_DURATION = re.compile(r"(-?\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_keep_alive(value: str | int | float | None, default: float = 300.0) -> float:
    """Ollama's keep_alive: seconds as a number, or a Go duration ("5m", "1h30m"); negative is forever."""
    if value is None or value == "":
        return default
    if isinstance(value, (int, float)):
        return float(value)
    text = value.strip()
    try:
        return float(text)
    except ValueError:
        pass
    sign = -1.0 if text.startswith("-") else 1.0
    body = text.lstrip("+-")
    parts = _DURATION.findall(body)
    if not parts or "".join(n + u for n, u in parts) != body:
        raise BadRequest(f"invalid keep_alive '{value}': use seconds or a duration like 5m, 1h, 30s")
    return sign * sum(float(n) * _UNITS[u] for n, u in parts)


@dataclass
class Loaded:
    recipe: Recipe
    backend: str
    spec: LoadSpec  # as requested; the estimate's spec (with its offload decisions) is what was loaded
    worker: ModelWorker | ProcessWorker
    keep_alive: float = 300.0
    expires_at: float = math.inf  # monotonic time; inf while in use or kept forever
    inflight: int = 0
    loaded_at: float = field(default_factory=time.time)
    plan: Estimate | None = None  # the backend's memory estimate it was loaded under

    @property
    def size(self) -> int:
        """Bytes it occupies: the estimate (weights + KV cache + compute) where there is one."""
        if self.plan is not None:
            return self.plan.size_bytes
        runner = self.worker.runner
        return runner.info.size_bytes if runner else 0

    @property
    def size_on_device(self) -> int:
        if self.plan is not None:
            return self.plan.size_on_device
        runner = self.worker.runner
        return runner.info.size_on_device if runner else 0

    def expires_wall(self) -> float | None:
        """Wall-clock expiry for /api/ps; None when kept forever."""
        if math.isinf(self.expires_at):
            return None if self.keep_alive < 0 or self.inflight == 0 else time.time() + self.keep_alive
        return time.time() + (self.expires_at - time.monotonic())


@dataclass
class Ticket:
    """A model held for one request: released when the request ends."""

    loaded: Loaded
    options: Options
    load_duration: float


class Scheduler:
    def __init__(
        self, settings: Settings, plugins: Plugins | None = None, store: Store | None = None,
        spare: SpareRunner | None = None,
    ) -> None:  # fmt: skip
        self.settings = settings
        # A runner process started ahead of the next load (``corral serve`` starts one with the server);
        # started again whenever the last model goes, so it waits only while nothing is loaded.
        self.spare = spare if settings.isolate_runners else None
        self._closing = False
        self.plugins = plugins or Plugins()
        self.store = store or Store(settings.models_dir)
        self.loaded: dict[tuple[str, str], Loaded] = {}
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}
        self._queued = 0
        self._reaper: asyncio.Task[None] | None = None
        self._mailboxes: dict[asyncio.AbstractEventLoop, _Mailbox] = {}
        self.telemetry = Telemetry()  # the server's /metrics listens here

    # ---- residency ---------------------------------------------------------------------------
    async def acquire(
        self,
        model: str,
        options: dict[str, Any] | Options | None = None,
        keep_alive: str | int | float | None = None,
        backend: str | None = None,
    ) -> Ticket:
        """Load ``model`` (or reuse it) and hold it until ``release``."""
        self._start_reaper()
        request_options = options if isinstance(options, Options) else Options.parse(options)
        recipe = await asyncio.to_thread(resolve, self.store, model)
        merged = recipe.options.merged(request_options)
        entry = self.plugins.select(backend or self.settings.backend)
        spec = self._spec(recipe, merged, entry.probe().devices)
        key = (recipe.digest, entry.name)
        t0 = time.perf_counter()
        async with self._locks.setdefault(key, asyncio.Lock()):
            loaded = self.loaded.get(key)
            if loaded is not None and not loaded.worker.alive:  # its runner crashed: start a new one
                self.loaded.pop(key, None)
                loaded = None
            if loaded is not None and _needs_reload(loaded.spec, spec, busy=loaded.inflight > 0):
                await self._unload(key)
                loaded = None
            if loaded is None:
                await self._make_room()
                plan = await self._fit(entry, spec, exclude=key)
                load_spec = plan.spec if plan is not None else spec
                worker: ModelWorker | ProcessWorker
                if self.settings.isolate_runners:
                    worker = ProcessWorker(
                        entry.name, load_spec, recipe.name.display, self.settings.prefix_cache, spare=self.spare
                    )
                else:
                    worker = ModelWorker(
                        lambda: entry.backend.load(load_spec), recipe.name.display, self.settings.prefix_cache
                    )
                loaded = Loaded(recipe, entry.name, spec, worker, plan=plan)
                self.loaded[key] = loaded
                try:
                    await asyncio.to_thread(worker.wait_loaded)
                except BaseException:
                    self.loaded.pop(key, None)
                    raise
                self.telemetry.model_loaded(recipe.name.display, worker.load_seconds)
            loaded.inflight += 1
            loaded.expires_at = math.inf
            loaded.keep_alive = parse_keep_alive(keep_alive, self.default_keep_alive)
        return Ticket(loaded, merged, time.perf_counter() - t0)

    @property
    def queued(self) -> int:
        """Jobs submitted to a model and not yet finished (running or waiting)."""
        return self._queued

    @property
    def default_keep_alive(self) -> float:
        return parse_keep_alive(self.settings.keep_alive)

    def release(self, ticket: Ticket) -> None:
        loaded = ticket.loaded
        loaded.inflight -= 1
        if loaded.inflight == 0:
            loaded.expires_at = math.inf if loaded.keep_alive < 0 else time.monotonic() + loaded.keep_alive
            if loaded.keep_alive == 0:
                asyncio.get_running_loop().create_task(self._expire())

    def _spec(self, recipe: Recipe, options: Options, devices: tuple[Any, ...]) -> LoadSpec:
        return LoadSpec(
            model_path=recipe.model_path,
            num_ctx=self.settings.num_ctx,
            num_parallel=self.settings.num_parallel,
            num_thread=options.num_thread or None,
            num_batch=options.num_batch or 512,
            num_gpu=options.num_gpu,
            main_gpu=options.main_gpu,
            use_mmap=options.use_mmap,
            adapters=recipe.adapters,
            flash_attention=self.settings.flash_attention,
            kv_cache_type=self.settings.kv_cache_type,
            devices=tuple(devices),
            # Separate streams per slot are faster; a request that wants more context than a slot has
            # gets the shared pool, where one sequence may take up to all of it.
            kv_unified=(options.num_ctx or 0) > self.settings.num_ctx,
        )

    async def _make_room(self) -> None:
        """Stay under the loaded-model cap by unloading idle models, shortest keep-alive first."""
        while len(self.loaded) >= self.settings.max_loaded_models:
            idle = [(k, m) for k, m in self.loaded.items() if m.inflight == 0]
            if not idle:
                raise ServerBusy(
                    f"server busy: {len(self.loaded)} models are loaded and in use (CORRAL_MAX_LOADED_MODELS)"
                )
            await self._unload(min(idle, key=_eviction_order)[0])

    async def _fit(self, entry: BackendEntry, spec: LoadSpec, exclude: tuple[str, str]) -> Estimate | None:
        """Ask the backend what the model needs (weights + KV cache for num_ctx × slots + compute)
        against its devices' free memory now; unload idle models, shortest keep-alive first, until it
        fits. None where the backend has no ``estimate`` or nothing to report: loaded unchecked."""
        estimate = getattr(entry.backend, "estimate", None)
        if estimate is None:
            return None
        while True:
            devices = tuple(entry.backend.probe().devices)  # fresh: free memory changes as models load
            try:
                result: Estimate | None = await asyncio.to_thread(estimate, spec, devices)
                return result
            except InsufficientMemory:
                idle = [(k, m) for k, m in self.loaded.items() if m.inflight == 0 and k != exclude]
                if not idle:
                    raise
                await self._unload(min(idle, key=_eviction_order)[0])

    async def _unload(self, key: tuple[str, str]) -> None:
        loaded = self.loaded.pop(key, None)
        if loaded is not None:
            loaded.worker.stop()
            await asyncio.to_thread(loaded.worker.join, 30)
        if self.spare is not None and not self.loaded and not self._closing:
            self.spare.start()

    async def unload(self, model: str) -> bool:
        """Unload every copy of ``model``; False if it was not loaded."""
        recipe = await asyncio.to_thread(resolve, self.store, model)
        keys = [k for k in self.loaded if k[0] == recipe.digest]
        for key in keys:
            await self._unload(key)
        return bool(keys)

    async def _expire(self) -> None:
        now = time.monotonic()
        for key, loaded in list(self.loaded.items()):
            if loaded.inflight == 0 and loaded.expires_at <= now:
                await self._unload(key)

    def _start_reaper(self) -> None:
        if self._reaper is None or self._reaper.done():
            self._reaper = asyncio.get_running_loop().create_task(self._reap_forever())

    async def _reap_forever(self) -> None:
        while True:
            await asyncio.sleep(0.5)
            await self._expire()

    async def close(self) -> None:
        self._closing = True
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
        for key in list(self.loaded):
            await self._unload(key)
        if self.spare is not None:
            await asyncio.to_thread(self.spare.close)

    # ---- running jobs ------------------------------------------------------------------------
    async def stream(
        self,
        ticket: Ticket,
        prompt: str | list[int],
        *,
        stops: list[str] | None = None,
        num_predict: int | None = None,
        sampling: Sampling | None = None,
        add_bos: bool = True,
        context: list[int] | None = None,
        shift: bool = True,
        keep_chars: int = 0,
        truncate: bool = False,
    ) -> AsyncIterator[Event]:
        """Run one generation on a held model; closing the iterator cancels it at the next step.
        ``shift``: a full context drops its older half and goes on (Ollama's ``shift``), keeping the
        first ``num_keep`` tokens and the prompt's first ``keep_chars`` characters (its system part);
        ``truncate``: a prompt longer than the context is cut after those tokens instead of refused."""
        opts = ticket.options
        job = Job(
            prompt=prompt,
            sampling=sampling or opts.sampling(),
            emit=lambda e: None,
            num_predict=num_predict
            if num_predict is not None
            else (opts.num_predict if opts.num_predict is not None else -1),
            num_ctx=opts.num_ctx or None,
            stops=list(stops if stops is not None else (opts.stop or [])),
            add_bos=add_bos and not context,
            context=list(context or []),
            shift=shift,
            truncate=truncate,
            num_keep=opts.num_keep if opts.num_keep is not None else 4,  # Ollama's default
            keep_chars=keep_chars if isinstance(prompt, str) else 0,
        )
        # aclosing: closing this stream must cancel the job now, not when the garbage collector runs.
        async with contextlib.aclosing(self._run(ticket, job)) as events:
            async for event in events:
                yield event

    async def embed(self, ticket: Ticket, texts: list[str], *, truncate: bool = True) -> tuple[list[list[float]], int]:
        """One vector per text and the tokens read; ``truncate``: cut inputs longer than the context to fit."""
        result: list[list[list[float]]] = []
        job = Job(
            prompt="", sampling=Sampling(), emit=lambda e: None, embed=texts, truncate=truncate, on_result=result.append
        )
        count = 0
        async for event in self._run(ticket, job):
            if event.error:
                raise CorralError(event.error)
            if event.stats:
                count = event.stats.prompt_eval_count
        return result[0], count

    async def _run(self, ticket: Ticket, job: Job) -> AsyncGenerator[Event, None]:
        if self._queued >= self.settings.max_queue:
            raise ServerBusy("server busy, please try again: the request queue is full (CORRAL_MAX_QUEUE)")
        mailbox = self._mailbox(asyncio.get_running_loop())
        events: asyncio.Queue[Event] = asyncio.Queue()
        job.emit = functools.partial(mailbox.post, job, events)
        self._queued += 1
        timer = self.telemetry.track(ticket.loaded.recipe.name.display)
        ticket.loaded.worker.submit(job)
        finished = False
        try:
            while True:
                event = await events.get()
                timer.saw(event)
                if event.done:
                    finished = True
                    if event.done_reason == "error":
                        raise event.exception or CorralError(event.error or "generation failed")
                yield event
                if event.done:
                    return
        finally:
            self._queued -= 1
            timer.close()
            if not finished:
                job.cancel()

    def _mailbox(self, loop: asyncio.AbstractEventLoop) -> _Mailbox:
        mailbox = self._mailboxes.get(loop)
        if mailbox is None:
            self._mailboxes = {lp: mb for lp, mb in self._mailboxes.items() if not lp.is_closed()}
            mailbox = self._mailboxes[loop] = _Mailbox(loop)
        return mailbox

    def ps(self) -> list[Loaded]:
        return sorted(self.loaded.values(), key=lambda m: m.loaded_at, reverse=True)


class _Mailbox:
    """Events from the model threads into one asyncio loop, which is woken once per burst (a decode
    step's tokens for every stream) rather than once per token."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._lock = threading.Lock()
        self._items: list[tuple[Job, asyncio.Queue[Event], Event]] = []

    def post(self, job: Job, queue: asyncio.Queue[Event], event: Event) -> None:
        with self._lock:
            self._items.append((job, queue, event))
            if len(self._items) > 1:
                return  # a wake-up is already on its way
        try:
            self._loop.call_soon_threadsafe(self._deliver)
        except RuntimeError:  # the loop has closed: nobody is listening any more
            with self._lock:
                items, self._items = self._items, []
            for waiting, _queue, _event in items:
                waiting.cancel()

    def _deliver(self) -> None:
        with self._lock:
            items, self._items = self._items, []
        for _job, queue, event in items:
            queue.put_nowait(event)


def _eviction_order(item: tuple[tuple[str, str], Loaded]) -> tuple[float, float]:
    """Idle models with the shortest keep-alive go first (kept-forever ones last)."""
    loaded = item[1]
    return (loaded.keep_alive if loaded.keep_alive >= 0 else math.inf, loaded.expires_at)


def _needs_reload(old: LoadSpec, new: LoadSpec, busy: bool = False) -> bool:
    """Thread/GPU/batch/mmap changes reload; so does the first request that wants more context than a
    slot's stream (into the shared pool, which then serves every num_ctx without reloading), unless
    the model is ``busy``: then it gets a slot's context rather than cut the streams running."""

    def load_time(s: LoadSpec) -> tuple[object, ...]:
        return (s.num_thread, s.num_gpu, s.main_gpu, s.num_batch, s.use_mmap)

    return load_time(old) != load_time(new) or (new.kv_unified and not old.kv_unified and not busy)
