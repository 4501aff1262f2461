"""``corral run``: one answer for a prompt or a pipe, or a chat REPL on a terminal.

The REPL reads with prompt_toolkit (line editing, history in ``<home>/history``, bracketed paste,
``\"\"\"`` blocks), streams each answer as it is generated, word-wrapped to the terminal, and runs the
slash commands in ``repl_commands``; the prompt loop itself is ``repl_loop``. Ctrl+C while an answer
streams closes the stream, so the server stops generating and frees the slot; the interrupted turn
(question and partial answer) is left out of the conversation, so the next question is asked as if it
had never been.
"""

from __future__ import annotations

import os
import sys
import threading
from dataclasses import dataclass, field
from typing import Any, TextIO

import click

PROMPT = ">>> "
QUOTES = '"""'


@dataclass
class Session:
    """Everything a chat needs between turns; the REPL's commands read and change it."""

    client: Any
    model: str
    backend: str | None = None
    keep_alive: str | None = None
    format: str | None = None
    verbose: bool = False
    wordwrap: bool = True
    think: bool | None = None  # None: the request says nothing (the model's default)
    hide_thinking: bool = False
    options: dict[str, Any] = field(default_factory=dict)
    system: str | None = None
    messages: list[dict[str, Any]] = field(default_factory=list)
    model_messages: list[dict[str, Any]] = field(default_factory=list)  # the model's MESSAGE history
    history: bool = True  # write prompts to the history file
    out: TextIO | None = None  # default: sys.stdout at the time of writing

    @property
    def stdout(self) -> TextIO:
        return self.out or sys.stdout

    def conversation(self, text: str | None = None) -> list[dict[str, Any]]:
        """What a chat request carries: the session's system prompt, its turns, and ``text`` as the next.
        The model's own SYSTEM and MESSAGE history are added by the server."""
        history: list[dict[str, Any]] = []
        if self.system:
            history.append({"role": "system", "content": self.system})
        history += self.messages
        if text is not None:
            history.append({"role": "user", "content": text})
        return history

    def ask(self, text: str) -> str:
        """Send one user turn and stream the answer; the turn joins the conversation once complete.

        A conversation that has outgrown the model's context loses its oldest exchanges, one at a time,
        until it fits, and says so (the server refuses a prompt that does not fit rather than cut it).
        KeyboardInterrupt (Ctrl+C) closes the stream, which makes the server stop generating, and
        propagates with the conversation unchanged.
        """
        from corral.client import ResponseError

        kept = list(self.messages)
        dropped = 0
        while True:
            try:
                answer = self._ask_once(text)
            except ResponseError as exc:
                if (
                    exc.status_code != 400
                    or "more than the context" not in str(exc)
                    or not self._drop_oldest_exchange()
                ):
                    self.messages = kept  # even the new turn alone does not fit: nothing is forgotten
                    raise
                dropped += 1
                continue
            if dropped:
                click.echo(
                    f"(the conversation no longer fit the context: its {dropped} oldest exchange(s) were dropped)",
                    err=True,
                )
            return answer

    def _drop_oldest_exchange(self) -> bool:
        """Forget the first user turn and the answers to it; False when there is nothing left to forget."""
        users = [i for i, m in enumerate(self.messages) if m["role"] == "user"]
        if not users:
            return False
        end = users[1] if len(users) > 1 else len(self.messages)
        del self.messages[users[0] : end]
        return True

    def _ask_once(self, text: str) -> str:
        out = self.stdout
        writer = Wrapper(out, terminal_width(out) if self.wordwrap else None)
        answer: list[str] = []
        last: Any = None
        spinner = Spinner()
        stream = self.client.chat(
            model=self.model,
            messages=self.conversation(text),
            stream=True,
            options=self.options or None,
            keep_alive=self.keep_alive,
            format=self.format or None,
            backend=self.backend,
            think=self.think,
        )
        thinking = False
        try:
            spinner.start()
            for chunk in stream:
                thought, piece = chunk["message"].get("thinking"), chunk["message"]["content"]
                if thought and not self.hide_thinking:
                    spinner.stop()
                    if not thinking:
                        writer.write("Thinking...\n")
                        thinking = True
                    writer.write(thought)
                if piece:
                    spinner.stop()
                    if thinking:  # Ollama's frame around the trace
                        writer.write("\n...done thinking.\n\n")
                        thinking = False
                    answer.append(piece)
                    writer.write(piece)
                last = chunk
        finally:
            spinner.stop()
            close = getattr(stream, "close", None)
            if close:
                close()  # on an interrupt: drops the connection, and the server stops generating
            writer.end()
        full = "".join(answer)
        self.messages += [{"role": "user", "content": text}, {"role": "assistant", "content": full}]
        if self.verbose and last is not None:
            print_stats(last)
        return full

    def load(self) -> None:
        """An empty chat loads the model, so errors (unknown model, bad backend) show before the prompt."""
        with Spinner():
            self.client.chat(model=self.model, messages=[], keep_alive=self.keep_alive, backend=self.backend)

    def refresh(self) -> None:
        """Read the model's MESSAGE history (shown when the REPL starts and saved by /save)."""
        try:
            messages = self.client.show(self.model)["messages"] or []
        except Exception:  # a server without /api/show: no history to show, the chat still works
            messages = []
        self.model_messages = [{"role": m["role"], "content": m["content"]} for m in messages]

    def print_model_messages(self) -> None:
        out = self.stdout
        for message in self.model_messages:
            if message["role"] == "user":
                out.write(f"{PROMPT}{message['content']}\n")
            elif message["role"] == "assistant":
                writer = Wrapper(out, terminal_width(out) if self.wordwrap else None)
                writer.write(message["content"])
                writer.end()
                out.write("\n")
        out.flush()

    def save(self, name: str) -> None:
        """The session as a new model: FROM the current one, with its system prompt, parameters,
        and the model's MESSAGE history followed by this conversation."""
        self.client.create(
            name,
            from_=self.model,
            system=self.system or None,
            parameters=self.options or None,
            messages=[*self.model_messages, *self.messages] or None,
        )


# ---- output ----------------------------------------------------------------------------------------


def terminal_width(out: TextIO) -> int | None:
    """Columns of the terminal ``out`` writes to; None when it is no terminal (no wrapping then)."""
    try:
        if not out.isatty():
            return None
        columns = os.get_terminal_size(out.fileno()).columns
    except (AttributeError, OSError, ValueError):
        return None
    return columns if columns >= 10 else None


class Wrapper:
    """Writes streamed text at once, breaking lines at word boundaries to fit ``width`` columns.

    A word that would cross the edge is moved to the next line as it grows (the cursor backs over it,
    the rest of the line is cleared, and it is written again), so nothing waits for a whole word. A
    word longer than a line is broken where it must be. Lines stop one column short of the edge, so
    the terminal never wraps by itself. ``width=None`` writes the text unchanged.
    """

    def __init__(self, out: TextIO, width: int | None) -> None:
        self.out = out
        self.limit = width - 1 if width else None
        self.col = 0  # display column of the cursor
        self.word = ""  # the word being written, as far as it is on this line
        self.word_width = 0
        self.wrapped = False  # the line began at a soft break: leading blanks are dropped
        self.at_line_start = True

    def write(self, text: str) -> None:
        if not text:
            return
        if self.limit is None:
            self.out.write(text)
            self.at_line_start = text.endswith("\n")
            self.out.flush()
            return
        from prompt_toolkit.utils import get_cwidth

        limit = self.limit
        buf: list[str] = []
        for ch in text:
            if ch == "\n":
                buf.append("\n")
                self._reset_line(wrapped=False)
                continue
            if ch in " \t":
                self.word, self.word_width = "", 0
                if self.col == 0 and self.wrapped:
                    continue
                step = 1 if ch == " " else 8 - self.col % 8
                if self.col + step > limit:
                    buf.append("\n")
                    self._reset_line(wrapped=True)
                else:
                    buf.append(ch)
                    self.col += step
                continue
            if ch == "\r":
                continue
            cw = max(get_cwidth(ch), 0)
            if cw and self.col + cw > limit:
                if self.word and self.word_width < self.col and self.word_width + cw <= limit:
                    buf.append(f"\x1b[{self.word_width}D\x1b[K\n{self.word}")  # carry the word over
                    self.col, self.wrapped = self.word_width, True
                else:
                    buf.append("\n")
                    self._reset_line(wrapped=True)
            buf.append(ch)
            self.col += cw
            self.word += ch
            self.word_width += cw
        self.at_line_start = self.col == 0
        self.out.write("".join(buf))
        self.out.flush()

    def _reset_line(self, *, wrapped: bool) -> None:
        self.col, self.word, self.word_width, self.wrapped = 0, "", 0, wrapped

    def end(self) -> None:
        """Finish the answer's last line."""
        if not self.at_line_start:
            self.out.write("\n")
        self._reset_line(wrapped=False)
        self.at_line_start = True
        self.out.flush()


class Spinner:
    """Braille dots on stderr while nothing else shows (the model loading, the first token coming);
    only on a terminal. ``stop`` clears it and may be called any number of times."""

    FRAMES = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"

    def __init__(self, delay: float = 0.3) -> None:
        self.delay = delay
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._shown = False
        self._lock = threading.Lock()

    def start(self) -> None:
        try:
            if not (sys.stderr.isatty() and sys.stdout.isatty()):
                return
        except (AttributeError, ValueError):
            return
        self._thread = threading.Thread(target=self._run, name="corral-spinner", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        if self._stop.wait(self.delay):  # a quick answer shows no spinner at all
            return
        i = 0
        while True:
            with self._lock:
                if self._stop.is_set():
                    return
                sys.stderr.write(f"\r{self.FRAMES[i % len(self.FRAMES)]} ")
                sys.stderr.flush()
                self._shown = True
            i += 1
            if self._stop.wait(0.1):
                return

    def stop(self) -> None:
        if self._thread is None:
            return
        with self._lock:
            self._stop.set()
            if self._shown:
                sys.stderr.write("\r\x1b[K")
                sys.stderr.flush()
                self._shown = False
        self._thread = None

    def __enter__(self) -> Spinner:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def print_stats(r: Any) -> None:
    """The block ``ollama run --verbose`` prints, on stderr."""

    def rate(count: int | None, ns: int | None) -> str:
        return f"{count / (ns / 1e9):.2f} tokens/s" if count and ns else "n/a"

    lines = [
        ("total duration", _dur(r["total_duration"])),
        ("load duration", _dur(r["load_duration"])),
        ("prompt eval count", f"{r['prompt_eval_count']} token(s)"),
        ("prompt eval duration", _dur(r["prompt_eval_duration"])),
        ("prompt eval rate", rate(r["prompt_eval_count"], r["prompt_eval_duration"])),
        ("eval count", f"{r['eval_count']} token(s)"),
        ("eval duration", _dur(r["eval_duration"])),
        ("eval rate", rate(r["eval_count"], r["eval_duration"])),
    ]
    for label, value in lines:
        click.echo(f"{label + ':':<22}{value}", err=True)


def _dur(ns: int | None) -> str:
    if not ns:
        return "0s"
    seconds = ns / 1e9
    if seconds >= 1:
        return f"{seconds:.3f}s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.3f}ms"
    return f"{seconds * 1e6:.3f}µs"


# ---- input -----------------------------------------------------------------------------------------


def _opener(text: str) -> int | None:
    """Where a \"\"\" block's body starts: after a leading \"\"\" (or ``/set system \"\"\"``); else None."""
    stripped = text.lstrip()
    if stripped.startswith(QUOTES):
        return len(text) - len(stripped) + len(QUOTES)
    head = "/set system "
    if stripped.startswith(head) and stripped[len(head) :].lstrip().startswith(QUOTES):
        rest = stripped[len(head) :]
        return len(text) - len(rest) + (len(rest) - len(rest.lstrip())) + len(QUOTES)
    return None


def needs_more(text: str) -> bool:
    """True while a \"\"\" block is open: Enter then adds a line instead of sending."""
    start = _opener(text)
    return start is not None and not text[start:].rstrip().endswith(QUOTES)


def unquote(text: str) -> str:
    """The message in a \"\"\" block (without the quotes); other input as it is."""
    start = _opener(text)
    if start is None:
        return text
    body = text[start:].rstrip()
    if body.endswith(QUOTES):
        body = body[: -len(QUOTES)]
    return body.strip("\n").rstrip()
