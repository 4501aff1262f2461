"""Go text/template, parsed: the lexer, the node tree and the parser (with the limits every
rendering shares), and the questions the server asks of a template before rendering it."""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from typing import NoReturn

from corral.chat.gotemplate.functions import _FUNCTION_NAMES
from corral.errors import BadRequest

_SPACE = " \t\r\n"
_MAX_DEPTH = 64  # nesting of control structures and parenthesized pipelines
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
