"""``corral run``: one answer for a prompt or a pipe, or a chat loop on a terminal."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any

import click


@dataclass
class Session:
    client: Any
    model: str
    backend: str | None = None
    keep_alive: str | None = None
    format: str | None = None
    verbose: bool = False
    wordwrap: bool = True
    options: dict[str, Any] = field(default_factory=dict)
    system: str | None = None
    messages: list[dict[str, Any]] = field(default_factory=list)

    def ask(self, text: str) -> str:
        """Send one user turn, stream the answer to stdout, keep both in the conversation."""
        history = list(self.messages)
        if self.system:
            history.insert(0, {"role": "system", "content": self.system})
        history.append({"role": "user", "content": text})
        answer: list[str] = []
        last: Any = None
        stream = self.client.chat(
            model=self.model, messages=history, stream=True, options=self.options or None,
            keep_alive=self.keep_alive, format=self.format, backend=self.backend,
        )
        try:
            for chunk in stream:
                piece = chunk["message"]["content"]
                if piece:
                    answer.append(piece)
                    sys.stdout.write(piece)
                    sys.stdout.flush()
                last = chunk
        finally:
            close = getattr(stream, "close", None)
            if close:
                close()  # stops generation on the server when the user interrupts
        full = "".join(answer)
        if not full.endswith("\n"):
            sys.stdout.write("\n")
        sys.stdout.flush()
        self.messages += [{"role": "user", "content": text}, {"role": "assistant", "content": full}]
        if self.verbose and last is not None:
            print_stats(last)
        return full

    def load(self) -> None:
        """An empty chat loads the model, so errors (unknown model, bad backend) show before the prompt."""
        self.client.chat(model=self.model, messages=[], keep_alive=self.keep_alive, backend=self.backend)


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


def one_shot(session: Session, text: str) -> None:
    session.ask(text)


def interactive(session: Session) -> None:
    session.load()
    click.echo("Type a message; /bye or Ctrl+D exits.", err=True)
    while True:
        try:
            line = input(">>> ")
        except EOFError:
            click.echo("", err=True)
            return
        except KeyboardInterrupt:
            click.echo("\nUse Ctrl + d or /bye to exit.", err=True)
            continue
        text = line.strip()
        if not text:
            continue
        if text in ("/bye", "/exit"):
            return
        try:
            session.ask(text)
        except KeyboardInterrupt:
            click.echo("", err=True)
