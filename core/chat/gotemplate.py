"""Go text/template for Ollama chat templates: parse and render them exactly as Ollama does.

Models pulled from Ollama's registry, and Modelfile TEMPLATE lines, carry their chat template in
Go's text/template syntax. This module implements the part of it those templates use -- text and
actions with ``{{-``/``-}}`` trim markers, comments, pipelines, fields, variables, if / else if /
else, range (with else, break, continue), with, Go's builtin functions and Ollama's own (json,
currentDate, yesterdayDate, toTypeScriptType) -- as a lexer, a parser into a small node tree and an
evaluator. ``render`` then reproduces Ollama's ``template.Execute``: the values it passes, how it
collates messages, and how it renders legacy templates that only know .System/.Prompt/.Response.

Templates come from downloaded files: evaluation only reads dict keys, list items and the fields of
the Go-shaped values built here (never Python attributes), and nesting, work and output are bounded.
"""

from __future__ import annotations

import json as _json
import math
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from decimal import Decimal
from functools import lru_cache
from typing import Any, NoReturn

from corral.errors import BadRequest

__all__ = ["GoStruct", "Template", "parse_template", "render", "uses_messages"]

_SPACE = " \t\r\n"
_MAX_DEPTH = 64  # nesting of control structures and parenthesized pipelines
_MAX_STEPS = 2_000_000  # nodes walked plus range iterations, per render
_MAX_TEXT = 16 << 20  # characters in one rendering or one computed string
_MAX_WIDTH = 10_000  # printf width and precision
_KEYWORDS = frozenset({"block", "break", "continue", "define", "else", "end", "if", "nil", "range", "template", "with"})


# ---- lexer ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Tok:
    kind: str  # text open close space field var ident keyword bool number char string raw dot
    val: str  # lparen rparen pipe comma declare assign eof
    pos: int


_NUMBER = re.compile(
    r"[+-]?(?:0[xX][0-9a-fA-F_]+|0[bB][01_]+|0[oO][0-7_]+|(?:\d[\d_]*(?:\.[\d_]*)?|\.\d[\d_]*)(?:[eE][+-]?\d+)?)"
)
_ESCAPE = re.compile(
    r"\\(?:([abfnrtv\\'\"])|x([0-9a-fA-F]{2})|([0-7]{3})|u([0-9a-fA-F]{4})|U([0-9a-fA-F]{8}))|\\|[^\\]+", re.DOTALL
)
_SIMPLE_ESCAPES = {"a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v"}
_PUNCT = {"|": "pipe", "(": "lparen", ")": "rparen", ",": "comma", "=": "assign"}
_QUOTES = {'"': "string", "`": "raw", "'": "char"}


def _syntax(src: str, pos: int, message: str) -> NoReturn:
    raise BadRequest(f"template: line {src.count(chr(10), 0, pos) + 1}: {message}")


def _alnum(c: str) -> bool:
    return c == "_" or c.isalnum()


def _right_delim(src: str, i: int) -> tuple[int, bool]:
    """Length of the right delimiter at ``i`` (0 if none) and whether it carries a trim marker."""
    if src.startswith("}}", i):
        return 2, False
    if i < len(src) and src[i] in _SPACE and src.startswith("-}}", i + 1):
        return 4, True
    return 0, False


def _lex(src: str) -> list[_Tok]:
    toks: list[_Tok] = []
    pos, trim = 0, False
    while True:
        start = src.find("{{", pos)
        text = src[pos:] if start < 0 else src[pos:start]
        left_trim = start >= 0 and src.startswith("-", start + 2) and len(src) > start + 3 and src[start + 3] in _SPACE
        if trim:
            text = text.lstrip(_SPACE)
        if left_trim:
            text = text.rstrip(_SPACE)
        if text:
            toks.append(_Tok("text", text, pos))
        if start < 0:
            break
        i = start + (4 if left_trim else 2)
        if src.startswith("/*", i):  # a comment fills the whole action
            close = src.find("*/", i + 2)
            if close < 0:
                _syntax(src, start, "unclosed comment")
            width, trim = _right_delim(src, close + 2)
            if not width:
                _syntax(src, start, "comment ends before closing delimiter")
            pos = close + 2 + width
            continue
        toks.append(_Tok("open", "{{", start))
        pos, trim = _lex_action(src, i, start, toks)
    toks.append(_Tok("eof", "", len(src)))
    return toks


def _lex_action(src: str, i: int, start: int, toks: list[_Tok]) -> tuple[int, bool]:
    n = len(src)
    while True:
        width, trim = _right_delim(src, i)
        if width:
            toks.append(_Tok("close", "}}", i))
            return i + width, trim
        if i >= n:
            _syntax(src, start, "unclosed action")
        c, j = src[i], i + 1
        if c in _SPACE:
            while j < n and src[j] in _SPACE:
                j += 1
            if src.startswith("-}}", j):  # "  -}}": the last space belongs to the trim marker
                toks.append(_Tok("close", "}}", j - 1))
                return j + 3, True
            toks.append(_Tok("space", src[i:j], i))
        elif c in _PUNCT:
            toks.append(_Tok(_PUNCT[c], c, i))
        elif c == ":":
            if not src.startswith(":=", i):
                _syntax(src, i, "expected :=")
            toks.append(_Tok("declare", ":=", i))
            j = i + 2
        elif c in _QUOTES:
            j = _scan_quoted(src, i)
            toks.append(_Tok(_QUOTES[c], src[i:j], i))
        elif c == "$" or (c == "." and not src[j : j + 1].isdigit()):
            while j < n and _alnum(src[j]):
                j += 1
            kind = "var" if c == "$" else "field" if j > i + 1 else "dot"
            toks.append(_Tok(kind, src[i:j], i))
        elif c.isdigit() or c in "+-.":
            m = _NUMBER.match(src, i)
            if not m or (m.end() < n and _alnum(src[m.end()])):
                _syntax(src, i, f"bad number syntax: {src[i : (m.end() if m else i) + 1]!r}")
            toks.append(_Tok("number", m.group(), i))
            j = m.end()
        elif _alnum(c):
            while j < n and _alnum(src[j]):
                j += 1
            word = src[i:j]
            kind = "keyword" if word in _KEYWORDS else "bool" if word in ("true", "false") else "ident"
            toks.append(_Tok(kind, word, i))
        else:
            _syntax(src, i, f"unexpected {c!r} in action")
        i = j


def _scan_quoted(src: str, i: int) -> int:
    quote, j, n = src[i], i + 1, len(src)
    while j < n and src[j] != quote:
        if quote != "`":
            if src[j] == "\\":
                j += 1
            if j >= n or src[j] == "\n":
                break
        j += 1
    if j >= n or src[j] != quote:
        _syntax(src, i, "unterminated raw quoted string" if quote == "`" else "unterminated quoted string")
    return j + 1


def _unquote(body: str, src: str, pos: int) -> str:
    """Go's escapes; \\x and octal escapes are bytes, as in Go."""
    out = bytearray()
    for m in _ESCAPE.finditer(body):
        simple, hexa, octal, u4, u8 = m.groups()
        if simple:
            out += _SIMPLE_ESCAPES.get(simple, simple).encode()
        elif hexa or octal:
            value = int(hexa, 16) if hexa else int(octal, 8)
            if value > 255:
                _syntax(src, pos, "invalid octal escape")
            out.append(value)
        elif u4 or u8:
            code = int(u4 or u8, 16)
            if code > 0x10FFFF or 0xD800 <= code < 0xE000:
                _syntax(src, pos, "invalid unicode escape")
            out += chr(code).encode()
        elif m.group() == "\\":
            _syntax(src, pos, "invalid escape in quoted string")
        else:
            out += m.group().encode("utf-8", "surrogatepass")
    return out.decode("utf-8", "replace")


# ---- node tree --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Field:
    names: tuple[str, ...]  # .A.B


@dataclass(frozen=True, slots=True)
class Variable:
    name: str  # "$" or "$x"
    names: tuple[str, ...] = ()  # fields after it: $.A.B


@dataclass(frozen=True, slots=True)
class Dot:
    pass


@dataclass(frozen=True, slots=True)
class Nil:
    pass


@dataclass(frozen=True, slots=True)
class Const:
    value: str | int | float | bool


@dataclass(frozen=True, slots=True)
class Function:
    name: str


@dataclass(frozen=True, slots=True)
class Chain:
    node: Arg  # (pipeline).Field
    names: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Pipe:
    decl: tuple[str, ...]  # variables it declares (:=) or assigns (=)
    is_assign: bool
    cmds: tuple[tuple[Arg, ...], ...]  # commands joined by |, each a tuple of operands


@dataclass(frozen=True, slots=True)
class Text:
    text: str


@dataclass(frozen=True, slots=True)
class Action:
    pipe: Pipe


@dataclass(frozen=True, slots=True)
class Control:
    kind: str  # if, range, with
    pipe: Pipe
    body: tuple[Node, ...]
    orelse: tuple[Node, ...] | None


@dataclass(frozen=True, slots=True)
class Jump:
    kind: str  # break, continue


Arg = Field | Variable | Dot | Nil | Const | Function | Chain | Pipe
Node = Text | Action | Control | Jump
_RESPONSE = Action(Pipe((), False, ((Field(("Response",)),),)))


@dataclass(frozen=True, slots=True)
class Template:
    """A parsed template as Ollama executes it.

    ``nodes`` has ``{{ .Response }}`` appended when the source names neither .Messages nor .Response
    (Ollama's Parse does that); ``legacy_tail`` is the tree Ollama runs for the last turn of a legacy
    template: everything after the first .Response field cut away. ``identifiers`` are the
    lower-cased field and variable names the template mentions (Ollama's ``Vars``)."""

    source: str
    nodes: tuple[Node, ...]
    legacy_tail: tuple[Node, ...]
    identifiers: frozenset[str]

    @property
    def uses_messages(self) -> bool:
        return "messages" in self.identifiers


# ---- parser -----------------------------------------------------------------------------------


def _describe(tok: _Tok) -> str:
    return {"eof": "EOF", "close": "}}", "open": "{{"}.get(tok.kind, repr(tok.val))


class _Parser:
    def __init__(self, src: str) -> None:
        self.src = src
        self.toks = _lex(src)
        self.i = 0
        self.vars = ["$"]  # variables in scope, as Go's parser tracks them
        self.depth = 0
        self.range_depth = 0

    def error(self, tok: _Tok, message: str) -> NoReturn:
        _syntax(self.src, tok.pos, message)

    def next(self) -> _Tok:
        tok = self.toks[min(self.i, len(self.toks) - 1)]
        self.i += 1
        return tok

    def next_non_space(self) -> _Tok:
        tok = self.next()
        while tok.kind == "space":
            tok = self.next()
        return tok

    def peek(self) -> _Tok:
        return self.toks[min(self.i, len(self.toks) - 1)]

    def peek_non_space(self) -> _Tok:
        tok = self.next_non_space()
        self.i -= 1
        return tok

    def expect_close(self, context: str) -> None:
        tok = self.next_non_space()
        if tok.kind != "close":
            self.error(tok, f"unexpected {_describe(tok)} in {context}")

    def nest(self, tok: _Tok, delta: int) -> None:
        self.depth += delta
        if self.depth > _MAX_DEPTH:
            self.error(tok, "template nested too deeply")

    def parse_list(self) -> tuple[list[Node], _Tok | None]:
        """Nodes up to EOF (None) or up to an {{end}} / {{else}} keyword, returned with its action open."""
        nodes: list[Node] = []
        while True:
            tok = self.next()
            if tok.kind == "eof":
                return nodes, None
            if tok.kind == "text":
                nodes.append(Text(tok.val))
                continue
            key = self.next_non_space()
            word = key.val if key.kind == "keyword" else ""
            if word in ("end", "else"):
                return nodes, key
            if word in ("if", "range", "with"):
                nodes.append(self.control(key))
            elif word in ("break", "continue"):
                if not self.range_depth:
                    self.error(key, f"{{{{{word}}}}} outside {{{{range}}}}")
                self.expect_close(word)
                nodes.append(Jump(word))
            elif word in ("define", "template", "block"):
                self.error(key, f"{{{{{word}}}}} is not supported")
            else:
                self.i -= 1
                nodes.append(Action(self.pipeline("command", "close")))

    def control(self, key: _Tok) -> Control:
        kind, mark = key.val, len(self.vars)
        self.nest(key, 1)
        pipe = self.pipeline(kind, "close")
        self.range_depth += kind == "range"
        body, end = self.parse_list()
        self.range_depth -= kind == "range"
        orelse: tuple[Node, ...] | None = None
        if end is not None and end.val == "else":
            after = self.peek_non_space()
            if kind != "range" and after.kind == "keyword" and after.val == kind:  # else if / else with
                self.next_non_space()
                orelse, end = (self.control(after),), None
            else:
                self.expect_close("else")
                rest, end = self.parse_list()
                orelse = tuple(rest)
                if end is not None and end.val == "else":
                    self.error(end, "expected {{end}}; found {{else}}")
                if end is None:
                    self.error(key, f"unexpected EOF: missing {{{{end}}}} for {{{{{kind}}}}}")
                self.expect_close("end")
        elif end is None:
            self.error(key, f"unexpected EOF: missing {{{{end}}}} for {{{{{kind}}}}}")
        else:
            self.expect_close("end")
        del self.vars[mark:]
        self.nest(key, -1)
        return Control(kind, pipe, tuple(body), orelse)

    def pipeline(self, context: str, end: str) -> Pipe:
        decl: list[str] = []
        is_assign = False
        while (var := self.peek_non_space()).kind == "var":
            at = self.i
            self.next()
            after = self.peek_non_space()
            if after.kind in ("declare", "assign"):
                self.next_non_space()
                is_assign = after.kind == "assign"
                decl.append(var.val)
                self.vars.append(var.val)
                break
            if after.kind != "comma":
                self.i = at  # an operand, not a declaration
                break
            self.next_non_space()
            decl.append(var.val)
            self.vars.append(var.val)
            if context != "range" or len(decl) > 1:
                self.error(var, f"too many declarations in {context}")
            if self.peek_non_space().kind not in ("var", "close", "rparen"):
                self.error(var, "range can only initialize variables")
        cmds: list[tuple[Arg, ...]] = []
        while True:
            tok = self.next_non_space()
            if tok.kind == end:
                if not cmds:
                    self.error(tok, f"missing value for {context}")
                for stage, cmd in enumerate(cmds[1:], 2):
                    if isinstance(cmd[0], (Const, Dot, Nil)):
                        self.error(tok, f"non executable command in pipeline stage {stage}")
                return Pipe(tuple(decl), is_assign, tuple(cmds))
            if tok.kind in ("bool", "char", "dot", "field", "ident", "number", "raw", "string", "var", "lparen") or (
                tok.kind == "keyword" and tok.val == "nil"
            ):
                self.i -= 1
                cmds.append(self.command())
            else:
                self.error(tok, f"unexpected {_describe(tok)} in {context}")

    def command(self) -> tuple[Arg, ...]:
        args: list[Arg] = []
        while True:
            self.peek_non_space()
            if (arg := self.operand()) is not None:
                args.append(arg)
            tok = self.next()
            if tok.kind == "space":
                continue
            if tok.kind in ("close", "rparen"):
                self.i -= 1
            elif tok.kind != "pipe":
                self.error(tok, f"unexpected {_describe(tok)} in operand")
            if not args:
                self.error(tok, "empty command")
            return tuple(args)

    def operand(self) -> Arg | None:
        node = self.term()
        if node is None or self.peek().kind != "field":
            return node
        names: list[str] = []
        while self.peek().kind == "field":
            names.append(self.next().val[1:])
        if isinstance(node, Field):
            return Field(node.names + tuple(names))
        if isinstance(node, Variable):
            return Variable(node.name, tuple(names))
        if isinstance(node, (Const, Nil, Dot)):
            self.error(self.toks[self.i - 1], "unexpected . after term")
        return Chain(node, tuple(names))

    def term(self) -> Arg | None:
        tok = self.next_non_space()
        kind, val = tok.kind, tok.val
        if kind == "ident":
            if val not in _FUNCTION_NAMES:
                self.error(tok, f'function "{val}" not defined')
            return Function(val)
        if kind == "var":
            if val not in self.vars:
                self.error(tok, f'undefined variable "{val}"')
            return Variable(val)
        if kind == "field":
            return Field((val[1:],))
        if kind == "dot":
            return Dot()
        if kind == "keyword" and val == "nil":
            return Nil()
        if kind == "bool":
            return Const(val == "true")
        if kind == "number":
            return Const(self.number(tok))
        if kind in ("string", "raw", "char"):
            text = val[1:-1] if kind == "raw" else _unquote(val[1:-1], self.src, tok.pos)
            if kind != "char":
                return Const(text)
            if len(text) != 1:
                self.error(tok, f"malformed character constant: {val}")
            return Const(ord(text))
        if kind == "lparen":
            self.nest(tok, 1)
            pipe = self.pipeline("parenthesized pipeline", "rparen")
            self.nest(tok, -1)
            return pipe
        self.i -= 1
        return None

    def number(self, tok: _Tok) -> int | float:
        text = tok.val.replace("_", "")
        body = text.lstrip("+-")
        try:
            if body[:2].lower() in ("0x", "0b", "0o"):
                value: int | float = int(body, 0)
            elif any(c in body for c in ".eE"):
                value = float(body)  # Go: a constant with . or an exponent is a float64
            else:
                value = int(body, 8) if len(body) > 1 and body[0] == "0" else int(body)
        except ValueError:
            self.error(tok, f"bad number syntax: {tok.val!r}")
        return -value if text.startswith("-") else value


def _pipe_identifiers(pipe: Pipe) -> Iterator[str]:
    for cmd in pipe.cmds:
        for arg in cmd:
            if isinstance(arg, Field):
                yield from arg.names
            elif isinstance(arg, Variable):
                yield arg.name
                yield from arg.names
            elif isinstance(arg, Pipe):
                yield from _pipe_identifiers(arg)


def _identifiers(nodes: Iterable[Node]) -> Iterator[str]:
    """What Ollama's Identifiers walk finds: field and variable names, not declarations or chains."""
    for node in nodes:
        if isinstance(node, Action):
            yield from _pipe_identifiers(node.pipe)
        elif isinstance(node, Control):
            yield from _pipe_identifiers(node.pipe)
            yield from _identifiers(node.body)
            yield from _identifiers(node.orelse or ())


def _cut_after_response(nodes: tuple[Node, ...]) -> tuple[Node, ...]:
    """Ollama's deleteNode walk: keep the first field naming Response and drop everything after it.

    Like Ollama it does not look into if/range/with pipelines, and it drops operands that follow
    the field inside the same action. (Where Ollama would panic -- an else branch after a cut inside
    the branch -- the else branch is dropped.)"""
    cut = False

    def walk_list(items: tuple[Node, ...]) -> tuple[Node, ...] | None:
        if cut:
            return None
        kept = [m for n in items if (m := walk_node(n)) is not None]
        return tuple(kept)

    def walk_node(node: Node) -> Node | None:
        if cut:
            return None
        if isinstance(node, Control):
            body = walk_list(node.body) or ()
            orelse = walk_list(node.orelse) if node.orelse is not None else None
            return Control(node.kind, node.pipe, body, orelse)
        if isinstance(node, Action):
            pipe = walk_pipe(node.pipe)
            return None if pipe is None else Action(pipe)
        return node

    def walk_pipe(pipe: Pipe) -> Pipe | None:
        if cut:
            return None
        cmds: list[tuple[Arg, ...]] = []
        for cmd in pipe.cmds:
            args = tuple(a for arg in cmd if (a := walk_arg(arg)) is not None)
            if not args:
                return None
            cmds.append(args)
        return Pipe(pipe.decl, pipe.is_assign, tuple(cmds))

    def walk_arg(arg: Arg) -> Arg | None:
        nonlocal cut
        if isinstance(arg, Field) and "Response" in arg.names:
            cut = True
            return arg
        if cut:
            return None
        return walk_pipe(arg) if isinstance(arg, Pipe) else arg

    return walk_list(nodes) or ()


@lru_cache(maxsize=64)
def parse_template(template: str) -> Template:
    """Parse Go template source; raise BadRequest with a one-line message if it is malformed."""
    parser = _Parser(template)
    nodes, end = parser.parse_list()
    if end is not None:
        parser.error(end, f"unexpected {{{{{end.val}}}}}")
    identifiers = frozenset(name.lower() for name in _identifiers(nodes))
    tree = tuple(nodes)
    if "messages" not in identifiers and "response" not in identifiers:
        tree += (_RESPONSE,)
    return Template(template, tree, _cut_after_response(tree), identifiers)


def uses_messages(template: str) -> bool:
    """Whether the template reads .Messages (then Ollama hands it the whole conversation)."""
    return parse_template(template).uses_messages


# ---- Go values --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, eq=False)
class GoStruct:
    """A Go struct as a template sees it: fields by Go name, in order, with Go's print and JSON forms."""

    type_name: str
    fields: dict[str, Any]
    json_tags: dict[str, tuple[str, bool]] | None = None  # field -> (JSON key, omitempty); None: untagged
    pointer: bool = False  # printed as &{...}
    methods: dict[str, Callable[[], Any]] = field(default_factory=dict)
    stringer: bool = False  # has a String() method that returns its JSON


class _GoSlice(list[Any]):
    """Ollama's templateTools: prints as its JSON, ``null`` when nil."""

    __slots__ = ("nil",)

    def __init__(self, items: Iterable[Any] = (), nil: bool = False) -> None:
        super().__init__(items)
        self.nil = nil


class _GoMap(dict[str, Any]):
    """Ollama's templateArgs / templateProperties: a map that prints as its JSON. ``ordered`` keeps
    insertion order in JSON (api.ToolPropertiesMap is an ordered map; plain Go maps sort keys)."""

    __slots__ = ("ordered",)

    def __init__(self, items: Mapping[str, Any] | None = None, ordered: bool = False) -> None:
        super().__init__(items or {})
        self.ordered = ordered


class _PropertyType(list[str]):
    """api.PropertyType: one JSON type or several; prints as the type, marshals as a string if single."""


class _FuncError(Exception):
    pass


class _JSONError(Exception):
    pass


def _fail(message: str) -> NoReturn:
    raise BadRequest(f"template: {message}")


def _truth(value: Any) -> bool:
    if isinstance(value, GoStruct):
        return True
    return bool(value) if isinstance(value, (str, bool, int, float, list, tuple, dict)) else value is not None


def _go_type(value: Any) -> str:
    if isinstance(value, GoStruct):
        return ("*" if value.pointer else "") + value.type_name
    for kind, name in (
        (bool, "bool"),
        (int, "int"),
        (float, "float64"),
        (str, "string"),
        (_PropertyType, "api.PropertyType"),
    ):
        if isinstance(value, kind):
            return name
    if isinstance(value, (list, tuple)):
        return "[]interface {}"
    return "map[string]interface {}" if isinstance(value, dict) else "<nil>"


def _sorted_keys(mapping: Mapping[Any, Any]) -> list[Any]:
    return sorted(mapping, key=lambda k: (0, k, "") if isinstance(k, (int, float)) else (1, 0, str(k)))


def _shortest_digits(f: float) -> tuple[str, int]:
    """Shortest round-trip decimal digits of ``f`` > 0 and the decimal point's position in them."""
    _, digit_tuple, exp = Decimal(repr(f)).as_tuple()
    digits = "".join(map(str, digit_tuple))
    stripped = digits.rstrip("0")
    return stripped, len(stripped) + int(exp) + len(digits) - len(stripped)


def _float_text(f: float, json_mode: bool = False) -> str:
    """Go's %v of a float64 (strconv 'g', shortest), or encoding/json's form with ``json_mode``."""
    if not math.isfinite(f):
        if json_mode:
            raise _JSONError(f"unsupported value: {f}")
        return "NaN" if math.isnan(f) else "+Inf" if f > 0 else "-Inf"
    sign = "-" if math.copysign(1.0, f) < 0 else ""
    if f == 0:
        return sign + "0"
    digits, point = _shortest_digits(abs(f))
    exp = point - 1
    if (exp < -6 or exp >= 21) if json_mode else (exp < -4 or exp >= 6):
        mantissa = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
        width = 1 if json_mode and exp < 0 else 2  # json trims e-07 to e-7
        return f"{sign}{mantissa}e{'-' if exp < 0 else '+'}{abs(exp):0{width}d}"
    if point <= 0:
        return f"{sign}0.{'0' * -point}{digits}"
    if point >= len(digits):
        return sign + digits + "0" * (point - len(digits))
    return f"{sign}{digits[:point]}.{digits[point:]}"


def _fmt_v(value: Any) -> str:
    """Go's fmt %v, with Ollama's String() methods."""
    if value is None:
        return "<nil>"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, str)):
        return str(value)
    if isinstance(value, float):
        return _float_text(value)
    if isinstance(value, _PropertyType):
        return value[0] if len(value) == 1 else "" if not value else "[" + " ".join(value) + "]"
    if isinstance(value, (_GoSlice, _GoMap)):
        return "null" if isinstance(value, _GoSlice) and value.nil else _go_json(value)
    if isinstance(value, (list, tuple)):
        return "[" + " ".join(_fmt_v(v) for v in value) + "]"
    if isinstance(value, dict):
        return "map[" + " ".join(f"{_fmt_v(k)}:{_fmt_v(value[k])}" for k in _sorted_keys(value)) + "]"
    if isinstance(value, GoStruct):
        if value.stringer:
            return _go_json(value)
        return ("&" if value.pointer else "") + "{" + " ".join(_fmt_v(v) for v in value.fields.values()) + "}"
    return "<nil>"


_JSON_ESCAPES = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\b": "\\b", "\f": "\\f"}
_JSON_SPECIAL = re.compile('["\\\\\x00-\x1f<>&\u2028\u2029\ud800-\udfff]')


def _json_string(text: str) -> str:
    def escape(m: re.Match[str]) -> str:
        c = m.group()
        return _JSON_ESCAPES.get(c) or ("\\ufffd" if "\ud800" <= c <= "\udfff" else f"\\u{ord(c):04x}")

    return '"' + _JSON_SPECIAL.sub(escape, text) + '"'


def _json_empty(value: Any) -> bool:
    return value is None or (not isinstance(value, GoStruct) and not _truth(value))


def _go_json(value: Any) -> str:
    """encoding/json.Marshal: sorted map keys, HTML-safe escapes, Go's float format, struct tags."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return _float_text(value, json_mode=True)
    if isinstance(value, str):
        return _json_string(value)
    if isinstance(value, _PropertyType) and len(value) == 1:
        return _json_string(value[0])
    if isinstance(value, _GoSlice) and value.nil:
        return "null"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_go_json(v) for v in value) + "]"
    if isinstance(value, dict):
        keys = list(value) if isinstance(value, _GoMap) and value.ordered else _sorted_keys(value)
        return "{" + ",".join(f"{_json_string(str(k))}:{_go_json(value[k])}" for k in keys) + "}"
    if isinstance(value, GoStruct):
        parts = []
        for name, item in value.fields.items():
            key, omitempty = value.json_tags.get(name, (name, False)) if value.json_tags else (name, False)
            if not (omitempty and _json_empty(item)):
                parts.append(f"{_json_string(key)}:{_go_json(item)}")
        return "{" + ",".join(parts) + "}"
    raise _JSONError(f"unsupported type: {type(value).__name__}")


def _go_quote(text: str) -> str:
    """strconv.Quote."""
    out = ['"']
    for c in text:
        code = ord(c)
        if c in '"\\':
            out.append("\\" + c)
        elif c.isprintable():
            out.append(c)
        elif c in "\a\b\f\n\r\t\v":
            out.append("\\" + "abfnrtv"["\a\b\f\n\r\t\v".index(c)])
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\x{code:02x}")
        elif 0xD800 <= code < 0xE000:
            out.append("\\ufffd")
        else:
            out.append(f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}")
    return "".join(out) + '"'


# ---- functions --------------------------------------------------------------------------------


def _kind(value: Any) -> str | None:
    """Go's basicKind for comparisons; None for nil and for non-basic values."""
    for kind, name in ((bool, "bool"), (int, "int"), (float, "float"), (str, "string")):
        if isinstance(value, kind):
            return name
    return None


def _eq(first: Any, *others: Any) -> bool:
    if not others:
        raise _FuncError("missing argument for comparison")
    k1 = _kind(first)
    for other in others:
        k2 = _kind(other)
        if k1 != k2:
            if first is not None and other is not None:
                raise _FuncError("incompatible types for comparison")
        elif k1 is not None:
            if first == other:
                return True
        elif first is None or other is None:
            if first is None and other is None:
                return True
        elif isinstance(first, (list, tuple, dict)) or isinstance(other, (list, tuple, dict)):
            raise _FuncError(f"non-comparable types {_go_type(first)}, {_go_type(other)}")
        elif first is other:
            return True
    return False


def _lt(a: Any, b: Any) -> bool:
    k1, k2 = _kind(a), _kind(b)
    if k1 is None or k2 is None or k1 == "bool":
        raise _FuncError("invalid type for comparison")
    if k1 != k2:
        raise _FuncError("incompatible types for comparison")
    return bool(a < b)


def _len(value: Any) -> int:
    if isinstance(value, str):
        return len(value.encode("utf-8", "surrogatepass"))
    if isinstance(value, (list, tuple, dict)):
        return len(value)
    raise _FuncError("len of nil pointer" if value is None else f"len of type {_go_type(value)}")


def _position(index: Any, cap: int) -> int:
    if index is None:
        raise _FuncError("cannot index slice/array with nil")
    if isinstance(index, bool) or not isinstance(index, int):
        raise _FuncError(f"cannot index slice/array with type {_go_type(index)}")
    if index < 0 or index > cap:
        raise _FuncError(f"index out of range: {index}")
    return index


def _index(item: Any, *indexes: Any) -> Any:
    if item is None:
        raise _FuncError("index of untyped nil")
    for index in indexes:
        if item is None:
            raise _FuncError("index of nil pointer")
        if isinstance(item, (str, list, tuple)):
            seq = item.encode("utf-8", "surrogatepass") if isinstance(item, str) else item
            if (i := _position(index, len(seq))) == len(seq):
                raise _FuncError(f"index out of range: {i}")
            item = seq[i]
        elif isinstance(item, dict):
            if not isinstance(index, str):
                raise _FuncError(f"value has type {_go_type(index)}; should be string")
            item = item.get(index)
        else:
            raise _FuncError(f"can't index item of type {_go_type(item)}")
    return item


def _slice(item: Any, *indexes: Any) -> Any:
    if item is None:
        raise _FuncError("slice of untyped nil")
    if len(indexes) > 3 or (isinstance(item, str) and len(indexes) == 3):
        raise _FuncError(f"too many slice indexes: {len(indexes)}")
    if not isinstance(item, (str, list, tuple)):
        raise _FuncError(f"can't slice item of type {_go_type(item)}")
    seq = item.encode("utf-8", "surrogatepass") if isinstance(item, str) else item
    bounds = [0, len(seq), len(seq)]
    for k, index in enumerate(indexes):
        bounds[k] = _position(index, len(seq))
    if bounds[0] > bounds[1] or (len(indexes) == 3 and bounds[1] > bounds[2]):
        raise _FuncError(f"invalid slice index: {bounds[0]} > {bounds[1]}")
    part = seq[bounds[0] : bounds[1]]
    return part.decode("utf-8", "replace") if isinstance(part, bytes) else list(part)


def _checked(text: str) -> str:
    if len(text) > _MAX_TEXT:
        raise _FuncError("result too large")
    return text


def _sprint(*args: Any) -> str:
    parts = []
    for k, arg in enumerate(args):
        if k and not isinstance(arg, str) and not isinstance(args[k - 1], str):
            parts.append(" ")
        parts.append(_fmt_v(arg))
    return _checked("".join(parts))


_VERB = re.compile(r"%([-+# 0]*)(\d*)(?:\.(\d*))?(.?)", re.DOTALL)


def _format_one(arg: Any, flags: str, width: int | None, prec: int | None, verb: str) -> str:
    kind = _kind(arg)
    if verb in "dxXobc" and kind == "int" or verb in "fFeEgG" and kind == "float":
        if verb == "c":
            text = chr(arg) if 0 <= arg <= 0x10FFFF else "\ufffd"
        elif verb in "gG" and prec is None:
            text = ("+" if "+" in flags and arg >= 0 else "") + _float_text(arg)
        else:
            spec = ("+" if "+" in flags else " " if " " in flags else "") + ("#" if "#" in flags else "")
            spec += ("0" if "0" in flags and "-" not in flags else "") + (str(width) if width else "")
            spec += f".{prec}" if prec is not None and kind == "float" else ""
            text = format(arg, spec + verb)
    elif verb == "v":
        text = _fmt_v(arg)
    elif verb == "s" and arg is not None and kind in ("string", None):
        text = _fmt_v(arg)[:prec] if prec is not None else _fmt_v(arg)
    elif verb == "q" and kind in ("string", "int"):
        text = _go_quote(arg) if kind == "string" else "'" + _go_quote(chr(arg))[1:-1].replace("'", "\\'") + "'"
    elif verb == "t" and kind == "bool":
        text = _fmt_v(arg)
    elif verb in "xX" and kind == "string":
        text = arg.encode("utf-8", "surrogatepass").hex()
        text = text.upper() if verb == "X" else text
    else:
        return f"%!{verb}(<nil>)" if arg is None else f"%!{verb}({_go_type(arg)}={_fmt_v(arg)})"
    if width and len(text) < width:
        text = text.ljust(width) if "-" in flags else text.rjust(width)
    return text


def _sprintf(fmt: Any, *args: Any) -> str:
    """fmt.Sprintf for the verbs templates use: %v %s %q %d %t %f %e %g %x %c and %%, with flags and width."""
    if not isinstance(fmt, str):
        raise _FuncError(f"wrong type for value; expected string; got {_go_type(fmt)}")
    out: list[str] = []
    pos, used = 0, 0
    while (k := fmt.find("%", pos)) >= 0:
        out.append(fmt[pos:k])
        m = _VERB.match(fmt, k)
        assert m is not None
        flags, width, prec, verb = m.groups()
        pos = m.end()
        if int(width or 0) > _MAX_WIDTH or int(prec or 0) > _MAX_WIDTH:
            raise _FuncError("printf width or precision too large")
        if verb == "%":
            out.append("%")
        elif not verb:
            out.append("%!(NOVERB)")
        elif used >= len(args):
            out.append(f"%!{verb}(MISSING)")
        else:
            out.append(
                _format_one(
                    args[used], flags, int(width) if width else None, None if prec is None else int(prec or 0), verb
                )
            )
            used += 1
    out.append(fmt[pos:])
    if used < len(args):
        out.append("%!(EXTRA " + ", ".join(f"{_go_type(a)}={_fmt_v(a)}" for a in args[used:]) + ")")
    return _checked("".join(out))


def _json_func(value: Any) -> str:
    try:
        return _checked(_go_json(value))
    except _JSONError:
        return ""  # Ollama ignores json.Marshal's error and prints the empty result


def _ts_type(prop: GoStruct) -> str:
    """api.ToolProperty.ToTypeScriptType."""
    if prop.fields["AnyOf"]:
        return " | ".join(_ts_type(p) for p in prop.fields["AnyOf"])
    names = {
        "string": "string",
        "number": "number",
        "integer": "number",
        "boolean": "boolean",
        "array": "any[]",
        "object": "Record<string, any>",
        "null": "null",
    }
    return " | ".join(names.get(t, "any") for t in prop.fields["Type"]) or "any"


def _to_typescript_type(value: Any) -> str:
    return _ts_type(value) if isinstance(value, GoStruct) and value.type_name == "api.ToolProperty" else "any"


# name -> (function, fewest arguments, most arguments or None); "and"/"or" are evaluated lazily.
_FUNCTIONS: dict[str, tuple[Callable[..., Any], int, int | None]] = {
    "not": (lambda v: not _truth(v), 1, 1),
    "len": (_len, 1, 1),
    "index": (_index, 1, None),
    "slice": (_slice, 1, None),
    "eq": (_eq, 1, None),
    "ne": (lambda a, b: not _eq(a, b), 2, 2),
    "lt": (_lt, 2, 2),
    "le": (lambda a, b: _lt(a, b) or _eq(a, b), 2, 2),
    "gt": (lambda a, b: not (_lt(a, b) or _eq(a, b)), 2, 2),
    "ge": (lambda a, b: not _lt(a, b), 2, 2),
    "print": (_sprint, 0, None),
    "println": (lambda *a: _checked(" ".join(_fmt_v(v) for v in a) + "\n"), 0, None),
    "printf": (_sprintf, 1, None),
    "json": (_json_func, 1, 1),
    "currentDate": (lambda *_: date.today().isoformat(), 0, None),
    "yesterdayDate": (lambda *_: (date.today() - timedelta(days=1)).isoformat(), 0, None),
    "toTypeScriptType": (_to_typescript_type, 1, 1),
}
_FUNCTION_NAMES = frozenset(_FUNCTIONS) | {"and", "or"}


# ---- evaluator --------------------------------------------------------------------------------


class _Break(Exception):
    pass


class _Continue(Exception):
    pass


_NO_FINAL: Any = object()  # a command that receives no value from a previous pipeline stage


def _field(receiver: Any, name: str, has_args: bool) -> Any:
    if receiver is None:
        return None  # Go gives the zero value (or, on a nil interface, an error); Ollama's data has none
    if isinstance(receiver, GoStruct):
        if name in receiver.methods:
            if has_args:
                _fail(f"wrong number of args for {name}: want 0")
            return receiver.methods[name]()
        if has_args:
            _fail(f"{name} has arguments but cannot be invoked as function")
        return receiver.fields.get(name)
    if isinstance(receiver, dict):
        if has_args:
            _fail(f"{name} is not a method but has arguments")
        return receiver.get(name)
    _fail(f"can't evaluate field {name} in type {_go_type(receiver)}")


def _range_items(value: Any, declared: int) -> Iterable[tuple[Any, Any]]:
    if value is None:
        return ()
    if isinstance(value, int) and not isinstance(value, bool):
        if declared > 1:
            _fail(f"can't use {value} to iterate over more than one variable")
        return ((i, i) for i in range(value))
    if isinstance(value, (list, tuple)):
        return enumerate(value)
    if isinstance(value, dict):
        return [(k, value[k]) for k in _sorted_keys(value)]
    _fail(f"range can't iterate over {_fmt_v(value)}")


class _Exec:
    def __init__(self, root: Any) -> None:
        self.vars: list[list[Any]] = [["$", root]]  # Go's variable stack: [name, value]
        self.out: list[str] = []
        self.size = 0
        self.steps = 0

    def tick(self) -> None:
        self.steps += 1
        if self.steps > _MAX_STEPS:
            _fail("execution took too many steps")

    def emit(self, text: str) -> None:
        self.size += len(text)
        if self.size > _MAX_TEXT:
            _fail("output too large")
        self.out.append(text)

    def walk(self, dot: Any, nodes: tuple[Node, ...]) -> None:
        for node in nodes:
            self.tick()
            if isinstance(node, Text):
                self.emit(node.text)
            elif isinstance(node, Action):
                value = self.pipeline(dot, node.pipe)
                if not node.pipe.decl:  # Go prints "<no value>" for a missing key; Ollama's users see ""
                    self.emit("" if value is None else _fmt_v(value))
            elif isinstance(node, Control):
                self.range(dot, node) if node.kind == "range" else self.branch(dot, node)
            else:
                raise _Break() if node.kind == "break" else _Continue()

    def branch(self, dot: Any, node: Control) -> None:
        mark = len(self.vars)
        try:
            value = self.pipeline(dot, node.pipe)
            if _truth(value):
                self.walk(value if node.kind == "with" else dot, node.body)
            elif node.orelse is not None:
                self.walk(dot, node.orelse)
        finally:
            del self.vars[mark:]

    def range(self, dot: Any, node: Control) -> None:
        mark = len(self.vars)
        try:
            decl, assign = node.pipe.decl, node.pipe.is_assign
            items = _range_items(self.pipeline(dot, node.pipe), len(decl))
            inner, ran = len(self.vars), False
            try:
                for key, elem in items:
                    self.tick()
                    ran = True
                    if decl:  # one variable gets the element; two get index/key and element
                        values = (key, elem) if len(decl) > 1 else (elem,)
                        for k, (name, value) in enumerate(zip(decl, values)):
                            if assign:
                                self.set_var(name, value)
                            else:
                                self.vars[inner - len(decl) + k][1] = value
                    try:
                        self.walk(elem, node.body)
                    except _Continue:
                        pass
                    finally:
                        del self.vars[inner:]
            except _Break:
                return
            if not ran and node.orelse is not None:
                self.walk(dot, node.orelse)
        finally:
            del self.vars[mark:]

    def get_var(self, name: str) -> Any:
        for entry in reversed(self.vars):
            if entry[0] == name:
                return entry[1]
        _fail(f"undefined variable: {name}")

    def set_var(self, name: str, value: Any) -> None:
        for entry in reversed(self.vars):
            if entry[0] == name:
                entry[1] = value
                return
        _fail(f"undefined variable: {name}")

    def pipeline(self, dot: Any, pipe: Pipe) -> Any:
        value = _NO_FINAL
        for cmd in pipe.cmds:
            value = self.command(dot, cmd, value)
        for name in pipe.decl:
            if pipe.is_assign:
                self.set_var(name, value)
            else:
                self.vars.append([name, value])
        return value

    def command(self, dot: Any, cmd: tuple[Arg, ...], final: Any) -> Any:
        first = cmd[0]
        if isinstance(first, Function):
            return self.call(dot, first.name, cmd[1:], final)
        has_args = len(cmd) > 1 or final is not _NO_FINAL
        if isinstance(first, (Field, Variable, Chain)):
            return self.operand(dot, first, has_args)
        if isinstance(first, Nil):
            _fail("nil is not a command")
        if has_args:
            _fail("can't give argument to non-function")
        return self.arg(dot, first)

    def operand(self, dot: Any, arg: Field | Variable | Chain, has_args: bool) -> Any:
        """A field chain: on dot, on a variable, or on a parenthesized pipeline's value."""
        if isinstance(arg, Field):
            receiver = dot
        elif isinstance(arg, Variable):
            receiver = self.get_var(arg.name)
            if has_args and not arg.names:
                _fail("can't give argument to non-function")
        else:
            if isinstance(arg.node, Nil):
                _fail("indirection through explicit nil")
            receiver = self.arg(dot, arg.node)
        for k, name in enumerate(arg.names):
            receiver = _field(receiver, name, has_args and k == len(arg.names) - 1)
        return receiver

    def arg(self, dot: Any, arg: Arg) -> Any:
        if isinstance(arg, Dot):
            return dot
        if isinstance(arg, Const):
            return arg.value
        if isinstance(arg, Nil):
            return None
        if isinstance(arg, Function):
            return self.call(dot, arg.name, (), _NO_FINAL)
        if isinstance(arg, Pipe):
            return self.pipeline(dot, arg)
        return self.operand(dot, arg, False)

    def call(self, dot: Any, name: str, args: tuple[Arg, ...], final: Any) -> Any:
        if name in ("and", "or"):  # short-circuit: the first deciding operand, else the last one
            if not args and final is _NO_FINAL:
                _fail(f"wrong number of args for {name}: want at least 1 got 0")
            value = None
            for arg in args:
                value = self.arg(dot, arg)
                if _truth(value) == (name == "or"):
                    return value
            return value if final is _NO_FINAL else final
        values = [self.arg(dot, arg) for arg in args] + ([] if final is _NO_FINAL else [final])
        function, least, most = _FUNCTIONS[name]
        if len(values) < least or (most is not None and len(values) > most):
            want = f"at least {least}" if most is None else str(least)
            _fail(f"wrong number of args for {name}: want {want} got {len(values)}")
        try:
            return function(*values)
        except _FuncError as exc:
            _fail(f"error calling {name}: {exc}")


def _execute(nodes: tuple[Node, ...], data: dict[str, Any]) -> str:
    state = _Exec(data)
    state.walk(data, nodes)
    return "".join(state.out)


# ---- Ollama's values --------------------------------------------------------------------------


def _any(value: Any) -> Any:
    """JSON data as Go decodes it into ``any``: numbers become float64."""
    if isinstance(value, Mapping):
        return {str(k): _any(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_any(v) for v in value]
    return float(value) if isinstance(value, int) and not isinstance(value, bool) else value


def _plain(item: Any) -> Mapping[str, Any]:
    if isinstance(item, Mapping):
        return item
    if hasattr(item, "model_dump"):  # Corral's own pydantic models
        return dict(item.model_dump(exclude_none=True))
    raise BadRequest(f"expected an object, got {type(item).__name__}")


def _text(value: Any, what: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise BadRequest(f"{what} must be a string")
    return value


_TOOL_PROPERTY_TAGS = {
    "AnyOf": ("anyOf", True),
    "Type": ("type", True),
    "Items": ("items", True),
    "Description": ("description", True),
    "Enum": ("enum", True),
    "Properties": ("properties", True),
    "Required": ("required", True),
}


def _tool_property(raw: Any) -> GoStruct:
    prop = _plain(raw)
    kind = prop.get("type")
    nested = prop.get("properties")
    value = GoStruct(
        "api.ToolProperty",
        {
            "AnyOf": [_tool_property(p) for p in prop.get("anyOf") or ()],
            "Type": _PropertyType([kind] if isinstance(kind, str) else [str(k) for k in kind or ()]),
            "Items": _any(prop.get("items")),
            "Description": _text(prop.get("description"), "a tool property's description"),
            "Enum": _any(list(prop.get("enum") or ())),
            "Properties": None
            if nested is None
            else _GoMap({k: _tool_property(v) for k, v in _plain(nested).items()}, ordered=True),
            "Required": [str(r) for r in prop.get("required") or ()],
        },
        _TOOL_PROPERTY_TAGS,
    )
    value.methods["ToTypeScriptType"] = lambda: _ts_type(value)
    return value


def _tool(raw: Any) -> GoStruct:
    tool = _plain(raw)
    function = _plain(tool.get("function") or {})
    params = _plain(function.get("parameters") or {})
    props = params.get("properties")
    parameters = GoStruct(
        "template.templateToolFunctionParameters",
        {
            "Type": _text(params.get("type"), "a tool's parameters type"),
            "Defs": _any(params.get("$defs")),
            "Items": _any(params.get("items")),
            "Required": [str(r) for r in params.get("required") or ()],
            "Properties": _GoMap(None if props is None else {k: _tool_property(v) for k, v in _plain(props).items()}),
        },
        {
            "Type": ("type", False),
            "Defs": ("$defs", True),
            "Items": ("items", True),
            "Required": ("required", True),
            "Properties": ("properties", False),
        },
        stringer=True,
    )
    fields = {
        "Name": _text(function.get("name"), "a tool's name"),
        "Description": _text(function.get("description"), "a tool's description"),
        "Parameters": parameters,
    }
    return GoStruct(
        "template.templateTool",
        {
            "Type": _text(tool.get("type"), "a tool's type"),
            "Items": _any(tool.get("items")),
            "Function": GoStruct(
                "template.templateToolFunction", fields, {k: (k.lower(), False) for k in fields}, stringer=True
            ),
        },
        {"Type": ("type", False), "Items": ("items", True), "Function": ("function", False)},
        stringer=True,
    )


def _tool_call(raw: Any) -> GoStruct:
    call = _plain(raw)
    function = _plain(call.get("function") or {})
    arguments = function.get("arguments")
    if isinstance(arguments, str):  # OpenAI style: arguments as a JSON string
        try:
            arguments = _json.loads(arguments or "{}")
        except ValueError:
            raise BadRequest("a tool call's arguments are not valid JSON") from None
    index = function.get("index") or 0
    return GoStruct(
        "template.templateToolCall",
        {
            "ID": _text(call.get("id"), "a tool call's id"),
            "Function": GoStruct(
                "template.templateToolCallFunction",
                {
                    "Index": int(index),
                    "Name": _text(function.get("name"), "a tool call's name"),
                    "Arguments": _GoMap(_any(_plain(arguments or {}))),
                },
            ),
        },
    )


def _message(m: Mapping[str, Any]) -> GoStruct:
    """Ollama's templateMessage (a pointer, as it hands []*templateMessage to templates)."""
    return GoStruct(
        "template.templateMessage",
        {
            "Role": m["role"],
            "Content": m["content"],
            "Thinking": _text(m.get("thinking"), "a message's thinking"),
            "Images": list(m.get("images") or ()),
            "ToolCalls": [_tool_call(c) for c in m.get("tool_calls") or ()],
            "ToolName": _text(m.get("tool_name"), "a message's tool_name"),
            "ToolCallID": _text(m.get("tool_call_id"), "a message's tool_call_id"),
        },
        pointer=True,
    )


def _collate(messages: Sequence[Mapping[str, Any]]) -> tuple[str, list[dict[str, Any]]]:
    """Ollama's collate: all system contents joined, and consecutive same-role messages merged
    (content only, joined by a blank line) except tool results."""
    system: list[str] = []
    collated: list[dict[str, Any]] = []
    for raw in messages:
        m = dict(raw)
        m["role"] = _text(m.get("role"), "a message's role")
        m["content"] = _text(m.get("content"), "a message's content")
        if m["role"] == "system":
            system.append(m["content"])
        if collated and collated[-1]["role"] == m["role"] and m["role"] != "tool":
            collated[-1]["content"] += "\n\n" + m["content"]
        else:
            collated.append(m)
    return "\n\n".join(system), collated


def render(
    template: str,
    *,
    messages: Sequence[Mapping[str, Any]],
    system: str = "",
    prompt: str = "",
    response: str = "",
    tools: Sequence[Mapping[str, Any]] | None = None,
    think: bool | str | None = None,
    suffix: str = "",
) -> str:
    """Render a conversation the way Ollama's ``template.Execute`` does.

    ``system`` (if given) goes before ``messages`` as a system message and ``prompt`` after them as a
    user message, as Ollama's generate endpoint builds its messages; ``response`` is a trailing
    assistant message (a prefill). With both ``prompt`` and ``suffix`` the template gets only
    .Prompt/.Suffix (fill-in-the-middle). ``think`` is True/False or a level ("low", "medium",
    "high"), None when the client did not say. A template that reads .Messages gets the collated
    conversation; any other is run once per earlier turn with .System/.Prompt/.Response and a last
    time, cut after .Response, for the turn to generate."""
    tpl = parse_template(template)
    if think is None:
        flags: dict[str, Any] = {"Think": False, "ThinkLevel": "", "IsThinkSet": False}
    elif isinstance(think, str):
        flags = {"Think": think in ("high", "medium", "low"), "ThinkLevel": think, "IsThinkSet": True}
    else:
        flags = {"Think": bool(think), "ThinkLevel": "medium" if think else "", "IsThinkSet": True}
    try:
        if prompt and suffix:
            return _execute(tpl.nodes, {"Prompt": prompt, "Suffix": suffix, "Response": "", **flags})
        conversation = [_plain(m) for m in messages]
        if system:
            conversation.insert(0, {"role": "system", "content": system})
        if prompt:
            conversation.append({"role": "user", "content": prompt})
        if response:
            conversation.append({"role": "assistant", "content": response})
        system_text, collated = _collate(conversation)
        if tpl.uses_messages:
            values = {
                "System": system_text,
                "Messages": [_message(m) for m in collated],
                "Tools": _GoSlice((_tool(t) for t in tools or ()), nil=tools is None),
                "Response": "",
                **flags,
            }
            return _execute(tpl.nodes, values)
        return _render_legacy(tpl, collated, flags)
    except RecursionError:
        raise BadRequest("template: data nested too deeply") from None


def _render_legacy(tpl: Template, collated: list[dict[str, Any]], flags: dict[str, Any]) -> str:
    """Ollama's loop for templates without .Messages: one execution per earlier turn, then the cut tree."""
    out: list[str] = []
    turn = {"System": "", "Prompt": "", "Response": ""}

    def run(nodes: tuple[Node, ...]) -> None:
        out.append(_execute(nodes, {**turn, **flags}))
        if sum(map(len, out)) > _MAX_TEXT:
            _fail("output too large")
        turn.update(System="", Prompt="", Response="")

    for m in collated:
        role, content = m["role"], m["content"]
        if role == "system":
            if turn["Prompt"] or turn["Response"]:
                run(tpl.nodes)
            turn["System"] = content
        elif role == "user":
            if turn["Response"]:
                run(tpl.nodes)
            turn["Prompt"] = content
        elif role == "assistant":
            turn["Response"] = content
    run(tpl.legacy_tail)
    return "".join(out)
