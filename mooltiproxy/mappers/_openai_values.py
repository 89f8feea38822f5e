"""Reading the values of an OpenAI request: types and ranges checked cheaply, errors naming the parameter."""

from __future__ import annotations

import struct
from collections.abc import Iterable
from typing import Any

from ..errors import BadRequest
from ..plugin import MappingContext

__all__ = [
    "kind_of",
    "JSON_OBJECT_REGEX",
    "bad_type",
    "f32",
    "join_stops",
    "option_int",
    "out_of_range",
    "read_flag",
    "read_grammar",
    "read_integer",
    "read_number",
    "read_stops",
    "reject_unknown",
    "wants_usage",
]

_F32 = struct.Struct("<f")


def _json_object_regex(depth: int) -> str:
    """A regex (the dialect of TGI's grammar engine) for a JSON object nested at most ``depth`` + 1 levels."""
    ws = "[ ]?"
    string = r'"([^"\\\x00-\x1F\x7F-\x9F]|\\["\\/bfnrt]|\\u[0-9a-fA-F]{4})*"'
    scalar = rf"{string}|(-)?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?|true|false|null"

    def value(d: int) -> str:
        return scalar if d == 0 else f"{scalar}|{obj(d - 1)}|{arr(d - 1)}"

    def obj(d: int) -> str:
        member = f"{string}{ws}:{ws}({value(d)})"
        return rf"\{{{ws}({member}({ws},{ws}{member})*)?{ws}\}}"

    def arr(d: int) -> str:
        item = f"({value(d)})"
        return rf"\[{ws}({item}({ws},{ws}{item})*)?{ws}\]"

    return obj(depth)


#: ``response_format: json_object``: TGI's JSON grammar needs ``properties``, which would only admit the listed
#: keys (``{}`` for none), so an unconstrained object is written as a regex
JSON_OBJECT_REGEX = _json_object_regex(2)


def f32(value: float) -> float:
    """``value`` as TGI reads it: a 32-bit float."""
    result: float = _F32.unpack(_F32.pack(value))[0]
    return result


def kind_of(value: Any) -> str:
    """How an error message names a JSON value's type: 'null', 'a boolean', 'a number', …."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return "an array" if isinstance(value, list) else "an object"


def bad_type(name: str, expected: str, value: Any) -> BadRequest:
    return BadRequest(f"Invalid type for '{name}': expected {expected}, but got {kind_of(value)} instead.", param=name)


def out_of_range(name: str, low: float, high: float, value: Any) -> BadRequest:
    return BadRequest(f"Invalid '{name}': expected a value from {low} to {high}, but got {value} instead.", param=name)


def read_number(payload: dict[str, Any], name: str, low: float, high: float) -> float | None:
    value = payload.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise bad_type(name, "a number", value)
    if not low <= value <= high:
        raise out_of_range(name, low, high, value)
    return float(value)


def read_integer(payload: dict[str, Any], name: str, low: int, high: int) -> int | None:
    value = payload.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise bad_type(name, "an integer", value)
    if not low <= value <= high:
        raise out_of_range(name, low, high, value)
    return value


def read_flag(payload: dict[str, Any], name: str) -> bool:
    value = payload.get(name)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise bad_type(name, "a boolean", value)
    return value


def option_int(ctx: MappingContext, name: str, default: int) -> int:
    value = ctx.options.get(name, default)
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def reject_unknown(payload: dict[str, Any], known: frozenset[str]) -> None:
    for key, value in payload.items():
        if key not in known and value not in (None, False, "", [], {}):
            raise BadRequest(f"'{key}' is not supported by this model", param=key)


def _unique(*groups: Iterable[str]) -> list[str]:
    stops: list[str] = []
    for group in groups:
        for stop in group:
            if stop and stop not in stops:
                stops.append(stop)
    return stops


def read_stops(value: Any, limit: int | None = None) -> list[str]:
    """The client's ``stop`` (a string or a list of strings), empty and repeated ones dropped; more than ``limit``
    is a 400."""
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    elif not isinstance(value, list):
        raise bad_type("stop", "a string or an array of strings", value)
    for item in value:
        if not isinstance(item, str):
            raise bad_type("stop", "a string or an array of strings", item)
    stops = _unique(value)
    if limit is not None and len(stops) > limit:
        raise BadRequest(
            f"Invalid 'stop': at most {limit} stop sequences are supported, got {len(stops)}.", param="stop"
        )
    return stops


def join_stops(first: Iterable[str], then: Iterable[str], limit: int) -> tuple[list[str], list[str]]:
    """Every stop sequence of ``first`` and ``then`` (empty and repeated ones dropped), and the first ``limit`` of
    them: the ones the model server is sent."""
    stops = _unique(first, then)
    return stops, stops[:limit]


def wants_usage(options: Any) -> bool:
    """``stream_options.include_usage`` is true."""
    return isinstance(options, dict) and options.get("include_usage") is True


def read_grammar(value: Any) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise bad_type("response_format", "an object", value)
    kind = value.get("type")
    if kind == "text":
        return None
    if kind not in ("json_object", "json_schema"):
        raise BadRequest(
            f"Invalid 'response_format.type': expected 'text', 'json_object' or 'json_schema', got {kind!r}.",
            param="response_format",
        )
    schema = None
    if kind == "json_schema":
        spec = value.get("json_schema")
        if not isinstance(spec, dict):
            raise bad_type("response_format.json_schema", "an object", spec)
        schema = spec.get("schema")
    if schema is None:
        return {"type": "regex", "value": JSON_OBJECT_REGEX}
    if not isinstance(schema, dict):
        raise bad_type("response_format.json_schema.schema", "an object", schema)
    if not isinstance(schema.get("properties"), dict):
        raise BadRequest(
            "Invalid 'response_format.json_schema.schema': this model needs a top-level object schema with "
            "'properties'.",
            param="response_format",
        )
    return {"type": "json", "value": schema}
