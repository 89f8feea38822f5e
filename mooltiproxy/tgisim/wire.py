"""A typed JSON reader that fails the way TGI's request extractor does.

TGI deserializes request bodies with serde_json through a path-tracking wrapper, in document order, and
stops at the first problem. Three things follow, and this module reproduces them:

* the first error *in the document* wins, whether it is a syntax error or a type error;
* syntax errors (category "syntax") and type errors (category "data") read like serde_json's, with the
  field path as prefix (``parameters.stop[0]: ...``) and a byte-based ``at line L column C`` suffix;
* struct defaults are applied exactly like the derived deserializers (the schemas live in ``request``).

Only the shapes TGI needs are modelled: strings, booleans, unsigned/signed integers, f32, string lists,
structs (also in their positional array form), and untyped JSON values (kept or skipped).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any

import orjson

from .wording import describe, float_text

__all__ = ["JsonFail", "Path", "Reader"]

_WS = re.compile(rb"[ \t\n\r]*")
_STR = re.compile(rb'"([^"\\\x00-\x1f]*(?:\\(?:["\\/bfnrt]|u[0-9a-fA-F]{4})[^"\\\x00-\x1f]*)*)"')
_NUM = re.compile(rb"(-?(?:0|[1-9][0-9]*))(\.[0-9]+)?([eE][+-]?[0-9]+)?")
_ESCAPES = b'"\\/bfnrtu'
_HEX4 = re.compile(rb"[0-9a-fA-F]{4}")
_DIGITS = b"0123456789"
_U64_MAX = 2**64 - 1
_MAX_DEPTH = 128

EOF_VALUE = "EOF while parsing a value"
EOF_OBJECT = "EOF while parsing an object"
EOF_LIST = "EOF while parsing a list"
EOF_STRING = "EOF while parsing a string"

Path = tuple[str | int, ...]


class JsonFail(Exception):
    """One deserialization failure: ``category`` is "syntax" or "data"; ``pos`` is a byte index."""

    def __init__(self, msg: str, category: str, path: Path, pos: int | None = None) -> None:
        super().__init__(msg)
        self.msg = msg
        self.category = category
        self.path = path
        self.pos = pos

    def render(self, buf: bytes, *, with_path: bool = True) -> str:
        prefix = _path_prefix(self.path) if with_path else ""
        pos = min(self.pos if self.pos is not None else len(buf), len(buf))
        line_start = buf.rfind(b"\n", 0, pos) + 1
        line = buf.count(b"\n", 0, line_start) + 1
        return f"{prefix}{self.msg} at line {line} column {pos - line_start}"


def _path_prefix(path: Path) -> str:
    if all(seg == "?" for seg in path):
        return ""
    out = ""
    for seg in path:
        out += f"[{seg}]" if isinstance(seg, int) else (f".{seg}" if out else seg)
    return out + ": "


class Reader:
    """A cursor over one JSON document, with serde_json's error codes and positions."""

    def __init__(self, buf: bytes) -> None:
        self.buf = buf
        self.i = 0
        self.path: list[str | int] = []
        self.depth = 0

    # -- errors ----------------------------------------------------------------------------------------------
    def syntax(self, msg: str, *, peek: bool = True) -> JsonFail:
        pos = min(len(self.buf), self.i + 1) if peek else self.i
        return JsonFail(msg, "syntax", tuple(self.path), pos)

    def data(self, msg: str, pos: int | None = None) -> JsonFail:
        return JsonFail(msg, "data", tuple(self.path), pos)

    # -- lexing ----------------------------------------------------------------------------------------------
    def ws(self) -> int | None:
        m = _WS.match(self.buf, self.i)
        self.i = m.end() if m else self.i
        return self.buf[self.i] if self.i < len(self.buf) else None

    def end(self) -> None:
        if self.ws() is not None:
            raise JsonFail("trailing characters", "syntax", (), min(len(self.buf), self.i + 1))

    def enter(self) -> None:
        self.depth += 1
        if self.depth >= _MAX_DEPTH:
            raise self.syntax("recursion limit exceeded")
        self.i += 1

    def ident(self, rest: bytes) -> None:
        for expected in rest:
            if self.i >= len(self.buf):
                raise self.syntax(EOF_VALUE, peek=False)
            got = self.buf[self.i]
            self.i += 1
            if got != expected:
                raise self.syntax("expected ident", peek=False)

    def string(self) -> str:
        """Reads a string starting at its opening quote."""
        m = _STR.match(self.buf, self.i)
        if m is not None:
            raw = m.group(1)
            try:
                text = raw.decode("utf-8") if b"\\" not in raw else orjson.loads(m.group(0))
            except (UnicodeDecodeError, orjson.JSONDecodeError):
                pass
            else:
                self.i = m.end()
                return str(text)
        raise self._string_error()

    def _string_error(self) -> JsonFail:
        buf, n = self.buf, len(self.buf)
        j = self.i + 1
        while True:
            if j >= n:
                self.i = n
                return self.syntax(EOF_STRING, peek=False)
            b = buf[j]
            j += 1
            if b == 0x22:
                self.i = j
                return self.syntax("invalid unicode code point", peek=False)
            if b < 0x20:
                self.i = j
                return self.syntax("control character (\\u0000-\\u001F) found while parsing a string", peek=False)
            if b != 0x5C:
                continue
            if j >= n:
                self.i = n
                return self.syntax(EOF_STRING, peek=False)
            esc = buf[j]
            j += 1
            if esc not in _ESCAPES:
                self.i = j
                return self.syntax("invalid escape", peek=False)
            if esc != 0x75:
                continue
            code, j, fail = self._hex(j)
            if fail is not None:
                return fail
            if 0xDC00 <= code <= 0xDFFF:
                return self.syntax("lone leading surrogate in hex escape", peek=False)
            if 0xD800 <= code <= 0xDBFF:
                for expected in b"\\u":
                    if j >= n:
                        self.i = n
                        return self.syntax(EOF_STRING, peek=False)
                    j += 1
                    if buf[j - 1] != expected:
                        self.i = j
                        return self.syntax("unexpected end of hex escape", peek=False)
                code, j, fail = self._hex(j)
                if fail is not None:
                    return fail
                if not 0xDC00 <= code <= 0xDFFF:
                    return self.syntax("lone leading surrogate in hex escape", peek=False)

    def _hex(self, j: int) -> tuple[int, int, JsonFail | None]:
        hexa = self.buf[j : j + 4]
        if len(hexa) < 4:
            self.i = len(self.buf)
            return 0, j, self.syntax(EOF_STRING, peek=False)
        self.i = j + 4
        if _HEX4.fullmatch(hexa) is None:
            return 0, j, self.syntax("invalid escape", peek=False)
        return int(hexa, 16), j + 4, None

    def number(self) -> int | float:
        """Reads a number: ints in range of u64/i64 stay ints, others become floats (like serde_json)."""
        buf, start = self.buf, self.i
        m = _NUM.match(buf, start)
        if m is None:
            self.i = start + 1
            if self.i >= len(buf):
                raise self.syntax(EOF_VALUE, peek=False)
            self.i += 1
            raise self.syntax("invalid number", peek=False)
        self.i = m.end()
        nxt = buf[self.i] if self.i < len(buf) else None
        bad = (m.group(1).lstrip(b"-") == b"0" and nxt is not None and nxt in _DIGITS and m.lastindex == 1) or (
            nxt is not None and m.group(3) is None and ((nxt == 0x2E and m.group(2) is None) or nxt in b"eE")
        )
        if bad:
            if nxt is not None and nxt not in _DIGITS:
                self.i += 1
                sign = buf[self.i] if self.i < len(buf) else None
                self.i += 1 if nxt in b"eE" and sign is not None and sign in b"+-" else 0
            if self.i >= len(buf):
                raise self.syntax(EOF_VALUE)
            raise self.syntax("invalid number")
        text = m.group(0)
        if m.group(2) is None and m.group(3) is None:
            value = int(text)
            if value == 0 and text.startswith(b"-"):
                return -0.0
            if -(2**63) <= value <= _U64_MAX:
                return value
            return float(value)
        result = float(text)
        if math.isinf(result):
            raise self.syntax("number out of range", peek=False)
        return result

    # -- structure -------------------------------------------------------------------------------------------
    def next_key(self, first: bool) -> str | None:
        """serde_json's MapAccess::next_key: the next key (cursor after it), or None at ``}``."""
        b = self.ws()
        if b == 0x7D:
            return None
        if b == 0x2C and not first:
            self.i += 1
            b = self.ws()
        elif b is None:
            raise self.syntax(EOF_OBJECT)
        elif not first:
            raise self.syntax("expected `,` or `}`")
        if b == 0x22:
            return self.string()
        if b == 0x7D:
            raise self.syntax("trailing comma")
        raise self.syntax(EOF_VALUE if b is None else "key must be a string")

    def colon(self) -> None:
        b = self.ws()
        if b == 0x3A:
            self.i += 1
        elif b is None:
            raise self.syntax(EOF_OBJECT)
        else:
            raise self.syntax("expected `:`")

    def has_element(self, first: bool) -> bool:
        """serde_json's SeqAccess::next_element up to the element itself."""
        b = self.ws()
        if b == 0x5D:
            return False
        if b == 0x2C and not first:
            self.i += 1
            b = self.ws()
            if b == 0x5D:
                raise self.syntax("trailing comma")
        elif b is None:
            raise self.syntax(EOF_LIST)
        elif not first:
            raise self.syntax("expected `,` or `]`")
        if b is None:
            raise self.syntax(EOF_VALUE)
        return True

    def end_map(self) -> None:
        b = self.ws()
        if b == 0x7D:
            self.i += 1
            self.depth -= 1
            return
        raise self.syntax("trailing comma" if b == 0x2C else (EOF_OBJECT if b is None else "trailing characters"))

    def end_seq(self) -> None:
        b = self.ws()
        if b == 0x5D:
            self.i += 1
            self.depth -= 1
            return
        if b == 0x2C:
            self.i += 1
            raise self.syntax("trailing comma" if self.ws() == 0x5D else "trailing characters")
        raise self.syntax(EOF_LIST if b is None else "trailing characters")

    def quiet_close(self, closer: int) -> None:
        """What serde_json does after a visitor failed: try to eat the closing bracket."""
        if self.ws() == closer:
            self.i += 1

    # -- typed values ----------------------------------------------------------------------------------------
    def peek_value(self) -> int:
        b = self.ws()
        if b is None:
            raise self.syntax(EOF_VALUE)
        return b

    def invalid_type(self, expected: str) -> JsonFail:
        """serde_json's peek_invalid_type: consume a scalar to describe it, then fail."""
        b = self.peek_value()
        if b == 0x5B or b == 0x7B:
            return self.data(f"invalid type: {'sequence' if b == 0x5B else 'map'}, expected {expected}", self.i)
        if b == 0x22:
            unexpected = describe(self.string())
        elif b == 0x2D or b in _DIGITS:
            unexpected = describe(self.number())
        elif b in b"tfn":
            self.i += 1
            self.ident({0x74: b"rue", 0x66: b"alse", 0x6E: b"ull"}[b])
            unexpected = {0x74: "boolean `true`", 0x66: "boolean `false`", 0x6E: "null"}[b]
        else:
            return self.syntax("expected value")
        return self.data(f"invalid type: {unexpected}, expected {expected}", self.i)

    def optional(self, inner: Callable[[], Any]) -> Any:
        if self.peek_value() == 0x6E:
            self.i += 1
            self.ident(b"ull")
            return None
        return inner()

    def str_(self) -> str:
        if self.peek_value() == 0x22:
            return self.string()
        raise self.invalid_type("a string")

    def bool_(self) -> bool:
        b = self.peek_value()
        if b == 0x74 or b == 0x66:
            self.i += 1
            self.ident(b"rue" if b == 0x74 else b"alse")
            return b == 0x74
        raise self.invalid_type("a boolean")

    def int_(self, expected: str, low: int, high: int) -> int:
        b = self.peek_value()
        if b != 0x2D and b not in _DIGITS:
            raise self.invalid_type(expected)
        value = self.number()
        if isinstance(value, float):
            raise self.data(f"invalid type: floating point `{float_text(value)}`, expected {expected}", self.i)
        if not low <= value <= high:
            raise self.data(f"invalid value: integer `{value}`, expected {expected}", self.i)
        return value

    def float_(self, expected: str = "f32") -> float:
        b = self.peek_value()
        if b != 0x2D and b not in _DIGITS:
            raise self.invalid_type(expected)
        return float(self.number())

    def str_list(self) -> list[str]:
        if self.peek_value() != 0x5B:
            raise self.invalid_type("a sequence")
        self.enter()
        out: list[str] = []
        while self.has_element(not out):
            self.path.append(len(out))
            out.append(self.str_())
            self.path.pop()
        self.end_seq()
        return out

    def value(self, keep: bool = True) -> Any:
        """Any JSON value: decoded (``keep``) like serde_json::Value, or just validated like IgnoredAny."""
        b = self.peek_value()
        if b == 0x22:
            return self.string()
        if b == 0x2D or b in _DIGITS:
            return self.number()
        if b in b"tfn":
            self.i += 1
            self.ident({0x74: b"rue", 0x66: b"alse", 0x6E: b"ull"}[b])
            return {0x74: True, 0x66: False, 0x6E: None}[b]
        if b == 0x5B:
            self.enter()
            items: list[Any] = []
            while self.has_element(not items):
                if keep:
                    self.path.append(len(items))
                items.append(self.value(keep))
                if keep:
                    self.path.pop()
            self.end_seq()
            return items if keep else None
        if b == 0x7B:
            self.enter()
            obj: dict[str, Any] = {}
            first = True
            while (key := self.next_key(first)) is not None:
                first = False
                self.colon()
                if keep:
                    self.path.append(key)
                obj[key] = self.value(keep)
                if keep:
                    self.path.pop()
            self.end_map()
            return obj if keep else None
        raise self.syntax("expected value")
