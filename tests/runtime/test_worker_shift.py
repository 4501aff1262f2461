"""Context shift in the worker, over the scripted fake runner, which has no ``Runner.shift``: a full context
drops the older half after the kept tokens and re-reads the rest (Ollama's fallback), so the generation
goes on; ``shift=False`` ends it with done_reason "length"."""

from __future__ import annotations

import queue
from collections.abc import Iterator
from pathlib import Path

import pytest

from corral.hookspecs import LoadSpec
from corral.runtime.worker import Event, Job, ModelWorker
from fakes import FakeRunner
from runnerchecks import GREEDY

SCRIPT = bytes(range(ord("a"), ord("z") + 1)) * 3  # 78 tokens, more than two contexts of 32
SYSTEM = "SYSTEM: be brief|"
PROMPT = SYSTEM + "go"


@pytest.fixture
def worker() -> Iterator[ModelWorker]:
    spec = LoadSpec(model_path=Path("fake.gguf"), num_ctx=32, num_parallel=1)
    worker = ModelWorker(lambda: FakeRunner(spec, SCRIPT, 0.0), "fake")
    worker.wait_loaded(10)
    yield worker
    worker.stop()
    worker.join(10)


def run(worker: ModelWorker, **job: object) -> tuple[str, Event]:
    events: queue.Queue[Event] = queue.Queue()
    worker.submit(Job(prompt=PROMPT, sampling=GREEDY, emit=events.put, **job))  # type: ignore[arg-type]
    text, event = "", events.get(timeout=30)
    while not event.done:
        text += event.text
        event = events.get(timeout=30)
    return text + event.text, event


def test_a_full_context_shifts_and_the_generation_goes_on(worker: ModelWorker) -> None:
    text, done = run(worker, num_keep=4)
    assert done.done_reason == "stop" and done.error is None
    assert text == SCRIPT.decode()  # every scripted token, though they are more than the context holds
    assert done.stats is not None and done.stats.eval_count == len(SCRIPT)
    assert done.stats.prompt_eval_count == len(PROMPT)  # re-reading after a shift is not prompt evaluation
    runner = worker.runner
    assert isinstance(runner, FakeRunner)
    rereads = [fed for step in runner.history[1:] for _seq, fed in step if fed > 1]
    assert rereads and all(fed == 32 - 1 - 4 - (32 - 4) // 2 + 1 for fed in rereads)  # the kept tail and one token
    cached = worker.slots[0].cached
    assert len(cached) < 32 and bytes(cached[:4]) == b"SYST" and bytes(cached[: len(SYSTEM)]) != SYSTEM.encode()


def test_the_system_part_of_the_prompt_is_kept_beside_num_keep(worker: ModelWorker) -> None:
    text, done = run(worker, num_keep=0, keep_chars=len(SYSTEM))
    assert done.done_reason == "stop" and text == SCRIPT.decode()
    assert bytes(worker.slots[0].cached[: len(SYSTEM)]) == SYSTEM.encode()


def test_shift_false_ends_with_length_when_the_context_is_full(worker: ModelWorker) -> None:
    text, done = run(worker, shift=False)
    assert done.done_reason == "length" and done.stats is not None
    assert done.stats.eval_count == 32 - len(PROMPT) and text == SCRIPT[: 32 - len(PROMPT)].decode()


def test_num_predict_still_ends_a_shifting_generation(worker: ModelWorker) -> None:
    text, done = run(worker, num_predict=40)
    assert done.done_reason == "length" and text == SCRIPT[:40].decode()


def test_truncate_cuts_a_long_prompt_after_what_a_shift_keeps(worker: ModelWorker) -> None:
    long = SYSTEM + "x" * 40  # 57 tokens for a context of 32
    events: queue.Queue[Event] = queue.Queue()
    worker.submit(Job(prompt=long, sampling=GREEDY, emit=events.put, truncate=True, keep_chars=len(SYSTEM)))
    done = events.get(timeout=30)
    while not done.done:
        done = events.get(timeout=30)
    assert done.done_reason == "stop" and done.stats is not None
    room = 32 - (32 - len(SYSTEM)) // 2  # the system part, then the latest tokens, half the rest left free
    assert done.stats.prompt_eval_count == room and done.stats.eval_count == len(SCRIPT)
    runner = worker.runner
    assert isinstance(runner, FakeRunner) and runner.history[0] == [(0, room)]
    assert done.tokens is not None and bytes(done.tokens[: len(SYSTEM)]) == SYSTEM.encode()
    refused: queue.Queue[Event] = queue.Queue()
    worker.submit(Job(prompt=long, sampling=GREEDY, emit=refused.put, truncate=False))
    assert "the prompt is 57 tokens, more than the context of 32" in (refused.get(timeout=30).error or "")
