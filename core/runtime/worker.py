"""One loaded model's owner thread: slots, continuous batching and the prefix cache.

Only this thread calls the Runner (llama.cpp loses much of its speed when calls hop between
threads). Every step it admits waiting jobs into free slots, then advances all active sequences
in one batched ``Runner.step``. HTTP handlers only enqueue jobs and read their events.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from corral.errors import BadRequest, CorralError, PromptTooLong
from corral.hookspecs import Runner, Sampling, SequenceStep
from corral.runtime.textstream import TextStream

log = logging.getLogger("corral.runtime.worker")


@dataclass
class Stats:
    """Ollama's counters; durations in nanoseconds."""

    prompt_eval_count: int = 0
    prompt_eval_duration: int = 0
    eval_count: int = 0
    eval_duration: int = 0
    cached_tokens: int = 0
    queue_duration: int = 0  # waiting in this worker for a slot


@dataclass
class Event:
    text: str = ""
    done: bool = False
    done_reason: str | None = None  # "stop" | "length" | "error"
    error: str | None = None
    exception: CorralError | None = None  # the error itself, so the server can pick the status
    stats: Stats | None = None
    tokens: list[int] | None = None  # the whole context on the final event (Ollama's "context")
    # The tokens sampled since the last event, when the job's Sampling asked for logprobs: Ollama's and
    # OpenAI's shape, {"token", "logprob", "bytes", "top_logprobs": [{"token", "logprob", "bytes"}]}.
    logprobs: list[dict[str, Any]] | None = None


@dataclass
class Job:
    """One generation request, as the owner thread sees it."""

    prompt: str | list[int]  # text (tokenized on the owner thread) or ready token ids
    sampling: Sampling
    emit: Callable[[Event], None]
    num_predict: int = -1
    num_ctx: int | None = None
    stops: list[str] = field(default_factory=list)
    add_bos: bool = True
    context: list[int] = field(default_factory=list)  # earlier tokens to continue from (Ollama's "context")
    embed: list[str] | None = None  # set: an embedding job instead of a generation
    # An input longer than the context is cut to fit, else refused: an embedding's at its end (Ollama's default),
    # a prompt in the middle, after the tokens a context shift keeps (Ollama's rule; Corral's default refuses).
    truncate: bool = True
    # Context shift (Ollama's ``shift``): a generation that fills its context drops the older half of what
    # follows its first ``num_keep`` tokens and goes on; False: it ends there with done_reason "length".
    shift: bool = True
    num_keep: int = 4  # tokens kept at the start by a shift (plus a BOS); -1: the whole prompt
    keep_chars: int = 0  # and at least the tokens of the text prompt's first keep_chars characters (its system part)
    on_result: Callable[[Any], None] | None = None
    cancelled: threading.Event = field(default_factory=threading.Event)
    on_cancel: Callable[[], None] | None = None  # told at once (a runner process forwards it down its pipe)
    received_at: float = 0.0  # perf_counter when the owner thread took it in (its queue time starts)

    def cancel(self) -> None:
        if self.cancelled.is_set():
            return
        self.cancelled.set()
        if self.on_cancel is not None:
            self.on_cancel()


@dataclass(frozen=True)
class WorkerUsage:
    """A model's load right now: what routers and autoscalers read from /metrics."""

    running: int  # sequences in a slot (prefill or decode)
    waiting: int  # jobs waiting for a slot or for room in the KV cache
    kv_used: int  # KV cells held by running sequences (idle prefix caches are reclaimable, so free)
    kv_total: int  # KV cells in the shared pool (context per slot x slots)


@dataclass
class _Slot:
    seq: int
    cached: list[int] = field(default_factory=list)  # tokens whose KV this sequence holds
    job: Job | None = None
    pending: list[int] = field(default_factory=list)  # prompt tokens not yet decoded
    next_token: int | None = None  # sampled, not yet fed back
    generated: int = 0
    limit: int = 0
    keep: int = 0  # tokens a context shift keeps at the start
    rereading: bool = False  # re-reading kept tokens after a shift the cache could not do in place
    text: TextStream | None = None
    stats: Stats = field(default_factory=Stats)
    t_start: float = 0.0
    t_first: float = 0.0
    last_used: float = 0.0
    logprobs: list[dict[str, Any]] = field(default_factory=list)  # not yet sent with an event


class ModelWorker:
    """Owns one Runner on one thread. ``submit`` is thread-safe; everything else runs on the thread."""

    def __init__(
        self, load: Callable[[], Runner], name: str, prefix_cache: bool = True, flush: Callable[[], None] | None = None
    ) -> None:
        self.name = name
        self.prefix_cache = prefix_cache
        self._load = load
        # Called after each turn of the loop: whoever buffers this turn's events sends them as one.
        self._flush = flush or (lambda: None)
        self._inbox: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._waiting: list[Job] = []
        self._ready = threading.Event()
        self._load_error: BaseException | None = None
        self.runner: Runner | None = None
        self.load_seconds = 0.0
        self._thread = threading.Thread(target=self._main, name=f"corral-model-{name}", daemon=True)
        self._stopping = False
        self._thread.start()

    # ---- thread-safe API ------------------------------------------------------------------
    def wait_loaded(self, timeout: float | None = None) -> Runner:
        self._ready.wait(timeout)
        if self._load_error is not None:
            raise self._load_error
        assert self.runner is not None
        return self.runner

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() or not self._ready.is_set()

    def submit(self, job: Job) -> None:
        self._inbox.put(job)

    def stop(self) -> None:
        self._stopping = True
        self._inbox.put(None)

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def usage(self, timeout: float = 1.0) -> WorkerUsage | None:
        """Read from another thread without a lock: a scrape may see a step half done, never a wrong type."""
        slots = getattr(self, "slots", None)
        if slots is None:
            return None
        running = [s for s in list(slots) if s.job is not None]
        return WorkerUsage(
            running=len(running), waiting=len(self._waiting) + self._inbox.qsize(),
            kv_used=sum(len(s.cached) for s in running), kv_total=self.total_ctx,
        )  # fmt: skip

    # ---- the owner thread -------------------------------------------------------------------
    def _main(self) -> None:
        t0 = time.perf_counter()
        try:
            self.runner = self._load()
        except BaseException as exc:  # reported to every waiter, never raised on this thread
            self._load_error = exc
            self._ready.set()
            return
        self.load_seconds = time.perf_counter() - t0
        runner = self.runner
        self.slots = [_Slot(seq=i) for i in range(runner.info.num_parallel)]
        self.total_ctx = runner.info.n_ctx * runner.info.num_parallel
        # The most one sequence may hold: the whole pool where the slots share one, else its own stream.
        self.kv_unified = runner.info.kv_unified
        self.seq_ctx = self.total_ctx if self.kv_unified else runner.info.n_ctx
        self._ready.set()
        try:
            while True:
                busy = any(s.job for s in self.slots)
                if not self._drain_inbox(block=not busy and not self._waiting):
                    break
                self._admit()
                if any(s.job for s in self.slots):
                    self._step()
                elif self._waiting:
                    time.sleep(0.001)  # jobs wait for room that only a finishing job frees
                self._flush()
        finally:
            for job in self._waiting:
                job.emit(Event(done=True, done_reason="error", error="the model was unloaded"))
            for slot in self.slots:
                if slot.job:
                    self._finish(slot, "error", error="the model was unloaded")
            self._flush()
            runner.close()

    def _drain_inbox(self, block: bool) -> bool:
        """Move new jobs to the waiting list; False when asked to stop."""
        try:
            item = self._inbox.get(timeout=0.5) if block else self._inbox.get_nowait()
            while True:
                if item is None:
                    return not self._stopping
                item.received_at = time.perf_counter()
                self._waiting.append(item)
                item = self._inbox.get_nowait()
        except queue.Empty:
            return not self._stopping

    def _admit(self) -> None:
        runner = self.runner
        assert runner is not None
        still_waiting: list[Job] = []
        for job in self._waiting:
            if job.cancelled.is_set():
                job.emit(Event(done=True, done_reason="cancelled"))
                continue
            if job.embed is not None:
                if not self._embed(job):
                    still_waiting.append(job)
                continue
            free = [s for s in self.slots if s.job is None]
            if not free:
                still_waiting.append(job)
                continue
            try:
                tokens = self._tokens(job)
                if not tokens:
                    raise BadRequest("the prompt is empty: there is nothing to continue from")
                num_ctx = job.num_ctx or runner.info.n_ctx
                context = min(num_ctx, self.seq_ctx)
                if len(tokens) >= context and job.truncate:
                    tokens = self._cut(job, tokens, context)
                elif len(tokens) >= context:
                    raise PromptTooLong(
                        f"the prompt is {len(tokens)} tokens, more than the context of {context} "
                        "(raise num_ctx or shorten the prompt)"
                    )
            except CorralError as exc:
                job.emit(Event(done=True, done_reason="error", error=str(exc), exception=exc))
                continue
            slot, common = self._choose(free, tokens)
            if not self._make_room(num_ctx, free, slot):
                still_waiting.append(job)
                continue
            self._start(job, tokens, num_ctx, slot, common)
        self._waiting = still_waiting

    def _embed(self, job: Job) -> bool:
        """Run an embedding job now; False, untouched, while running sequences leave the KV pool too
        little room for its longest input (idle prefix caches are dropped to make it) or, where each
        slot has its own stream, while no slot is free."""
        assert self.runner is not None and job.embed is not None
        free = [s for s in self.slots if s.job is None]
        try:
            fitted = [self._fit_context(t, job.truncate) for t in job.embed]
            texts = [text for text, _n in fitted]
            if self.kv_unified:
                if not self._make_room(max((n for _text, n in fitted), default=0), free, None):
                    return False
                vectors = self.runner.embed(texts)
            else:  # in the stream of the free slot used least lately, whose cache it empties
                if not free:
                    return False
                borrowed = min(free, key=lambda s: s.last_used)
                self._forget(borrowed)
                embed: Any = self.runner.embed  # Runner.embed with ``seq``: see ModelInfo.kv_unified
                vectors = embed(texts, seq=borrowed.seq)
            counts = sum(n for _text, n in fitted)
        except CorralError as exc:
            job.emit(Event(done=True, done_reason="error", error=str(exc), exception=exc))
            return True
        if job.on_result:
            job.on_result(vectors)
        job.emit(Event(done=True, done_reason="stop", stats=Stats(prompt_eval_count=counts)))
        return True

    def _fit_context(self, text: str, truncate: bool) -> tuple[str, int]:
        """``text`` (cut at the end, on a whole character, to the tokens one input may have, if
        ``truncate``) and its length in tokens."""
        runner = self.runner
        assert runner is not None
        add_bos = runner.info.add_bos
        tokens = runner.tokenize(text, add_bos=add_bos)
        limit = keep = runner.info.embed_tokens or runner.info.n_ctx
        while truncate and len(tokens) > limit and keep > 0:
            body = tokens[1:keep] if add_bos else tokens[:keep]
            text = b"".join(runner.token_bytes(t) for t in body).decode("utf-8", errors="ignore")
            tokens = runner.tokenize(text, add_bos=add_bos)  # re-tokenised text may merge differently
            keep -= max(1, len(tokens) - limit)
        return text, len(tokens)

    def _tokens(self, job: Job) -> list[int]:
        runner = self.runner
        assert runner is not None
        given = job.context + (list(job.prompt) if isinstance(job.prompt, list) else [])
        n_vocab = runner.info.n_vocab
        if any(not 0 <= t < n_vocab for t in given):  # the engine would fail mid-decode on an unknown id
            raise BadRequest(f"token ids in the prompt or context must be between 0 and {n_vocab - 1}")
        if isinstance(job.prompt, list):
            return given
        tokens = job.context + runner.tokenize(job.prompt, special=True, add_bos=job.add_bos and runner.info.add_bos)
        bos = runner.info.bos_token
        if not job.context and len(tokens) > 1 and tokens[0] == bos and tokens[1] == bos:  # template wrote BOS too
            tokens = tokens[1:]
        return tokens

    def _reserved(self, taking: _Slot | None) -> int:
        """KV cells held by running sequences and by idle caches but the one ``taking`` goes on from."""
        idle = sum(len(s.cached) for s in self.slots if not s.job and s is not taking)
        return sum(s.limit for s in self.slots if s.job) + idle

    def _make_room(self, need: int, free: list[_Slot], taking: _Slot | None) -> bool:
        """Fit a sequence of up to ``need`` tokens, in slot ``taking`` (None: the embeddings' scratch
        sequence), in the shared KV pool, dropping other idle caches if needed; ``taking``'s own cache is
        the new sequence's start, within ``need``."""
        if not self.kv_unified:  # each slot has a stream of its own: nothing to share, nothing to drop
            return True
        need = min(need, self.total_ctx)
        active = sum(s.limit for s in self.slots if s.job)
        if active + need > self.total_ctx:
            return False
        for slot in sorted(free, key=lambda s: s.last_used):
            if self._reserved(taking) + need <= self.total_ctx:
                break
            if slot is not taking:
                self._forget(slot)
        return True

    def _forget(self, slot: _Slot) -> None:
        assert self.runner is not None
        if slot.cached:
            self.runner.truncate(slot.seq, 0)
        slot.cached = []

    def _choose(self, free: list[_Slot], tokens: list[int]) -> tuple[_Slot, int]:
        """The free slot whose cache starts the most like ``tokens`` (the least recently used of equals),
        and how many tokens that is; without a prefix cache, the first free slot."""
        if not self.prefix_cache:
            return free[0], 0
        best = max(free, key=lambda s: (_common_prefix(s.cached, tokens), -s.last_used))
        return best, _common_prefix(best.cached, tokens)

    def _start(self, job: Job, tokens: list[int], num_ctx: int, slot: _Slot, common: int) -> None:
        runner = self.runner
        assert runner is not None
        common = min(common, len(tokens) - 1)  # the last prompt token must be decoded to get logits
        if slot.cached and common < len(slot.cached):
            common = runner.truncate(slot.seq, common)
        slot.cached = slot.cached[:common]
        slot.job = job
        slot.pending = tokens[common:]
        slot.next_token = None
        slot.generated = 0
        slot.limit = min(num_ctx, self.seq_ctx)
        slot.keep = self._keep(job, tokens, slot.limit)
        slot.rereading = False
        slot.text = TextStream(job.stops)
        slot.t_start = time.perf_counter()
        queued = int((slot.t_start - job.received_at) * 1e9) if job.received_at else 0
        slot.stats = Stats(cached_tokens=common, queue_duration=queued)
        slot.logprobs = []
        runner.set_sampling(slot.seq, job.sampling)

    def _step(self) -> None:
        runner = self.runner
        assert runner is not None
        budget = getattr(runner, "n_batch", 512)
        steps: list[SequenceStep] = []
        fed: dict[int, list[int]] = {}
        for slot in self.slots:
            if slot.job is not None and slot.job.cancelled.is_set():
                self._finish(slot, "cancelled")
        # Sequences that are generating go first, one token each; prompts share what budget is left
        # (chunked prefill), so a long new prompt never stalls the streams already running.
        for slot in self.slots:
            if slot.job is not None and slot.next_token is not None:
                steps.append(SequenceStep(slot.seq, [slot.next_token]))
                fed[slot.seq] = [slot.next_token]
                budget -= 1
        for slot in self.slots:
            if slot.job is None or slot.next_token is not None or budget <= 0:
                continue
            chunk = slot.pending[:budget]
            budget -= len(chunk)
            steps.append(SequenceStep(slot.seq, chunk, sample=len(chunk) == len(slot.pending)))
            fed[slot.seq] = chunk
        if not steps:
            return
        try:
            sampled = runner.step(steps)
        except CorralError as exc:
            for slot in self.slots:
                if slot.job and slot.seq in fed:
                    self._forget(slot)
                    self._finish(slot, "error", error=exc)
            return
        now = time.perf_counter()
        for slot in self.slots:
            if slot.job is None or slot.seq not in fed:
                continue
            chunk = fed[slot.seq]
            slot.cached.extend(chunk)
            if slot.next_token is None:  # still in the prompt, or re-reading after a shift
                slot.pending = slot.pending[len(chunk) :]
                slot.stats.prompt_eval_count += 0 if slot.rereading else len(chunk)
            if slot.seq in sampled:
                if slot.next_token is None and not slot.rereading:
                    slot.t_first = now
                    slot.stats.prompt_eval_duration = int((now - slot.t_start) * 1e9)
                slot.rereading = False
                self._accept(slot, sampled[slot.seq])

    def _accept(self, slot: _Slot, token: int) -> None:
        runner = self.runner
        assert runner is not None and slot.job is not None and slot.text is not None
        job = slot.job
        if runner.is_end_of_generation(token):
            self._finish(slot, "stop")
            return
        slot.generated += 1
        slot.next_token = token
        if job.sampling.logprobs is not None:
            self._note_logprobs(slot, token)
        text = slot.text.feed(runner.token_bytes(token))
        if text:
            job.emit(Event(text=text, logprobs=self._take_logprobs(slot, job)))
        if slot.text.stopped:
            self._finish(slot, "stop")
        elif 0 <= _predict_limit(job, slot.limit) <= slot.generated:
            self._finish(slot, "length")
        elif len(slot.cached) + 1 >= slot.limit and not self._shift(slot):
            self._finish(slot, "length")

    # ---- context shift ---------------------------------------------------------------------------
    def _keep(self, job: Job, tokens: list[int], limit: int) -> int:
        """Tokens a context shift keeps at the start of ``tokens``: Ollama's ``num_keep`` (after a BOS;
        -1: the whole prompt), at least the system part of a text prompt, and always less than ``limit``."""
        runner = self.runner
        assert runner is not None
        bos = runner.info.bos_token
        keep = len(tokens) if job.num_keep < 0 else job.num_keep + (1 if tokens and tokens[0] == bos else 0)
        if job.keep_chars > 0 and isinstance(job.prompt, str):
            head = runner.tokenize(job.prompt[: job.keep_chars], special=True, add_bos=False)
            body = tokens[len(job.context) :]
            start = len(job.context) + (1 if body and body[0] == bos and head[:1] != [bos] else 0)
            keep = max(keep, start + _common_prefix(head, tokens[start:]))
        return max(0, min(keep, limit - 2))

    def _cut(self, job: Job, tokens: list[int], limit: int) -> list[int]:
        """A prompt too long for its context, cut as Ollama cuts it: the tokens a shift keeps, then the
        latest ones, leaving half of the rest of the context free (as after a first shift)."""
        keep = self._keep(job, tokens, limit)
        room = limit - max((limit - keep) // 2, 1)
        log.warning("cutting a prompt of %d tokens to %d (keeping the first %d)", len(tokens), room, keep)
        return tokens[:keep] + tokens[len(tokens) - (room - keep) :]

    def _shift(self, slot: _Slot) -> bool:
        """Make room in a full context: drop half of what follows the kept tokens (Ollama's rule), in
        the cache where the engine can (``Runner.shift``), else by re-reading the rest after the kept
        tokens. False where the job asked for no shift, or nothing can be dropped."""
        runner, job = self.runner, slot.job
        assert runner is not None and job is not None and slot.next_token is not None
        keep = slot.keep
        discard = min(max((slot.limit - keep) // 2, 1), len(slot.cached) - keep)
        if not job.shift or job.num_predict == -2 or discard <= 0:
            return False
        kept = slot.cached[:keep] + slot.cached[keep + discard :]
        in_place = getattr(runner, "shift", None)
        log.debug("context shift on sequence %d: keep %d, discard %d", slot.seq, keep, discard)
        if in_place is not None and in_place(slot.seq, keep, discard):
            slot.cached = kept
            return True
        held = runner.truncate(slot.seq, keep)  # 0 where the cache cannot even drop a tail
        slot.cached = kept[:held]
        slot.pending = kept[held:] + [slot.next_token]
        slot.next_token = None
        slot.rereading = True
        return True

    def _note_logprobs(self, slot: _Slot, token: int) -> None:
        found = getattr(self.runner, "logprobs", None)
        lp = found(slot.seq) if found is not None else None
        if lp is None or lp.token != token:
            return
        top = [self._token_entry(t, v) for t, v in lp.top]
        slot.logprobs.append({**self._token_entry(token, lp.logprob), "top_logprobs": top})

    def _token_entry(self, token: int, logprob: float) -> dict[str, Any]:
        assert self.runner is not None
        data = self.runner.token_bytes(token)
        return {"token": data.decode("utf-8", errors="replace"), "logprob": logprob, "bytes": list(data)}

    def _take_logprobs(self, slot: _Slot, job: Job) -> list[dict[str, Any]] | None:
        if job.sampling.logprobs is None:
            return None
        taken, slot.logprobs = slot.logprobs, []
        return taken

    def _finish(self, slot: _Slot, reason: str, error: CorralError | str | None = None) -> None:
        job = slot.job
        assert job is not None
        if reason != "error" and slot.text is not None:
            tail = slot.text.flush()
            if tail:
                job.emit(Event(text=tail, logprobs=self._take_logprobs(slot, job)))
        now = time.perf_counter()
        stats = slot.stats
        stats.eval_count = slot.generated
        stats.eval_duration = int((now - slot.t_first) * 1e9) if slot.t_first else 0
        context = slot.cached + ([slot.next_token] if slot.next_token is not None else [])
        slot.job = None
        slot.pending = []
        slot.next_token = None
        slot.last_used = now
        slot.t_first = 0.0
        exception = error if isinstance(error, CorralError) else (CorralError(error) if error else None)
        job.emit(
            Event(
                done=True,
                done_reason=reason,
                error=str(error) if error else None,
                exception=exception,
                stats=stats,
                tokens=context,
                logprobs=self._take_logprobs(slot, job),
            )
        )


def _predict_limit(job: Job, limit: int) -> int:
    """The most tokens ``job`` may generate; -1: none but the context. An open-ended generation that
    shifts its context is bounded at ten contexts, as Ollama bounds it."""
    if job.num_predict >= 0:
        return job.num_predict if not job.shift else min(job.num_predict, 10 * limit)
    return 10 * limit if job.shift and job.num_predict == -1 else -1


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i
