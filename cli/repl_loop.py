"""The chat REPL's prompt loop: prompt_toolkit with history, \"\"\" blocks and slash-command completion,
and the two ways ``corral run`` answers (one shot, or interactive)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import click

from corral.cli.repl import PROMPT, QUOTES, Session, needs_more, unquote
from corral.cli.repl_commands import ExitRepl, completions, run_command

CONTINUATION = "... "
PLACEHOLDER = "Send a message (/? for help)"
EXIT_HINT = "Use Ctrl + d or /bye to exit."


class PromptInterrupt(KeyboardInterrupt):
    """Ctrl+C at the prompt; ``had_text`` tells a cleared line from an empty prompt."""

    def __init__(self, had_text: bool) -> None:
        super().__init__()
        self.had_text = had_text


def history_path() -> Path | None:
    try:
        from corral.config import Settings

        return Settings().home / "history"
    except Exception:  # a broken config file: chat without a history file
        return None


def _prompt_session(session: Session) -> Any:
    from prompt_toolkit import PromptSession
    from prompt_toolkit.application.current import get_app
    from prompt_toolkit.completion import Completer, Completion
    from prompt_toolkit.formatted_text import FormattedText
    from prompt_toolkit.history import FileHistory, InMemoryHistory
    from prompt_toolkit.key_binding import KeyBindings
    from prompt_toolkit.styles import Style

    class History(FileHistory):
        """The history file, written only while ``session.history`` is on (CORRAL_NOHISTORY,
        ``/set nohistory``); entries still reach ↑ within this session."""

        def store_string(self, string: str) -> None:
            if not session.history:
                return
            try:
                path = Path(os.fsdecode(self.filename))
                if not path.exists():  # private from the start: prompts can be personal
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.touch(mode=0o600)
                super().store_string(string)
            except OSError:
                pass

    path = history_path()
    history: Any = History(str(path)) if path is not None else InMemoryHistory()

    class SlashCompleter(Completer):
        def get_completions(self, document: Any, complete_event: Any) -> Any:
            text = document.text_before_cursor
            if not text.startswith("/") or "\n" in text:
                return
            for word in completions(text):
                yield Completion(word, start_position=-len(text.split(" ")[-1]))

    keys = KeyBindings()

    @keys.add("enter")
    def _enter(event: Any) -> None:
        buffer = event.current_buffer
        if needs_more(buffer.text):
            buffer.insert_text("\n")
        else:
            buffer.validate_and_handle()

    @keys.add("escape", "enter")
    def _newline(event: Any) -> None:
        event.current_buffer.insert_text("\n")

    @keys.add("c-c")
    def _interrupt(event: Any) -> None:
        event.app.exit(exception=PromptInterrupt(bool(event.current_buffer.text)), style="class:aborting")

    return PromptSession(
        history=history,
        key_bindings=keys,
        multiline=True,
        prompt_continuation=lambda width, line_number, wrap_count: CONTINUATION,
        placeholder=lambda: [] if get_app().is_done else FormattedText([("class:placeholder", PLACEHOLDER)]),
        completer=SlashCompleter(),
        complete_while_typing=False,
        style=Style.from_dict({"placeholder": "ansibrightblack"}),
        include_default_pygments_style=False,
    )


# ---- the two ways to run ---------------------------------------------------------------------------


def one_shot(session: Session, text: str) -> None:
    """Answer ``text`` and print only the answer (an empty prompt only loads the model)."""
    if not text.strip():
        session.load()
        return
    session.ask(text)


def interactive(session: Session) -> None:
    from corral.client import ResponseError
    from corral.config import Settings
    from corral.errors import CorralError

    try:
        session.history = session.history and not Settings().nohistory
    except Exception:
        pass
    session.load()
    session.refresh()
    session.print_model_messages()
    prompt = _prompt_session(session)
    out = session.stdout
    while True:
        try:
            line = prompt.prompt(PROMPT)
        except PromptInterrupt as exc:
            if not exc.had_text:
                out.write(EXIT_HINT + "\n\n")
                out.flush()
            continue
        except KeyboardInterrupt:
            continue
        except EOFError:
            return
        if not line.strip():
            continue
        try:
            if line.lstrip().startswith("/") and not line.lstrip().startswith(QUOTES):
                run_command(session, line.strip())
                continue
            text = unquote(line)
            if not text.strip():
                continue
            session.ask(text)
            out.write("\n")
        except ExitRepl:
            return
        except KeyboardInterrupt:
            out.write("\n")  # the answer stopped; its turn stays out of the conversation
        except (ResponseError, CorralError, ConnectionError, TimeoutError) as exc:
            click.echo(f"Error: {exc}", err=True)
        out.flush()
