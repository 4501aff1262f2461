"""Prometheus /metrics: the runtime's numbers (queue, KV cache, tokens, latencies, loads) as series.

Series carry Corral's names (``corral:...``); with CORRAL_METRICS_VLLM_NAMES=1 the series routers and
dashboards read from vLLM are exported a second time under vLLM's names, so Kubernetes' inference
routers (llm-d, the Gateway API Inference Extension's endpoint picker) read Corral unchanged. Each
app has its own registry: nothing here touches prometheus_client's global one.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from corral.config import Settings
from corral.runtime.scheduler import Loaded, Scheduler
from corral.runtime.telemetry import RequestRecord
from corral.runtime.worker import WorkerUsage

MODEL = "model_name"  # vLLM's label for the served model; routers filter on it
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160, 640)
TOKEN_GAP_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 1, 2.5, 5)
LOAD_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


@dataclass(frozen=True)
class _Series:
    name: str  # after "corral:"
    doc: str
    vllm: tuple[str, ...] = ()  # the same series under vLLM's names (after "vllm:")


# Counters and histograms fed by the runtime's per-request records.
TOKENS_PROMPT = _Series(
    "prompt_tokens",
    "Prompt tokens, cached ones included (the responses' prompt_eval_count and usage.prompt_tokens).",
    ("prompt_tokens",),
)  # fmt: skip
TOKENS_GENERATED = _Series("generation_tokens", "Tokens generated (the responses' eval_count).", ("generation_tokens",))
PREFIX_QUERIES = _Series(
    "prefix_cache_queries", "Prompt tokens looked up in the prefix cache.", ("prefix_cache_queries",)
)
PREFIX_HITS = _Series(
    "prefix_cache_hits", "Prompt tokens the prefix cache supplied (not evaluated again).", ("prefix_cache_hits",)
)
FINISHED = _Series(
    "request_success", "Requests finished, by reason (stop, length, cancelled, error).", ("request_success",)
)
TTFT = _Series(
    "time_to_first_token_seconds", "From submission to the model to the first text.", ("time_to_first_token_seconds",)
)
ITL = _Series(
    "inter_token_latency_seconds", "Between successive pieces of streamed text.",
    ("inter_token_latency_seconds", "time_per_output_token_seconds"),
)  # fmt: skip
E2E = _Series(
    "e2e_request_latency_seconds", "From submission to the model to the last token.", ("e2e_request_latency_seconds",)
)
QUEUE = _Series(
    "request_queue_time_seconds",
    "Waiting for a slot or KV-cache room before the first step.",
    ("request_queue_time_seconds",),
)
LOAD = _Series("model_load_duration_seconds", "Loading a model (weights, KV cache, warm-up).")
# Gauges read at scrape time.
RUNNING = _Series(
    "num_requests_running", "Requests in a slot (prefill or decode), per model.", ("num_requests_running",)
)
WAITING = _Series(
    "num_requests_waiting", "Requests waiting for a slot or KV-cache room, per model.", ("num_requests_waiting",)
)
KV_USAGE = _Series(
    "kv_cache_usage_perc", "KV-cache cells held by running requests over all cells (0-1), per model.",
    ("kv_cache_usage_perc", "gpu_cache_usage_perc"),
)  # fmt: skip


class Metrics:
    """One app's registry: counters and histograms the runtime feeds, gauges read from the scheduler."""

    def __init__(self, scheduler: Scheduler, vllm_names: bool) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.scheduler = scheduler
        self.vllm_names = vllm_names
        self._scrape_lock = threading.Lock()
        self._snapshot: list[tuple[Loaded, WorkerUsage | None]] = []
        self.http_requests = Counter(
            "corral:http_requests", "HTTP requests answered, by method, route and status.",
            ["method", "route", "status"], registry=self.registry,
        )  # fmt: skip
        self._counters = {
            s: self._all(Counter, s, [MODEL]) for s in (TOKENS_PROMPT, TOKENS_GENERATED, PREFIX_QUERIES, PREFIX_HITS)
        }
        self._finished = self._all(Counter, FINISHED, [MODEL, "finished_reason"])
        self._histograms = {
            TTFT: self._all(Histogram, TTFT, [MODEL], buckets=LATENCY_BUCKETS),
            ITL: self._all(Histogram, ITL, [MODEL], buckets=TOKEN_GAP_BUCKETS),
            E2E: self._all(Histogram, E2E, [MODEL], buckets=LATENCY_BUCKETS),
            QUEUE: self._all(Histogram, QUEUE, [MODEL], buckets=LATENCY_BUCKETS),
        }
        self._load = self._all(Histogram, LOAD, [MODEL], buckets=LOAD_BUCKETS)
        self.registry.register(_LiveCollector(self))
        scheduler.telemetry.request_listeners.append(self.record_request)
        scheduler.telemetry.load_listeners.append(self.record_load)

    def _all(self, kind: Any, series: _Series, labels: list[str], **kwargs: Any) -> list[Any]:
        names = [f"corral:{series.name}"] + ([f"vllm:{n}" for n in series.vllm] if self.vllm_names else [])
        return [kind(name, series.doc, labels, registry=self.registry, **kwargs) for name in names]

    # ---- fed by the runtime (on the event loop; cheap: a few dict lookups and additions) ---------
    def record_request(self, record: RequestRecord) -> None:
        model = record.model
        for series, amount in (
            (TOKENS_PROMPT, record.prompt_tokens),
            (TOKENS_GENERATED, record.generated_tokens),
            (PREFIX_QUERIES, record.prompt_tokens),
            (PREFIX_HITS, record.cached_tokens),
        ):
            for counter in self._counters[series]:
                counter.labels(model).inc(amount)
        for counter in self._finished:
            counter.labels(model, record.done_reason).inc()
        observed: dict[_Series, Sequence[float | None]] = {
            TTFT: [record.ttft_seconds],
            ITL: record.token_gaps,
            E2E: [record.e2e_seconds],
            QUEUE: [record.queue_seconds],
        }
        for series, values in observed.items():
            for histogram in self._histograms[series]:
                child = histogram.labels(model)
                for value in values:
                    if value is not None:
                        child.observe(value)

    def record_load(self, model: str, seconds: float) -> None:
        for histogram in self._load:
            histogram.labels(model).observe(seconds)

    # ---- a scrape ----------------------------------------------------------------------------
    async def render(self) -> bytes:
        loaded = self.scheduler.ps()  # read on the event loop, which alone changes it
        return await asyncio.to_thread(self._render, loaded)

    def _render(self, loaded: list[Loaded]) -> bytes:
        # A runner in its own process answers a usage query over its pipe (well under a millisecond).
        snapshot = [(m, m.worker.usage()) for m in loaded]
        with self._scrape_lock:
            self._snapshot = snapshot
            return generate_latest(self.registry)

    def live(self) -> list[tuple[Loaded, WorkerUsage | None]]:
        return self._snapshot


class _LiveCollector(Collector):
    """Gauges read at scrape time: queue and KV cache per model, and what is loaded where."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterable[Any]:
        live = self.metrics.live()
        vllm = self.metrics.vllm_names
        gauges = {
            RUNNING: lambda u: u.running,
            WAITING: lambda u: u.waiting,
            KV_USAGE: lambda u: u.kv_used / u.kv_total if u.kv_total else 0.0,
        }
        for series, value_of in gauges.items():
            for name in [f"corral:{series.name}"] + ([f"vllm:{n}" for n in series.vllm] if vllm else []):
                family = GaugeMetricFamily(name, series.doc, labels=[MODEL])
                for loaded, usage in live:
                    if usage is not None:
                        family.add_metric([loaded.recipe.name.display], float(value_of(usage)))
                yield family
        yield from _loaded_models(live)


def _loaded_models(live: list[tuple[Loaded, WorkerUsage | None]]) -> Iterator[Any]:
    from corral.server.ollama import processor_label

    info = GaugeMetricFamily(
        "corral:model_loaded",
        "1 for each loaded model, labelled with its backend and processor split (as `corral ps`).",
        labels=[MODEL, "backend", "processor"],
    )  # fmt: skip
    size = GaugeMetricFamily(
        "corral:model_size_bytes", "Bytes a loaded model occupies, in all and on the device.", labels=[MODEL, "where"]
    )
    for loaded, _usage in live:
        name = loaded.recipe.name.display
        total, device = loaded.size, loaded.size_on_device
        processor = loaded.plan.processor_label if loaded.plan else processor_label(total, device, loaded.backend)
        info.add_metric([name, loaded.backend, processor], 1.0)
        size.add_metric([name, "total"], float(total))
        size.add_metric([name, "device"], float(device))
    yield info
    yield size


class RequestCounter:
    """Counts answered HTTP requests by route template (never the raw path: names and digests in
    paths would make a series per model) and status."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            self.metrics.http_requests.labels(scope["method"], route, str(status)).inc()


def install_metrics(app: FastAPI, settings: Settings, scheduler: Scheduler) -> Metrics | None:
    if not settings.metrics:
        return None
    metrics = Metrics(scheduler, settings.metrics_vllm_names)
    app.state.metrics = metrics
    app.add_middleware(RequestCounter, metrics=metrics)

    @app.get("/metrics", include_in_schema=False)
    async def prometheus_metrics() -> Response:
        return Response(await metrics.render(), media_type=CONTENT_TYPE_LATEST)

    return metrics
