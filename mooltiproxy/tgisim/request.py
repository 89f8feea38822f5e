"""The shapes of TGI's request bodies, deserialized field by field like the router's derived serde code.

``read_request`` returns a plain dict: ``{"inputs": str, "parameters": {<the 19 fields>}}`` (plus ``"stream"``
for the ``POST /`` body). Defaults are two-layered as in TGI: ``parameters`` absent ⇒ ``do_sample`` true;
present ⇒ every missing field takes its own default (``do_sample`` false, ``stop`` empty, the rest null/false).
A grammar is kept as ``{"type": "json" | "regex" | "json_schema", "value": ...}`` (``json_object`` is an alias).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .wire import JsonFail, Reader
from .wording import describe

__all__ = ["PARAMETER_FIELDS", "default_parameters", "read_request"]

_U32 = 2**32 - 1
_U64 = 2**64 - 1
_REQUIRED = object()

Decoder = Callable[[Reader], Any]


def _opt(inner: Decoder) -> Decoder:
    return lambda r: r.optional(lambda: inner(r))


def _uint(name: str, high: int) -> Decoder:
    return lambda r: r.int_(name, 0, high)


@dataclass(frozen=True)
class _Field:
    name: str
    decode: Decoder
    default: Any  # a zero-argument factory, or _REQUIRED


@dataclass(frozen=True)
class _Struct:
    name: str
    fields: tuple[_Field, ...]

    def field(self, key: str) -> _Field | None:
        for f in self.fields:
            if f.name == key:
                return f
        return None


def _none() -> None:
    return None


def _false() -> bool:
    return False


def _empty() -> list[str]:
    return []


def _grammar_or_none(r: Reader) -> Any:
    return r.optional(lambda: _grammar(r))


_PARAMETERS = _Struct(
    "GenerateParameters",
    (
        _Field("best_of", _opt(_uint("usize", _U64)), _none),
        _Field("temperature", _opt(lambda r: r.float_()), _none),
        _Field("repetition_penalty", _opt(lambda r: r.float_()), _none),
        _Field("frequency_penalty", _opt(lambda r: r.float_()), _none),
        _Field("top_k", _opt(lambda r: r.int_("i32", -(2**31), 2**31 - 1)), _none),
        _Field("top_p", _opt(lambda r: r.float_()), _none),
        _Field("typical_p", _opt(lambda r: r.float_()), _none),
        _Field("do_sample", lambda r: r.bool_(), _false),
        _Field("max_new_tokens", _opt(_uint("u32", _U32)), _none),
        _Field("return_full_text", _opt(lambda r: r.bool_()), _none),
        _Field("stop", lambda r: r.str_list(), _empty),
        _Field("truncate", _opt(_uint("usize", _U64)), _none),
        _Field("watermark", lambda r: r.bool_(), _false),
        _Field("details", lambda r: r.bool_(), _false),
        _Field("decoder_input_details", lambda r: r.bool_(), _false),
        _Field("seed", _opt(_uint("u64", _U64)), _none),
        _Field("top_n_tokens", _opt(_uint("u32", _U32)), _none),
        _Field("grammar", _grammar_or_none, _none),
        _Field("adapter_id", _opt(lambda r: r.str_()), _none),
    ),
)

PARAMETER_FIELDS: tuple[str, ...] = tuple(f.name for f in _PARAMETERS.fields)


def default_parameters() -> dict[str, Any]:
    """The parameters used when the ``parameters`` key is absent (``do_sample`` true)."""
    params: dict[str, Any] = {f.name: f.default() for f in _PARAMETERS.fields}
    params["do_sample"] = True
    return params


def _params(r: Reader) -> dict[str, Any]:
    return _struct(r, _PARAMETERS)


_REQUEST = _Struct(
    "GenerateRequest",
    (_Field("inputs", lambda r: r.str_(), _REQUIRED), _Field("parameters", _params, default_parameters)),
)
_COMPAT = _Struct("CompatGenerateRequest", (*_REQUEST.fields, _Field("stream", lambda r: r.bool_(), _false)))
_SCHEMA_CONFIG = _Struct(
    "JsonSchemaConfig",
    (_Field("name", _opt(lambda r: r.str_()), _none), _Field("schema", lambda r: r.value(), _REQUIRED)),
)


def read_request(body: bytes, *, compat: bool = False) -> dict[str, Any]:
    """Deserializes a request body; raises ``JsonFail`` for the first problem in document order."""
    reader = Reader(body)
    out = _struct(reader, _COMPAT if compat else _REQUEST)
    reader.end()
    return out


def _fail_here(r: Reader, closer: int, err: JsonFail) -> JsonFail:
    """Errors raised by a struct visitor get the position reached after serde tries to close the struct."""
    if err.pos is None:
        r.quiet_close(closer)
        err.pos = r.i
    return err


def _struct(r: Reader, spec: _Struct) -> dict[str, Any]:
    b = r.peek_value()
    if b not in (0x7B, 0x5B):
        raise r.invalid_type(f"struct {spec.name}")
    r.enter()
    closer = 0x7D if b == 0x7B else 0x5D
    try:
        out = _visit_map(r, spec) if b == 0x7B else _visit_seq(r, spec)
    except JsonFail as err:
        raise _fail_here(r, closer, err) from None
    if b == 0x7B:
        r.end_map()
    else:
        r.end_seq()
    return out


def _visit_map(r: Reader, spec: _Struct) -> dict[str, Any]:
    out: dict[str, Any] = {}
    first = True
    while (key := r.next_key(first)) is not None:
        first = False
        field = spec.field(key)
        if field is not None and key in out:
            raise r.data(f"duplicate field `{key}`")
        r.colon()
        r.path.append(key)
        if field is None:
            r.value(keep=False)
        else:
            out[key] = field.decode(r)
        r.path.pop()
    for f in spec.fields:
        if f.name not in out and f.default is _REQUIRED:
            raise r.data(f"missing field `{f.name}`")
    return {f.name: out[f.name] if f.name in out else f.default() for f in spec.fields}


def _visit_seq(r: Reader, spec: _Struct) -> dict[str, Any]:
    out: dict[str, Any] = {}
    n = len(spec.fields)
    exhausted = False
    for index, f in enumerate(spec.fields):
        exhausted = exhausted or not r.has_element(index == 0)
        if exhausted:
            if f.default is _REQUIRED:
                plural = "" if n == 1 else "s"
                raise r.data(f"invalid length {index}, expected struct {spec.name} with {n} element{plural}")
            out[f.name] = f.default()
            continue
        r.path.append(index)
        out[f.name] = f.decode(r)
        r.path.pop()
    return out


# -- GrammarType: an adjacently tagged enum {"type": <variant>, "value": <content>} ---------------------------
_VARIANTS = {"json": "json", "json_object": "json", "regex": "regex", "json_schema": "json_schema"}
_VARIANT_LIST = "one of `json`, `json_object`, `regex`, `json_schema`"


def _grammar(r: Reader) -> dict[str, Any]:
    b = r.peek_value()
    if b != 0x7B:
        raise r.invalid_type("adjacently tagged enum GrammarType")
    r.enter()
    try:
        out = _grammar_map(r)
    except JsonFail as err:
        raise _fail_here(r, 0x7D, err) from None
    r.end_map()
    return out


def _relevant_key(r: Reader, first: bool) -> str | None:
    while (key := r.next_key(first)) is not None:
        first = False
        if key in ("type", "value"):
            return key
        r.colon()
        r.path.append(key)
        r.value(keep=False)
        r.path.pop()
    return None


def _variant(r: Reader) -> str:
    r.colon()
    r.path.append("type")
    if r.peek_value() != 0x22:
        raise r.invalid_type("variant identifier")
    name = r.string()
    if name not in _VARIANTS:
        raise r.data(f"unknown variant `{name}`, expected {_VARIANT_LIST}", r.i)
    r.path.pop()
    return _VARIANTS[name]


def _grammar_map(r: Reader) -> dict[str, Any]:
    key = _relevant_key(r, True)
    if key is None:
        raise r.data("missing field `type`")
    if key == "type":
        variant = _variant(r)
        key = _relevant_key(r, False)
        if key is None:
            raise r.data("missing field `value`")
        if key == "type":
            raise r.data("duplicate field `type`")
        r.colon()
        r.path.append("value")
        if variant == "json":
            value = r.value()
        elif variant == "regex":
            value = r.str_()
        else:
            value = _struct(r, _SCHEMA_CONFIG)
        r.path.pop()
    else:
        r.colon()
        r.path.append("value")
        content = r.value()
        r.path.pop()
        key = _relevant_key(r, False)
        if key is None:
            raise r.data("missing field `type`")
        if key == "value":
            raise r.data("duplicate field `value`")
        variant = _variant(r)
        value = _from_content(r, variant, content)
    key = _relevant_key(r, False)
    if key is not None:
        raise r.data(f"duplicate field `{key}`")
    return {"type": variant, "value": value}


def _from_content(r: Reader, variant: str, content: Any) -> Any:
    """The grammar's content when it came before the tag (serde buffers it, then converts)."""
    if variant == "json":
        return content
    if variant == "regex":
        if not isinstance(content, str):
            raise r.data(f"invalid type: {describe(content)}, expected a string")
        return content
    if isinstance(content, list):
        content = dict(zip(("name", "schema"), content, strict=False))
        if "schema" not in content:
            raise r.data(f"invalid length {len(content)}, expected struct JsonSchemaConfig with 2 elements")
    if not isinstance(content, dict):
        raise r.data(f"invalid type: {describe(content)}, expected struct JsonSchemaConfig")
    name = content.get("name")
    if name is not None and not isinstance(name, str):
        raise r.data(f"invalid type: {describe(name)}, expected a string")
    if "schema" not in content:
        raise r.data("missing field `schema`")
    return {"name": name, "schema": content["schema"]}
