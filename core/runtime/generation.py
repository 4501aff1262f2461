"""One request's life on a model, shared by every API: acquire, render, stream, split, release.

The Ollama routes and the OpenAI routes only translate wire formats around this module:

    generation = await generate(scheduler, Target(...), ChatPrompt(...), format=...)
    async for piece in generation.pieces():   # thinking / content / tool calls, and the raw event
        ...
    await generation.close()                  # cancels an unfinished job, releases the model

``holding`` is the one place a model is released (``Scheduler.release``); a generation closes
exactly once however its request ends (finished, failed, or a client that left), and a
``Generation`` is started before it is returned, so errors found up to the first event (a bad
template, a full queue, a crashed runner) still reach the route as exceptions, in time to be a status.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from typing import Any

import anyio

from corral.chat import prompting
from corral.chat.reply import Reply
from corral.chat.thinking import can_think
from corral.chat.toolchoice import forced_tools, tool_call_grammar
from corral.errors import BadRequest
from corral.hookspecs import ModelInfo, Sampling
from corral.models.recipes import Recipe
from corral.runtime.scheduler import Scheduler, Ticket
from corral.runtime.worker import Event
from corral.types import Message, Options


@dataclass(frozen=True)
class Target:
    """Which model a request wants, and how: its options, keep-alive and (optionally) backend."""

    model: str
    options: Options | dict[str, Any] | None = None
    keep_alive: str | int | float | None = None
    backend: str | None = None


# ---- what the model is asked -------------------------------------------------------------------


@dataclass(frozen=True)
class ChatPrompt:
    """A conversation, after the model's own MESSAGE history and SYSTEM (``/api/chat``, ``/v1/chat``)."""

    messages: list[Message]
    tools: list[dict[str, Any]] | None = None
    think: bool | str | None = None
    tool_choice: str | dict[str, Any] | None = None  # "required" or a named function: decoding makes a call
    think_if_able: bool = False  # ``think`` is a wish: a model that cannot think answers without (not a 400)


@dataclass(frozen=True)
class GeneratePrompt:
    """One user turn with an optional system prompt (``/api/generate``); ``template`` overrides the model's."""

    prompt: str
    system: str | None = None
    think: bool | str | None = None
    template: str | None = None


@dataclass(frozen=True)
class InsertPrompt:
    """Fill in the middle between ``prompt`` and ``suffix``, through a template that reads ``.Suffix``."""

    prompt: str
    suffix: str
    template: str | None = None


@dataclass(frozen=True)
class RawPrompt:
    """Text (or token ids) sent as is; ``required``: an empty text is refused unless the model adds a BOS."""

    prompt: str | list[int]
    required: bool = False


Prompt = ChatPrompt | GeneratePrompt | InsertPrompt | RawPrompt


class EmptyPrompt(BadRequest):
    """Nothing to continue from: an empty raw prompt for a model that adds no BOS token."""

    param = "prompt"  # the request field at fault, for APIs that name it (OpenAI's error.param)

    def __init__(self) -> None:
        super().__init__("prompt is empty")


def render(ticket: Ticket, info: ModelInfo, prompt: Prompt) -> tuple[str | list[int], Reply]:
    """The prompt as the model sees it, and the parser that splits its reply the way the request asked."""
    return render_recipe(ticket.loaded.recipe, info, prompt)


def render_recipe(recipe: Recipe, info: ModelInfo, prompt: Prompt) -> tuple[str | list[int], Reply]:
    """``render`` for a model that need not be loaded (``info``: its template facts)."""
    name = recipe.name.display
    if isinstance(prompt, RawPrompt):
        if prompt.required and not prompt.prompt and not (isinstance(prompt.prompt, str) and info.add_bos):
            raise EmptyPrompt()
        return prompt.prompt, Reply()
    if isinstance(prompt, InsertPrompt):
        return prompting.render_insert(
            recipe, prompt.prompt, prompt.suffix, template=prompt.template, model=name
        ), Reply()
    if isinstance(prompt, ChatPrompt):
        messages = prompting.chat_messages(recipe, list(prompt.messages))
        tools, think, template = prompt.tools, prompt.think, None
        if prompt.think_if_able and not can_think(recipe.template, info.chat_template):
            think = None
    else:
        messages = prompting.generate_messages(recipe, prompt.prompt, prompt.system)
        tools, think, template = None, prompt.think, prompt.template
    text = prompting.render(recipe, info, messages, template=template, tools=tools, think=think)
    reply = Reply.for_request(
        think=think,
        tools=tools,
        template=template or recipe.template,
        chat_template=info.chat_template,
        prompt=text,
        model=name,
    )
    return text, reply


# ---- holding a model ---------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def holding(scheduler: Scheduler, target: Target) -> AsyncIterator[Ticket]:
    """The model, loaded (or reused) and held for the block; released however the block ends."""
    ticket = await scheduler.acquire(target.model, target.options, target.keep_alive, target.backend)
    try:
        yield ticket
    finally:
        scheduler.release(ticket)


@dataclass(frozen=True)
class LoadResult:
    model: str
    unloading: bool  # keep_alive 0: the model goes as soon as it is released


async def load(scheduler: Scheduler, target: Target) -> LoadResult:
    """Only load the model (an empty prompt in Ollama's API); keep_alive 0 unloads it again."""
    async with holding(scheduler, target) as ticket:
        return LoadResult(ticket.loaded.recipe.name.display, ticket.loaded.keep_alive == 0)


@dataclass(frozen=True)
class Embedded:
    model: str
    vectors: list[list[float]]
    prompt_tokens: int
    load_duration: float  # seconds


async def embed(scheduler: Scheduler, target: Target, texts: list[str], *, truncate: bool = True) -> Embedded:
    """One vector per text (none for no texts, which only loads the model) and the tokens read."""
    async with holding(scheduler, target) as ticket:
        vectors, count = await scheduler.embed(ticket, texts, truncate=truncate) if texts else ([], 0)
    return Embedded(ticket.loaded.recipe.name.display, vectors, count, ticket.load_duration)


def normalise(vector: list[float], dimensions: int | None = None) -> list[float]:
    """The vector (cut to ``dimensions`` first) scaled to unit length, as Ollama's /api/embed returns it."""
    cut = [float(v) for v in (vector[:dimensions] if dimensions else vector)]
    norm = math.sqrt(math.fsum(v * v for v in cut))  # plain Python: numpy would cost the server's start ~0.1 s
    return [v / norm for v in cut] if norm > 0 else cut


# ---- one generation ----------------------------------------------------------------------------


@dataclass
class Piece:
    """One step of a reply, split: what the route sends, and the engine's event (done, stats, tokens)."""

    thinking: str
    content: str
    tool_calls: list[dict[str, Any]]
    event: Event

    @property
    def done(self) -> bool:
        return self.event.done


@dataclass
class Generation:
    """One held model and its running job; ``close`` cancels an unfinished job and releases the model."""

    ticket: Ticket
    reply: Reply
    started: float  # perf_counter when the request arrived, for Ollama's total_duration
    _events: AsyncIterator[Event]
    _exit: contextlib.AsyncExitStack
    _first: Event | None = None
    _closed: bool = field(default=False)

    @property
    def model(self) -> str:
        return self.ticket.loaded.recipe.name.display

    @property
    def load_duration(self) -> float:
        return self.ticket.load_duration

    def total_duration_ns(self) -> int:
        return int((time.perf_counter() - self.started) * 1e9)

    async def _start(self) -> None:
        """Wait for the first event, so errors found up to here still become a status."""
        try:
            self._first = await anext(self._events)
        except StopAsyncIteration:
            self._first = Event(done=True, done_reason="stop")
        except BaseException:
            await self.close()
            raise

    async def events(self) -> AsyncIterator[Event]:
        """The engine's events, up to and including the final one."""
        assert self._first is not None, "a Generation is started by generate()"
        yield self._first
        if self._first.done:
            return
        async for event in self._events:
            yield event
            if event.done:
                return

    async def pieces(self) -> AsyncIterator[Piece]:
        """Each event's text split into thinking, content and tool calls."""
        async for event in self.events():
            thought, text, calls = self.reply.feed(event.text, event.done)
            yield Piece(thought, text, calls, event)

    async def collect(self) -> list[Piece]:
        """Every piece, for a non-streamed answer; the generation is closed after (or when cancelled)."""
        try:
            return [piece async for piece in self.pieces()]
        finally:
            await self.close()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with anyio.CancelScope(shield=True):  # a cancelled request still cancels its job and frees the model
            await self._exit.aclose()


async def _close_events(events: AsyncIterator[Event]) -> None:
    aclose = getattr(events, "aclose", None)
    if aclose is None:
        return
    try:
        await aclose()  # an unfinished job is cancelled
    except RuntimeError:  # still running in a task being torn down: it cancels itself
        pass


def system_chars(recipe: Recipe, prompt: Prompt, text: str) -> int:
    """How many characters of the rendered ``text`` reach the end of its leading system messages' content,
    which a context shift keeps (0: none, or a template that does not show them verbatim)."""
    if isinstance(prompt, ChatPrompt):
        messages = prompting.chat_messages(recipe, list(prompt.messages))
    elif isinstance(prompt, GeneratePrompt):
        messages = prompting.generate_messages(recipe, prompt.prompt, prompt.system)
    else:
        return 0
    end = 0
    for message in messages:
        if message.role != "system":
            break
        found = text.find(message.content, end) if message.content else -1
        if found < 0:
            return end
        end = found + len(message.content)
    return end


def _grammar(prompt: Prompt, reply: Reply, format: str | dict[str, Any] | None) -> str | None:
    """The GBNF decoding follows: a forced tool call's, or the output ``format``'s."""
    forced = forced_tools(prompt.tools, prompt.tool_choice) if isinstance(prompt, ChatPrompt) else None
    if not forced:
        return prompting.grammar_for(format)
    if format not in (None, ""):
        raise BadRequest("a forced tool_choice cannot be combined with a response format")
    return tool_call_grammar(forced, reply.tools.tag if reply.tools is not None else "{")


async def generate(
    scheduler: Scheduler,
    target: Target,
    prompt: Prompt,
    *,
    format: str | dict[str, Any] | None = None,
    context: list[int] | None = None,
    logprobs: int | None = None,
    shift: bool = True,
    truncate: bool = False,
) -> Generation:
    """Acquire the model, render the prompt, start the job and wait for its first event.

    ``format``: Ollama's output constraint ("json" or a JSON schema); ``context``: earlier tokens to
    continue from (Ollama's /api/generate); ``logprobs``: report each token's log-probability and this
    many alternatives (None: none); ``shift``: a generation that fills the context drops its older half
    (keeping ``num_keep`` tokens and the system prompt) and goes on, else it ends; ``truncate``: a prompt
    longer than the context is cut after those kept tokens (Ollama's ``truncate``) instead of refused.
    On any error the model is released before it propagates.
    """
    started = time.perf_counter()
    exit_stack = contextlib.AsyncExitStack()  # owned by the Generation once it exists
    try:
        ticket = await exit_stack.enter_async_context(holding(scheduler, target))
        info = ticket.loaded.worker.wait_loaded().info  # acquire waited for the load: this returns at once
        text, reply = render(ticket, info, prompt)
        grammar = _grammar(prompt, reply, format)
        sampling: Sampling = replace(ticket.options.sampling(), grammar=grammar, logprobs=logprobs)
        keep_chars = system_chars(ticket.loaded.recipe, prompt, text) if isinstance(text, str) else 0
        events = scheduler.stream(
            ticket,
            text,
            sampling=sampling,
            context=context or None,
            shift=shift,
            keep_chars=keep_chars,
            truncate=truncate,
        )
        exit_stack.push_async_callback(_close_events, events)
    except BaseException:
        await exit_stack.aclose()
        raise
    generation = Generation(ticket, reply, started, events, exit_stack)
    await generation._start()
    return generation
