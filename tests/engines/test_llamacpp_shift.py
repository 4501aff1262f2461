"""Context shift on the llama.cpp engine (tiny F32 models): ``Runner.shift`` drops a span of a sequence's
cache and moves the rest left. On a one-layer model, whose keys and values depend only on each token and
its position, decoding then goes on exactly as after a fresh read of the kept tokens (on deeper models a
shift keeps values computed with the dropped tokens in view, as in llama.cpp's server, so only the
positions can be checked). Through the worker, in place or by re-reading (an engine without ``shift``),
a generation outgrows its context, and the slot's prefix cache stays true for the next request."""

from __future__ import annotations

import queue
from collections.abc import Sequence
from pathlib import Path

import pytest

from corral.engines.llamacpp.runner import LlamaCppRunner
from corral.hookspecs import LoadSpec, Sampling, SequenceStep
from corral.runtime.worker import Event, Job, ModelWorker
from ggufmaker import write_tiny_llama
from runnerchecks import GREEDY, WithoutShift

PROMPT = "<|im_start|>system\nyou are terse<|im_end|>\n<|im_start|>user\nthe cat sat on the mat<|im_end|>\n"


@pytest.fixture(scope="module")
def one_layer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_llama(tmp_path_factory.mktemp("one-layer") / "one-layer.gguf", n_layer=1)


def load(path: Path, num_ctx: int = 64) -> LlamaCppRunner:
    return LlamaCppRunner(LoadSpec(model_path=path, num_ctx=num_ctx, num_parallel=1, num_thread=2))


def go_on(runner: LlamaCppRunner, feed: Sequence[int], n: int) -> tuple[list[int], list[float]]:
    """Feed ``feed`` after what sequence 0 holds, then ``n`` greedy tokens and their log-probabilities."""
    out = [runner.step([SequenceStep(0, list(feed))])[0]]
    logprobs = [runner.logprobs(0).logprob]  # type: ignore[union-attr]
    while len(out) < n:
        out.append(runner.step([SequenceStep(0, [out[-1]])])[0])
        logprobs.append(runner.logprobs(0).logprob)  # type: ignore[union-attr]
    return out, logprobs


def test_a_shifted_cache_decodes_as_a_fresh_read_of_the_kept_tokens(one_layer: Path) -> None:
    runner = load(one_layer, num_ctx=128)
    try:
        runner.set_sampling(0, Sampling(temperature=0, repeat_penalty=1.0, logprobs=0))
        prompt = runner.tokenize(PROMPT, add_bos=runner.info.add_bos)
        generated, _ = go_on(runner, prompt, 30)
        held = prompt + generated[:-1]  # the last token is sampled, not yet fed
        assert runner.cached(0) == len(held)
        assert runner.shift(0, 4, 20)
        assert runner.cached(0) == len(held) - 20
        shifted, shifted_logprobs = go_on(runner, [generated[-1]], 12)
        runner.truncate(0, 0)
        fresh, fresh_logprobs = go_on(runner, held[:4] + held[24:] + [generated[-1]], 12)
        assert shifted == fresh
        assert shifted_logprobs == pytest.approx(fresh_logprobs, abs=1e-3)
        assert not runner.shift(0, 4, 0) and runner.cached(0) == 4 + len(held) - 24 + 12
    finally:
        runner.close()


def test_a_shift_on_a_deeper_model_leaves_positions_that_go_on_from_the_kept_length(tiny_gguf: Path) -> None:
    runner = load(tiny_gguf, num_ctx=64)
    try:
        runner.set_sampling(0, Sampling(temperature=0, repeat_penalty=1.0, logprobs=0))
        prompt = runner.tokenize(PROMPT, add_bos=runner.info.add_bos)
        generated, _ = go_on(runner, prompt, 63 - len(prompt))
        assert runner.cached(0) == 62 and runner.shift(0, 4, 29)
        L, mem = runner._L, runner._mem
        assert (L.llama_memory_seq_pos_min(mem, 0), L.llama_memory_seq_pos_max(mem, 0)) == (0, 32)
        more, _ = go_on(runner, [generated[-1]], 30)  # 92 tokens in all through a 64-token context
        assert runner.cached(0) == 63 and L.llama_memory_seq_pos_max(mem, 0) == 62
        assert all(0 <= t < runner.info.n_vocab for t in more)
    finally:
        runner.close()


def generate(worker: ModelWorker, n: int, **job: object) -> tuple[list[int], Event]:
    events: queue.Queue[Event] = queue.Queue()
    worker.submit(Job(prompt=PROMPT, sampling=GREEDY, emit=events.put, num_predict=n, num_ctx=64, **job))  # type: ignore[arg-type]
    event = events.get(timeout=120)
    while not event.done:
        event = events.get(timeout=120)
    assert event.error is None and event.stats is not None and event.tokens is not None
    return event.tokens, event


def test_a_generation_outgrows_its_context_in_place_or_by_re_reading_alike(one_layer: Path) -> None:
    outcomes = []
    for wrap in (lambda r: r, WithoutShift):
        worker = ModelWorker(lambda wrap=wrap: wrap(load(one_layer)), "one-layer")  # type: ignore[misc]
        try:
            worker.wait_loaded(30)
            tokens, done = generate(worker, 150, num_keep=4)
            assert done.stats is not None
            assert done.stats.eval_count > 64 - done.stats.prompt_eval_count  # more than the context holds
            assert done.done_reason == ("length" if done.stats.eval_count == 150 else "stop")
            assert len(tokens) <= 64
            outcomes.append((tokens, done.stats.eval_count))
        finally:
            worker.stop()
            worker.join(10)
    assert outcomes[0] == outcomes[1]


def test_without_shift_a_full_context_ends_the_generation(tiny_gguf: Path) -> None:
    worker = ModelWorker(lambda: load(tiny_gguf), "tiny")
    try:
        worker.wait_loaded(30)
        _tokens, done = generate(worker, 150, shift=False)
        assert done.stats is not None and done.done_reason == "length"
        assert 0 < done.stats.eval_count <= 64 - done.stats.prompt_eval_count
    finally:
        worker.stop()
        worker.join(10)


def test_after_a_shift_the_slot_answers_the_same_prompt_as_a_fresh_model(tiny_gguf: Path) -> None:
    worker = ModelWorker(lambda: load(tiny_gguf), "tiny")
    fresh = ModelWorker(lambda: load(tiny_gguf), "fresh")
    try:
        worker.wait_loaded(30)
        fresh.wait_loaded(30)
        generate(worker, 150)  # shifts, leaving a shifted cache in the only slot
        again, done = generate(worker, 12)
        assert done.stats is not None and done.stats.cached_tokens > 0  # the kept start was reused
        expected, _ = generate(fresh, 12)
        assert again == expected
    finally:
        for w in (worker, fresh):
            w.stop()
            w.join(10)
