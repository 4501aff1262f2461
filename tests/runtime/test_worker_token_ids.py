"""Token ids given by a client (a /v1/completions prompt, Ollama's context) are checked before the engine sees them."""

from __future__ import annotations

import queue
from pathlib import Path

import pytest

from corral.engines.llamacpp.runner import LlamaCppRunner
from corral.errors import BadRequest
from corral.hookspecs import LoadSpec
from corral.runtime.worker import Event, Job, ModelWorker
from runnerchecks import GREEDY


def _finish(worker: ModelWorker, **job: object) -> Event:
    events: queue.Queue[Event] = queue.Queue()
    worker.submit(Job(sampling=GREEDY, emit=events.put, num_predict=2, **job))  # type: ignore[arg-type]
    event = events.get(timeout=60)
    while not event.done:
        event = events.get(timeout=60)
    return event


@pytest.mark.parametrize("given", [{"prompt": [1, -5]}, {"prompt": [1, 10**6]}, {"prompt": "hi", "context": [-1]}])
def test_an_unknown_token_id_is_a_bad_request_and_the_model_goes_on(tiny_gguf: Path, given: dict[str, object]) -> None:
    worker = ModelWorker(lambda: LlamaCppRunner(LoadSpec(model_path=tiny_gguf, num_ctx=64, num_parallel=1)), "tiny")
    try:
        runner = worker.wait_loaded(30)
        refused = _finish(worker, **given)
        assert refused.done_reason == "error" and isinstance(refused.exception, BadRequest)
        assert f"between 0 and {runner.info.n_vocab - 1}" in (refused.error or "")
        fine = _finish(worker, prompt=[1, 2, 3])  # the engine was never handed the bad ids
        assert fine.done_reason in ("stop", "length") and fine.error is None
    finally:
        worker.stop()
        worker.join(10)
