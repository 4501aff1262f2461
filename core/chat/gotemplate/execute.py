"""The evaluator: walks a parsed template over Go-shaped values, bounded in work and output."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from corral.chat.gotemplate.functions import (
    _FUNCTIONS,
    _MAX_TEXT,
    GoStruct,
    _fail,
    _fmt_v,
    _FuncError,
    _go_type,
    _sorted_keys,
    _truth,
)
from corral.chat.gotemplate.parse import (
    Action,
    Arg,
    Chain,
    Const,
    Control,
    Dot,
    Field,
    Function,
    Nil,
    Node,
    Pipe,
    Text,
    Variable,
)

_MAX_STEPS = 2_000_000  # nodes walked plus range iterations, per render


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
                        for k, (name, value) in enumerate(zip(decl, values, strict=False)):
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
