"""Modelfiles: parse Ollama's Modelfile format into commands, read typed values from it, and render one back."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args, get_origin

from corral.errors import BadRequest, ModelfileError
from corral.types import Options

INSTRUCTIONS = ("from", "parameter", "template", "system", "adapter", "license", "message", "requires")
ROLES = ("system", "user", "assistant")
NO_FROM = "no FROM line: a Modelfile must say which model to build on, e.g. FROM smollm2:135m"

_EXAMPLES = {
    "from": "FROM smollm2:135m",
    "parameter": "PARAMETER temperature 0.7",
    "template": 'TEMPLATE """{{ .Prompt }}"""',
    "system": 'SYSTEM """You are a helpful assistant."""',
    "adapter": "ADAPTER ./lora.gguf",
    "license": 'LICENSE """MIT"""',
    "message": "MESSAGE user Hello",
    "requires": "REQUIRES 0.5.0",
}
_NEEDS = {"parameter": "a name and a value", "message": "a role and content"}
_WORD = re.compile(r"(\S+)\s*(.*)")
_KEYED = re.compile(r"(\S+)\s+(.*)")
_CLOSE = re.compile(r'"{3,}')  # a run of 3+ quotes closes """; extra quotes before the last three are content
_INT = re.compile(r"[+-]?[0-9]+")
_SEMVER = re.compile(r"v?([0-9]+(?:\.[0-9]+){0,2}(?:-[0-9A-Za-z.-]+)?(?:\+[0-9A-Za-z.-]+)?)")
_TRUE, _FALSE = {"1", "t", "true"}, {"0", "f", "false"}  # Go's strconv.ParseBool, any case


@dataclass
class Command:
    """One instruction: ``name`` is its lower-case word; for PARAMETER and MESSAGE ``args`` is "key value"."""

    name: str
    args: str
    line: int = field(default=0, compare=False)

    def split(self) -> tuple[str, str]:
        """(parameter name, value) or (role, content)."""
        key, _, value = self.args.partition(" ")
        return key, value


@dataclass
class Modelfile:
    commands: list[Command] = field(default_factory=list)

    @classmethod
    def build(
        cls,
        from_: str,
        *,
        parameters: Options | None = None,
        template: str | None = None,
        system: str | None = None,
        adapters: Sequence[str] = (),
        licenses: Sequence[str] = (),
        messages: Sequence[tuple[str, str]] = (),
        requires: str | None = None,
    ) -> Modelfile:
        """A Modelfile in the canonical order that ``ollama show --modelfile`` prints."""
        cmds = [Command("from", from_)]
        cmds += [Command("requires", requires)] if requires is not None else []
        cmds += [Command("adapter", a) for a in adapters]
        cmds += [Command("template", template)] if template is not None else []
        cmds += [Command("system", system)] if system is not None else []
        for name, value in (parameters.model_dump(exclude_none=True) if parameters else {}).items():
            cmds += [
                Command("parameter", f"{name} {_format(v)}") for v in (value if isinstance(value, list) else [value])
            ]
        for role, content in messages:
            _check_role(role, None)
            cmds.append(Command("message", f"{role} {content}"))
        cmds += [Command("license", text) for text in licenses]
        return cls(cmds)

    def _all(self, name: str) -> list[Command]:
        return [c for c in self.commands if c.name == name]

    def _last(self, name: str) -> str | None:
        found = self._all(name)
        return found[-1].args if found else None

    @property
    def from_(self) -> str:
        value = self._last("from")
        if value is None:
            raise ModelfileError(NO_FROM)
        return value

    @property
    def template(self) -> str | None:
        return self._last("template")

    @property
    def system(self) -> str | None:
        return self._last("system")

    @property
    def adapters(self) -> list[str]:
        return [c.args for c in self._all("adapter")]

    @property
    def licenses(self) -> list[str]:
        return [c.args for c in self._all("license")]

    @property
    def messages(self) -> list[tuple[str, str]]:
        out = []
        for c in self._all("message"):
            role, content = c.split()
            _check_role(role, c.line)
            out.append((role, content))
        return out

    @property
    def requires(self) -> str | None:
        """The REQUIRES version, without a leading "v"."""
        found = self._all("requires")
        if not found:
            return None
        m = _SEMVER.fullmatch(found[-1].args.strip())
        if not m:
            raise ModelfileError(
                f"REQUIRES must be a version such as 0.5.0, not '{found[-1].args}'", found[-1].line or None
            )
        return m.group(1)

    def parameters(self) -> Options:
        """The PARAMETER lines as Options: later lines win, and each ``stop`` adds one stop sequence."""
        data: dict[str, Any] = {}
        for c in self._all("parameter"):
            name, raw = c.split()
            line = c.line or None
            if name not in Options.model_fields:
                raise ModelfileError(f"unknown parameter '{name}'", line)
            value = _convert(name, raw, line)
            data[name] = [*data.get(name, []), value] if isinstance(value, str) else value
            try:
                Options.parse({name: data[name]})
            except BadRequest as exc:
                detail = exc.message.split(": ", 1)[-1]
                raise ModelfileError(f"invalid value {raw!r} for parameter '{name}': {detail}", line) from None
        return Options.parse(data)


def parse(text: str) -> Modelfile:
    """Parse a Modelfile; every error names its 1-based line."""
    lines = text.lstrip("\ufeff").replace("\r\n", "\n").replace("\r", "\n").split("\n")
    commands: list[Command] = []
    i = 0
    while i < len(lines):
        lineno, stripped = i + 1, lines[i].strip()
        if not stripped or stripped.startswith("#"):
            i += 1
            continue
        m = _WORD.fullmatch(lines[i].lstrip())
        assert m is not None
        word, rest = m.groups()
        name = word.lower()
        if name not in INSTRUCTIONS:
            raise ModelfileError(f"unknown instruction '{word}'", lineno)
        missing = ModelfileError(f"{name.upper()} needs {_NEEDS.get(name, 'a value')}, e.g. {_EXAMPLES[name]}", lineno)
        key = ""
        if name in _NEEDS:
            km = _KEYED.fullmatch(rest)
            if km is None or not km.group(2).strip():
                raise missing
            key, rest = km.groups()
            if name == "message":
                _check_role(key, lineno)
        elif not rest.strip():
            raise missing
        value, i = _read_value(lines, i, rest)
        if name == "from" and not value.strip():
            raise missing
        commands.append(Command(name, f"{key} {value}" if key else value, lineno))

    mf = Modelfile(commands)
    froms = mf._all("from")
    if not froms:
        raise ModelfileError(NO_FROM)
    if len(froms) > 1:
        raise ModelfileError(f"a second FROM line (the first is line {froms[0].line}): use one FROM", froms[1].line)
    mf.parameters()  # report bad parameters and versions now, with their lines
    _ = mf.requires
    return mf


def render(mf: Modelfile, *, header: str | None = None) -> str:
    """Modelfile text that parses back to ``mf``; ``header`` lines become ``#`` comments on top."""
    out = [f"# {h}".rstrip() for h in header.splitlines()] + [""] if header else []
    for c in mf.commands:
        if c.name in ("template", "system", "license"):
            out.append(f"{c.name.upper()} {_block(c.args)}")
        elif c.name == "message":
            role, content = c.split()
            out.append(f"MESSAGE {role} {_block(content)}")
        elif c.name == "parameter":
            name, value = c.split()
            quoted = name in Options.model_fields and _kind(name) is list
            out.append(f"PARAMETER {name} {_inline(value, quoted=quoted)}")
        else:
            out.append(f"{c.name.upper()} {_inline(c.args)}")
    return "\n".join(out) + "\n"


def render_model(
    from_: str,
    *,
    parameters: Options | None = None,
    template: str | None = None,
    system: str | None = None,
    adapters: Sequence[str] = (),
    licenses: Sequence[str] = (),
    messages: Sequence[tuple[str, str]] = (),
    requires: str | None = None,
    header: str | None = None,
) -> str:
    """A Modelfile for these parts, laid out as ``ollama show --modelfile`` does."""
    mf = Modelfile.build(
        from_,
        parameters=parameters,
        template=template,
        system=system,
        adapters=adapters,
        licenses=licenses,
        messages=messages,
        requires=requires,
    )
    return render(mf, header=header)


def resolve_from(value: str, modelfile_dir: Path) -> Path | None:
    """The absolute path a FROM (or ADAPTER) value names, or None when it is a model name."""
    value = value.strip()
    if not value:
        return None
    looks_like_path = (
        value in (".", "..")
        or value.startswith(("./", "../", "/", "~", ".\\", "..\\"))
        or os.path.isabs(value)
        or value.lower().endswith(".gguf")
    )
    if not looks_like_path:
        try:
            looks_like_path = (Path(modelfile_dir) / value).exists()
        except (OSError, ValueError):
            looks_like_path = False
    if not looks_like_path:
        return None
    return Path(os.path.abspath(os.path.join(modelfile_dir, os.path.expanduser(value))))


def _read_value(lines: list[str], i: int, text: str) -> tuple[str, int]:
    """The value starting with ``text`` on line ``i`` (0-based) and the index of the line after it."""
    start = i + 1
    if text.startswith('"""'):
        parts: list[str] = []
        cur = text[3:]
        while True:
            m = _CLOSE.search(cur)
            if m:
                if cur[m.end() :].strip():
                    raise ModelfileError('unexpected text after the closing """', i + 1)
                parts.append(cur[: m.end() - 3])
                return "\n".join(parts), i + 1
            parts.append(cur)
            i += 1
            if i >= len(lines):
                raise ModelfileError('unterminated """: the value that starts on this line is never closed', start)
            cur = lines[i]
    if text.startswith('"'):
        out: list[str] = []
        cur, pos = text, 1
        while True:
            while pos < len(cur):
                ch = cur[pos]
                if ch == "\\" and cur[pos + 1 : pos + 2] in ('"', "\\"):
                    out.append(cur[pos + 1])
                    pos += 2
                elif ch == '"':
                    if cur[pos + 1 :].strip():
                        raise ModelfileError("unexpected text after the closing quote", i + 1)
                    return "".join(out), i + 1
                else:
                    out.append(ch)
                    pos += 1
            i += 1
            if i >= len(lines):
                raise ModelfileError('unterminated quote: the "value" that starts on this line is never closed', start)
            out.append("\n")
            cur, pos = lines[i], 0
    return text.strip(), i + 1


def _check_role(role: str, line: int | None) -> None:
    if role not in ROLES:
        raise ModelfileError(f"invalid message role '{role}': use system, user or assistant", line)


def _kind(name: str) -> type:
    """int, float, bool or list for an Options field."""
    annotation = Options.model_fields[name].annotation
    base = next((a for a in get_args(annotation) if a is not type(None)), annotation)
    return list if get_origin(base) is list else base  # type: ignore[return-value]


def _convert(name: str, raw: str, line: int | None) -> int | float | bool | str:
    kind, text = _kind(name), raw.strip()
    if kind is list:
        return raw
    if kind is bool and text.lower() in _TRUE | _FALSE:
        return text.lower() in _TRUE
    if kind is int and _INT.fullmatch(text):
        return int(text)
    if kind is float:
        try:
            return float(text)
        except ValueError:
            pass
    expected = {bool: "true or false", int: "an integer", float: "a number"}.get(kind, str(kind))
    raise ModelfileError(f"parameter '{name}' must be {expected}, not {raw!r}", line)


def _format(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return str(value)


def _bare_ok(s: str) -> bool:
    return bool(s) and s == s.strip() and "\n" not in s and not s.startswith('"')


def _dquote(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _block(s: str) -> str:
    """Triple quotes, which keep the text raw; an escaped "..." when the text itself holds three quotes."""
    return _dquote(s) if '"""' in s else f'"""{s}"""'


def _inline(s: str, *, quoted: bool = False) -> str:
    if _bare_ok(s) and not quoted:
        return s
    return _block(s) if "\n" in s else _dquote(s)
