"""What the runtime reports about its work, for whoever watches (the server's /metrics): one record per
finished request and each model load. The runtime knows no metrics library; listeners turn these
into series."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from corral.runtime.worker import Event

log = logging.getLogger("corral.runtime.telemetry")


@dataclass(frozen=True)
class RequestRecord:
    """One generation or embedding job, from its submission to the model's owner to its last event."""

    model: str
    done_reason: str  # stop | length | cancelled | error
    e2e_seconds: float  # submitted to the model's worker -> final event
    queue_seconds: float | None  # waiting in the worker for a slot (None when it never got one)
    ttft_seconds: float | None  # submitted -> first text (None for embeddings and empty answers)
    token_gaps: list[float] = field(default_factory=list)  # seconds between successive pieces of text
    prompt_tokens: int = 0  # the whole prompt, evaluated + cached, as the responses' prompt_eval_count says
    generated_tokens: int = 0  # as the response's eval_count says
    cached_tokens: int = 0  # prompt tokens the prefix cache supplied


RequestListener = Callable[[RequestRecord], None]
LoadListener = Callable[[str, float], None]


class Telemetry:
    """Listeners the server registers; a failing listener is logged, never raised into a request."""

    def __init__(self) -> None:
        self.request_listeners: list[RequestListener] = []
        self.load_listeners: list[LoadListener] = []

    def track(self, model: str) -> RequestTimer:
        return RequestTimer(self, model)

    def model_loaded(self, model: str, seconds: float) -> None:
        for listener in self.load_listeners:
            try:
                listener(model, seconds)
            except Exception:  # observability must never break serving
                log.exception("a load listener failed")

    def request_finished(self, record: RequestRecord) -> None:
        for listener in self.request_listeners:
            try:
                listener(record)
            except Exception:  # observability must never break serving
                log.exception("a request listener failed")


class RequestTimer:
    """Times one job from the events it yields; reports once, at its final event or when abandoned."""

    def __init__(self, telemetry: Telemetry, model: str) -> None:
        self._telemetry = telemetry
        self._model = model
        self._t0 = time.perf_counter()
        self._last = 0.0
        self._ttft: float | None = None
        self._gaps: list[float] = []
        self._reported = False

    def saw(self, event: Event) -> None:
        """Call for every event before it is passed on, so counters are current when the client reads the end."""
        now = time.perf_counter()
        if event.text:
            if self._ttft is None:
                self._ttft = now - self._t0
            else:
                self._gaps.append(now - self._last)
            self._last = now
        if event.done:
            stats = event.stats
            self._report(
                event.done_reason or "stop",
                queue=stats.queue_duration / 1e9 if stats is not None and event.done_reason != "cancelled" else None,
                prompt=stats.prompt_eval_count + stats.cached_tokens if stats else 0,
                generated=stats.eval_count if stats else 0,
                cached=stats.cached_tokens if stats else 0,
            )

    def close(self) -> None:
        """The job ended without a final event (the client left): count it as cancelled."""
        self._report("cancelled", queue=None, prompt=0, generated=0, cached=0)

    def _report(self, reason: str, *, queue: float | None, prompt: int, generated: int, cached: int) -> None:
        if self._reported:
            return
        self._reported = True
        if not self._telemetry.request_listeners:
            return
        record = RequestRecord(
            model=self._model, done_reason=reason, e2e_seconds=time.perf_counter() - self._t0,
            queue_seconds=queue, ttft_seconds=self._ttft, token_gaps=self._gaps,
            prompt_tokens=prompt, generated_tokens=generated, cached_tokens=cached,
        )  # fmt: skip
        self._telemetry.request_finished(record)
