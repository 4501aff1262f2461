"""Go values and Go's template functions: truth, printing (%v, printf), JSON as Go writes it,
comparisons, index/slice/len, and Ollama's own functions (json, currentDate, toTypeScriptType)."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, timedelta
from decimal import Decimal
from typing import Any, NoReturn

from corral.errors import BadRequest

_MAX_TEXT = 16 << 20  # characters in one rendering or one computed string
_MAX_WIDTH = 10_000  # printf width and precision


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
