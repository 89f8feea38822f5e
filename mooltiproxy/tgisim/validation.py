"""TGI's request validation, rule for rule and in TGI's order. Pure code: no I/O.

* ``parse_generate_request`` — the transport-level rejections of the JSON extractor (415 / 400 / 422, plain
  text) and serde's defaults;
* ``validate`` — the router's checks in evaluation order: streaming-only S1/S2 (``stream=True``), best_of 0a/0b,
  then rules 2–21 (rule 1, the concurrency semaphore, sits between 0b and 2 and belongs to the server, which
  calls ``validate_stream``, ``validate_best_of`` and ``validate_parameters`` around it).

Every validation failure is ``TgiError(422, "Input validation error: <msg>", "validation")``.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from typing import Any, NamedTuple

import orjson

from .grammar import grammar_problem
from .model import count_tokens
from .request import read_request
from .wire import JsonFail

__all__ = [
    "GENERATION_CHUNK",
    "Checked",
    "Limits",
    "TgiError",
    "count_tokens",
    "is_json_content_type",
    "parse_generate_request",
    "validate",
    "validate_best_of",
    "validate_parameters",
    "validate_stream",
]

GENERATION_CHUNK = 1024  # the router validates and schedules at most this many new tokens at a time
_UNSUPPORTED_MEDIA = "Expected request with `Content-Type: application/json`"
_SYNTAX = "Failed to parse the request body as JSON"
_DATA = "Failed to deserialize the JSON body into the target type"


@dataclass(frozen=True)
class Limits:
    max_best_of: int = 2
    max_stop_sequences: int = 4
    max_top_n_tokens: int = 5
    max_input_tokens: int = 4095
    max_total_tokens: int = 4096
    max_client_batch_size: int = 4
    disable_grammar_support: bool = False


class TgiError(Exception):
    """An error answer of TGI: JSON ``{"error", "error_type"}``, or a plain-text extractor rejection."""

    status: int
    message: str
    error_type: str | None
    plain: bool

    def __init__(self, status: int, message: str, error_type: str | None = None, *, plain: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.error_type = error_type
        self.plain = plain

    def body(self) -> bytes:
        if self.plain:
            return self.message.encode("utf-8")
        return orjson.dumps({"error": self.message, "error_type": self.error_type})

    @property
    def content_type(self) -> str:
        return "text/plain; charset=utf-8" if self.plain else "application/json"

    @classmethod
    def validation(cls, message: str) -> TgiError:
        return cls(422, f"Input validation error: {message}", "validation")

    @classmethod
    def overloaded(cls) -> TgiError:
        return cls(429, "Model is overloaded", "overloaded")

    @classmethod
    def generation(cls, message: str) -> TgiError:
        return cls(424, f"Request failed during generation: {message}", "generation")

    def __repr__(self) -> str:
        return f"TgiError({self.status}, {self.message!r}, {self.error_type!r}, plain={self.plain})"


class Checked(NamedTuple):
    """What validation learned: the prompt length and the number of new tokens the request may generate."""

    input_length: int
    max_new_tokens: int


def is_json_content_type(content_type: str | None) -> bool:
    """``application/json`` or ``application/*+json``, parameters allowed (as the extractor decides)."""
    if not content_type:
        return False
    essence = content_type.split(";", 1)[0].strip().lower()
    kind, slash, subtype = essence.partition("/")
    if not slash or not kind or not subtype or any(c.isspace() for c in essence):
        return False
    return kind == "application" and (subtype == "json" or subtype.endswith("+json"))


def parse_generate_request(
    body: bytes, content_type: str | None, *, limits: Limits, compat: bool = False
) -> dict[str, Any]:
    """Deserializes a ``/generate`` body (``compat``: a ``POST /`` body, which adds ``stream``)."""
    del limits  # the extractor knows no limits; kept for a uniform signature
    if not is_json_content_type(content_type):
        raise TgiError(415, _UNSUPPORTED_MEDIA, plain=True)
    try:
        return read_request(body, compat=compat)
    except JsonFail as exc:
        if exc.category == "data":
            raise TgiError(422, f"{_DATA}: {exc.render(body)}", plain=True) from None
        raise TgiError(400, f"{_SYNTAX}: {exc.render(body)}", plain=True) from None


def _f32(value: float) -> float:
    """The value as the router sees it: rounded to f32."""
    try:
        return float(struct.unpack("f", struct.pack("f", value))[0])
    except OverflowError:
        return math.copysign(math.inf, value)


def validate_stream(request: dict[str, Any]) -> None:
    """S1/S2: what ``/generate_stream`` refuses before anything else."""
    params = request["parameters"]
    best_of = params.get("best_of")
    if best_of is not None and best_of != 1:
        raise TgiError.validation("`best_of` != 1 is not supported when streaming tokens")
    if params.get("decoder_input_details"):
        raise TgiError.validation("`decoder_input_details` == true is not supported when streaming tokens")


def validate_best_of(request: dict[str, Any], *, limits: Limits) -> None:
    """0a/0b: checked by ``/generate`` only when ``best_of > 1``, before taking a slot."""
    best_of = request["parameters"].get("best_of")
    if best_of is None or best_of <= 1:
        return
    if limits.max_best_of == 1:
        raise TgiError.validation("`best_of` != 1 is not allowed for this endpoint")
    if best_of > limits.max_best_of:
        raise TgiError.validation(f"`best_of` must be > 0 and <= {limits.max_best_of}. Given: {best_of}")


def validate_parameters(request: dict[str, Any], *, limits: Limits) -> Checked:
    """Rules 2–21, in order; returns the prompt length and the new-token budget."""
    p = request["parameters"]
    best_of = p.get("best_of") or 1
    sampling = p.get("do_sample") or any(p.get(k) is not None for k in ("temperature", "top_k", "top_p", "typical_p"))
    if best_of > 1 and not sampling:
        raise TgiError.validation("you must use sampling when `best_of` is > 1")
    if _f32(_or(p.get("temperature"), 1.0)) <= 0.0:
        raise TgiError.validation("`temperature` must be strictly positive")
    if _f32(_or(p.get("repetition_penalty"), 1.0)) <= 0.0:
        raise TgiError.validation("`repetition_penalty` must be strictly positive")
    if not -2.0 <= _f32(_or(p.get("frequency_penalty"), 0.0)) <= 2.0:
        raise TgiError.validation("`frequency_penalty` must be >= -2.0 and <= 2.0")
    for name in ("top_p", "typical_p"):
        value = p.get(name)
        if value is not None and not 0.0 < _f32(value) < 1.0:
            raise TgiError.validation(f"`{name}` must be > 0.0 and < 1.0")
    if p.get("top_k") is not None and p["top_k"] <= 0:
        raise TgiError.validation("`top_k` must be strictly positive")
    max_new_tokens = p.get("max_new_tokens")
    if max_new_tokens == 0:
        raise TgiError.validation("`max_new_tokens` must be strictly positive")
    stop = p.get("stop") or []
    if len(stop) > limits.max_stop_sequences:
        raise TgiError.validation(
            f"`stop` supports up to {limits.max_stop_sequences} stop sequences. Given: {len(stop)}"
        )
    if p.get("seed") is not None and best_of > 1:
        raise TgiError.validation("`seed` must not be set when `best_of` > 1")
    top_n = p.get("top_n_tokens")
    if top_n is not None and top_n > limits.max_top_n_tokens:
        raise TgiError.validation(f"`top_n_tokens` must be >= 0 and <= {limits.max_top_n_tokens}. Given: {top_n}")
    inputs: str = request["inputs"]
    if inputs == "":
        raise TgiError.validation("`inputs` cannot be empty")
    truncate = p.get("truncate")
    if truncate is not None and (truncate == 0 or truncate > limits.max_input_tokens):
        raise TgiError.validation(
            f"`truncate` must be strictly positive and less than {limits.max_input_tokens}. Given: {truncate}"
        )
    input_length = count_tokens(inputs)
    if truncate is not None:
        input_length = min(truncate, input_length)
    budget = max_new_tokens if max_new_tokens is not None else max(limits.max_total_tokens - input_length, 0)
    chunk = min(budget, GENERATION_CHUNK)
    if input_length + chunk > limits.max_total_tokens:
        raise TgiError.validation(
            f"`inputs` tokens + `max_new_tokens` must be <= {limits.max_total_tokens}. "
            f"Given: {input_length} `inputs` tokens and {chunk} `max_new_tokens`"
        )
    if input_length > limits.max_input_tokens:
        raise TgiError.validation(
            f"`inputs` must have less than {limits.max_input_tokens} tokens. Given: {input_length}"
        )
    grammar = p.get("grammar")
    if grammar is not None:
        problem = grammar_problem(grammar, disabled=limits.disable_grammar_support)
        if problem is not None:
            raise TgiError.validation(problem[1])
    return Checked(input_length, budget)


def _or(value: Any, default: float) -> float:
    return float(default if value is None else value)


def validate(request: dict[str, Any], *, stream: bool, limits: Limits) -> None:
    """All of TGI's checks for one request, first failure wins (the semaphore excepted).

    ``request`` may be any JSON-able ``{"inputs", "parameters"?}`` dict: it is first read exactly as TGI reads
    a body, so wrong types fail with the extractor's plain-text 422 and missing fields take serde's defaults.
    """
    try:
        body = orjson.dumps(request)
    except (orjson.JSONEncodeError, TypeError):  # e.g. integers beyond 64 bits, which orjson refuses
        body = json.dumps(request).encode("utf-8")
    parsed = parse_generate_request(body, "application/json", limits=limits)
    if stream:
        validate_stream(parsed)
    validate_best_of(parsed, limits=limits)
    validate_parameters(parsed, limits=limits)
