"""The REPL's slash commands: /set, /show, /load, /save, /clear, /bye, /help — as ``ollama run`` has them."""

from __future__ import annotations

from typing import Any

import click

from corral.cli.repl import Session, unquote

COMMANDS = [
    ("/set", "Set session variables"),
    ("/show", "Show model information"),
    ("/load <model>", "Load a model (and start a new conversation)"),
    ("/save <model>", "Save your current session as a model"),
    ("/clear", "Clear session context"),
    ("/bye, /exit", "Exit"),
    ("/?, /help", "Help for a command"),
    ("/? shortcuts", "Help for keyboard shortcuts"),
]

SET_COMMANDS = [
    ("/set parameter ...", "Set a parameter"),
    ("/set system <string>", "Set system message"),
    ("/set history", "Enable history"),
    ("/set nohistory", "Disable history"),
    ("/set wordwrap", "Enable wordwrap"),
    ("/set nowordwrap", "Disable wordwrap"),
    ("/set think", "Enable thinking"),
    ("/set nothink", "Disable thinking"),
    ("/set format json", "Enable JSON mode"),
    ("/set noformat", "Disable formatting"),
    ("/set verbose", "Show LLM stats"),
    ("/set quiet", "Disable LLM stats"),
]

SHOW_COMMANDS = [
    ("/show info", "Show details for this model"),
    ("/show license", "Show model license"),
    ("/show modelfile", "Show Modelfile for this model (as /save would build it)"),
    ("/show parameters", "Show parameters for this model"),
    ("/show system", "Show system message"),
    ("/show template", "Show prompt template"),
]

SHORTCUTS = [
    ("Ctrl + a", "Move to the beginning of the line (Home)"),
    ("Ctrl + e", "Move to the end of the line (End)"),
    ("Alt + b", "Move back (left) one word"),
    ("Alt + f", "Move forward (right) one word"),
    ("Ctrl + k", "Delete the sentence after the cursor"),
    ("Ctrl + u", "Delete the sentence before the cursor"),
    ("Ctrl + w", "Delete the word before the cursor"),
    ("Up / Down", "Previous / next message from history"),
    ("Ctrl + r", "Search the history"),
    ("Alt + Enter", "Start a new line without sending"),
    ("Tab", "Complete a /command"),
    ("", ""),
    ("Ctrl + l", "Clear the screen"),
    ("Ctrl + c", "Stop the model from responding"),
    ("Ctrl + d", "Exit corral (/bye)"),
]

SHOW_WHAT = ("info", "license", "modelfile", "parameters", "system", "template")
SET_WHAT = (
    "parameter", "system", "history", "nohistory", "wordwrap", "nowordwrap", "think", "nothink", "format", "noformat",
    "verbose", "quiet",
)  # fmt: skip


class ExitRepl(Exception):
    """/bye or /exit."""


def _echo(text: str = "") -> None:
    click.echo(text)


def _table(rows: list[tuple[str, str]], width: int | None = None, indent: str = "  ") -> str:
    width = width or max(len(k) for k, _ in rows) + 3
    return "\n".join(f"{indent}{k:<{width}}{v}".rstrip() if k else "" for k, v in rows)


def help_text() -> str:
    return f"Available Commands:\n{_table(COMMANDS, 16)}\n\nUse \"\"\" to begin a multi-line message.\n"


def set_help() -> str:
    return f"Available Commands:\n{_table(SET_COMMANDS, 23)}\n"


def show_help() -> str:
    return f"Available Commands:\n{_table(SHOW_COMMANDS, 19)}\n"


def shortcuts_help() -> str:
    return f"Available keyboard shortcuts:\n{_table(SHORTCUTS, 16)}\n"


def parameter_help() -> str:
    from corral.types import Options

    rows = [
        (f"/set parameter {name} <{_kind(name)}>", field.description or "")
        for name, field in Options.model_fields.items()
    ]
    return f"Available Parameters:\n{_table(rows)}\n"


def _kind(name: str) -> str:
    from corral.types import Options

    annotation = str(Options.model_fields[name].annotation)
    for word in ("list", "bool", "int", "float"):
        if word in annotation:
            return {"list": "string> <string> ...", "bool": "true|false"}.get(word, word)
    return "string"


def completions(text: str) -> list[str]:
    """Words completing the /command line ``text`` (its last word)."""
    words = text.split(" ")
    if len(words) == 1:
        names = ["/set", "/show", "/load", "/save", "/clear", "/bye", "/exit", "/help", "/?"]
        return [n for n in names if n.startswith(words[0])]
    if len(words) == 2 and words[0] == "/set":
        return [w for w in SET_WHAT if w.startswith(words[1])]
    if len(words) == 2 and words[0] == "/show":
        return [w for w in SHOW_WHAT if w.startswith(words[1])]
    if len(words) == 2 and words[0] in ("/?", "/help"):
        return [w for w in ("set", "show", "shortcuts") if w.startswith(words[1])]
    if len(words) == 3 and words[:2] == ["/set", "parameter"]:
        from corral.types import Options

        return [n for n in Options.model_fields if n.startswith(words[2])]
    if len(words) == 3 and words[:2] == ["/set", "format"]:
        return [w for w in ("json",) if w.startswith(words[2])]
    return []


def run_command(session: Session, line: str) -> None:
    """Run one slash command; raises ExitRepl for /bye."""
    args = line.split()
    name = args[0]
    if name in ("/bye", "/exit"):
        raise ExitRepl
    if name in ("/?", "/help"):
        topic = args[1] if len(args) > 1 else ""
        if topic.startswith("shortcut"):
            _echo(shortcuts_help())
        elif topic == "set":
            _echo(set_help())
        elif topic == "show":
            _echo(show_help())
        else:
            _echo(help_text())
        return
    if name == "/set":
        _set(session, line, args)
        return
    if name == "/show":
        _show(session, args)
        return
    if name == "/load":
        _load(session, args)
        return
    if name == "/save":
        if len(args) != 2:
            _echo("Usage:\n  /save <modelname>\n")
            return
        session.save(args[1])
        _echo(f"Created new model '{args[1]}'\n")
        return
    if name == "/clear":
        session.messages = []
        _echo("Cleared session context\n")
        return
    _echo(f"Unknown command '{name}'.")
    _echo(help_text())


# ---- /set ------------------------------------------------------------------------------------------


# /set words that switch a Session flag: word -> (attribute, value)
_MODES = {
    "history": ("history", True), "nohistory": ("history", False), "wordwrap": ("wordwrap", True),
    "nowordwrap": ("wordwrap", False), "verbose": ("verbose", True), "quiet": ("verbose", False),
    "think": ("think", True), "nothink": ("think", False),
}  # fmt: skip


def _set(session: Session, line: str, args: list[str]) -> None:
    if len(args) < 2:
        _echo(set_help())
        return
    what = args[1]
    if what == "parameter":
        _set_parameter(session, args[2:])
    elif what == "system":
        text = line.split(None, 2)[2] if len(args) > 2 else ""
        text = unquote(text).strip()
        if not text:
            _echo("Usage:\n  /set system <string>\n")
            return
        session.system = text
        _echo("Set system message.\n")
    elif what in _MODES:
        name, on = _MODES[what]
        setattr(session, name, on)
        _echo(f"Set '{what}' mode.\n")
    elif what == "format":
        value = args[2] if len(args) > 2 else ""
        if value == "json":
            session.format = "json"
            _echo("Set format to 'json' mode.\n")
        elif value in ("noformat", "none", "off", ""):
            if value:
                session.format = None
                _echo("Disabled format.\n")
            else:
                _echo("Usage:\n  /set format json\n  /set noformat\n")
        else:
            _echo(f"Unknown format '{value}': use /set format json, or /set noformat\n")
    elif what == "noformat":
        session.format = None
        _echo("Disabled format.\n")
    else:
        _echo(f"Unknown command '/set {what}'.")
        _echo(set_help())


def _set_parameter(session: Session, args: list[str]) -> None:
    from corral.errors import BadRequest
    from corral.types import Options

    if not args:
        _echo(parameter_help())
        return
    name, values = args[0], args[1:]
    if name not in Options.model_fields:
        _echo(f"Unknown parameter '{name}'. Known parameters: {', '.join(Options.model_fields)}\n")
        return
    if not values:
        _echo(f"Usage:\n  /set parameter {name} <{_kind(name)}>\n")
        return
    takes_list = _kind(name).startswith("string>")
    if not takes_list and len(values) > 1:
        _echo(f"Parameter '{name}' takes one value, not {len(values)}.\n")
        return
    try:
        parsed = Options.parse({name: values if takes_list else values[0]}, strict=True)
    except BadRequest as exc:
        _echo(f"Couldn't set parameter: {exc}\n")
        return
    session.options[name] = getattr(parsed, name)
    _echo(f"Set parameter '{name}' to '{', '.join(values)}'\n")


# ---- /show -----------------------------------------------------------------------------------------


def _show(session: Session, args: list[str]) -> None:
    if len(args) != 2 or args[1] not in SHOW_WHAT:
        if len(args) >= 2:
            _echo(f"Unknown command '/show {' '.join(args[1:])}'.")
        _echo(show_help())
        return
    what = args[1]
    resp = session.client.show(session.model)
    if what == "info":
        from corral.cli.model_commands import info_block

        _echo(info_block(resp).rstrip("\n") + "\n")
    elif what == "license":
        _echo(resp["license"] or "No license was specified for this model.")
    elif what == "system":
        _echo(session.system or resp["system"] or "No system message was specified for this model.")
    elif what == "template":
        _echo(resp["template"] or "No prompt template was specified for this model.")
    elif what == "parameters":
        _echo("Model defined parameters:")
        lines = [line for line in (resp["parameters"] or "").splitlines() if line.strip()]
        if lines:
            for line in lines:
                _echo(f"  {line}")
        else:
            _echo("  No additional parameters were specified for this model.")
        if session.options:
            _echo("\nUser defined parameters:")
            for key, value in session.options.items():
                for item in value if isinstance(value, list) else [value]:
                    _echo(f"  {key:<30} {_plain(item)}")
        _echo()
    elif what == "modelfile":
        _echo(session_modelfile(session, resp["modelfile"]))


def _plain(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def session_modelfile(session: Session, text: str) -> str:
    """The model's Modelfile with this session's system prompt, parameters and conversation: what
    /save would build."""
    if not (session.system or session.options or session.messages):
        return text
    from corral.models.modelfile import parse, render_model
    from corral.types import Options

    try:
        mf = parse(text)
        params = Options.parse({**mf.parameters().model_dump(exclude_none=True), **session.options})
        header = "\n".join(
            line[2:] if line.startswith("# ") else line[1:] for line in text.splitlines() if line.startswith("#")
        )
        return render_model(
            mf.from_,
            parameters=params,
            template=mf.template,
            system=session.system or mf.system,
            adapters=mf.adapters,
            licenses=mf.licenses,
            messages=[*mf.messages, *((m["role"], m["content"]) for m in session.messages)],
            header=header or None,
        )
    except Exception:  # an unexpected Modelfile: show the model's own
        return text


# ---- /load -----------------------------------------------------------------------------------------


def _load(session: Session, args: list[str]) -> None:
    from corral.client import ResponseError

    if len(args) != 2:
        _echo("Usage:\n  /load <modelname>\n")
        return
    previous = (session.model, session.messages, session.model_messages)
    session.model, session.messages = args[1], []
    _echo(f"Loading model '{session.model}'")
    try:
        session.load()
    except ResponseError as exc:
        session.model, session.messages, session.model_messages = previous
        _echo(f"Error: {exc}\n")
        return
    session.refresh()
    session.print_model_messages()
    _echo()
