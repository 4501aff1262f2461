"""An embedding needs room in the KV pool the slots share: idle prefix caches that fill the pool are
dropped for it (least recently used first), as for a new generation, instead of llama.cpp failing the
decode (the 500 the fuzz test once found on /v1/embeddings)."""

from __future__ import annotations

import queue
from collections.abc import Iterator
from pathlib import Path

import pytest

from corral.engines.llamacpp.runner import LlamaCppRunner
from corral.hookspecs import LoadSpec
from corral.runtime.worker import Event, Job, ModelWorker
from ggufmaker import write_tiny_llama
from runnerchecks import GREEDY

LONG = " the cat sat on the mat" * 10
INPUT = "the cat sat on the mat " * 12


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_llama(tmp_path_factory.mktemp("embed-room") / "tiny.gguf", n_layer=1)


@pytest.fixture
def worker(model: Path) -> Iterator[ModelWorker]:
    spec = LoadSpec(model_path=model, num_ctx=64, num_parallel=2, num_thread=2, kv_unified=True)
    worker = ModelWorker(lambda: LlamaCppRunner(spec), "tiny")
    worker.wait_loaded(60)
    yield worker
    worker.stop()
    worker.join(10)


def finish(worker: ModelWorker, job: Job, events: queue.Queue[Event]) -> Event:
    worker.submit(job)
    event = events.get(timeout=60)
    while not event.done:
        event = events.get(timeout=60)
    return event


def embed(worker: ModelWorker) -> tuple[Event, list[list[float]]]:
    events: queue.Queue[Event] = queue.Queue()
    vectors: list[list[list[float]]] = []
    job = Job(prompt="", sampling=GREEDY, emit=events.put, embed=[INPUT], on_result=vectors.append)
    done = finish(worker, job, events)
    return done, vectors[0] if vectors else []


def test_an_embedding_drops_idle_caches_that_fill_the_pool(worker: ModelWorker) -> None:
    _done, fresh = embed(worker)
    for first in ("1", "2"):  # two sequences that end at their context, each cached in its own slot
        events: queue.Queue[Event] = queue.Queue()
        done = finish(worker, Job(prompt=first + LONG, sampling=GREEDY, emit=events.put, shift=False), events)
        assert done.done_reason == "length"
    total = worker.total_ctx
    assert sum(len(s.cached) for s in worker.slots) >= total - 2  # the pool is all but full of idle caches

    done, vectors = embed(worker)
    assert done.done_reason == "stop" and done.error is None
    assert len(vectors) == 1 and vectors[0] == pytest.approx(fresh[0], abs=1e-5)  # as on an empty cache
    assert sum(len(s.cached) for s in worker.slots) < total - 2  # an idle cache made room


def test_with_a_stream_per_slot_an_embedding_borrows_the_least_recently_used_free_slot(model: Path) -> None:
    spec = LoadSpec(model_path=model, num_ctx=64, num_parallel=2, num_thread=2, kv_unified=False)
    worker = ModelWorker(lambda: LlamaCppRunner(spec), "tiny")
    try:
        runner = worker.wait_loaded(60)
        assert not runner.info.kv_unified and worker.seq_ctx == runner.info.n_ctx
        _done, fresh = embed(worker)
        for first in ("1", "2"):  # slot 0 is used first, so it is the least recently used afterwards
            events: queue.Queue[Event] = queue.Queue()
            job = Job(prompt=first + LONG, sampling=GREEDY, emit=events.put, shift=False)
            assert finish(worker, job, events).done_reason == "length"
        kept = list(worker.slots[1].cached)
        assert worker.slots[0].cached and kept

        done, vectors = embed(worker)
        assert done.done_reason == "stop" and done.error is None
        assert len(vectors) == 1 and vectors[0] == pytest.approx(fresh[0], abs=1e-5)
        assert worker.slots[0].cached == [] and worker.slots[1].cached == kept  # only the borrowed slot's cache went
    finally:
        worker.stop()
        worker.join(10)
