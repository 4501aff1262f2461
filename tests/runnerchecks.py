"""Driving a Runner the way every engine's tests do: greedy decoding of one sequence, several
sequences decoded in the same steps, and a job run through a ModelWorker."""

from __future__ import annotations

import queue
from typing import Any

from corral.hookspecs import Sampling, SequenceStep
from corral.runtime.worker import Event, Job, ModelWorker

GREEDY = Sampling(temperature=0, repeat_penalty=1.0)


def greedy(runner: Any, prompt: str | list[int], n: int = 20, sampling: Sampling = GREEDY) -> list[int]:
    """The first ``n`` tokens after ``prompt`` (text, with the model's BOS rule, or token ids) on sequence 0."""
    runner.truncate(0, 0)
    runner.set_sampling(0, sampling)
    tokens = runner.tokenize(prompt, add_bos=runner.info.add_bos) if isinstance(prompt, str) else prompt
    out = [runner.step([SequenceStep(0, tokens)])[0]]
    while len(out) < n:
        out.append(runner.step([SequenceStep(0, [out[-1]])])[0])
    return out


def decode_together(runner: Any, prompts: list[list[int]], n: int) -> list[list[int]]:
    """Greedy tokens of every prompt (sequence i for prompt i), all advanced in the same steps."""
    seqs = range(len(prompts))
    for seq in seqs:
        runner.truncate(seq, 0)
        runner.set_sampling(seq, GREEDY)
    nxt = runner.step([SequenceStep(seq, ids) for seq, ids in enumerate(prompts)])
    out = [[nxt[seq]] for seq in seqs]
    for _ in range(n - 1):
        nxt = runner.step([SequenceStep(seq, [out[seq][-1]]) for seq in seqs])
        for seq in seqs:
            out[seq].append(nxt[seq])
    return out


def run_job(worker: ModelWorker, prompt: str, n: int = 8, timeout: float = 60) -> list[Event]:
    """A greedy generation of ``n`` tokens through the worker; its events up to the last."""
    events: queue.Queue[Event] = queue.Queue()
    worker.submit(Job(prompt=prompt, sampling=GREEDY, emit=events.put, num_predict=n))
    out = [events.get(timeout=timeout)]
    while not out[-1].done:
        out.append(events.get(timeout=timeout))
    return out


class WithoutShift:
    """A runner as an engine whose cache cannot drop a span looks: no ``shift``, so the worker re-reads."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.info = inner.info

    def __getattr__(self, name: str) -> Any:
        if name == "shift":
            raise AttributeError(name)
        return getattr(self._inner, name)
