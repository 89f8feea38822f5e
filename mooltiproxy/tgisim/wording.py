"""How serde words unexpected values in its error messages."""

from __future__ import annotations

import math
from typing import Any

__all__ = ["describe", "float_text", "rust_debug"]


def float_text(value: float) -> str:
    """A float as serde_json prints it in error messages (shortest form, always with a '.' or exponent)."""
    if math.isnan(value) or math.isinf(value):
        return "NaN" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    text = repr(value)
    if "e" in text:
        mantissa, exp = text.split("e")
        mantissa = mantissa[:-2] if mantissa.endswith(".0") else mantissa
        return f"{mantissa}e{int(exp)}"
    return text


def rust_debug(text: str) -> str:
    """A string as Rust's ``{:?}`` shows it: quoted, with escapes for quotes, backslashes and controls."""
    out = ['"']
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\t":
            out.append("\\t")
        elif ch == "\0":
            out.append("\\0")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{{{ord(ch):x}}}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def describe(value: Any) -> str:
    """serde's ``Unexpected`` wording for an already-decoded JSON value."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean `{'true' if value else 'false'}`"
    if isinstance(value, int):
        return f"integer `{value}`"
    if isinstance(value, float):
        return f"floating point `{float_text(value)}`"
    if isinstance(value, str):
        return f"string {rust_debug(value)}"
    return "sequence" if isinstance(value, list) else "map"
