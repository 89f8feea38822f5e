"""What the OpenAI ⇄ TGI request and answer mappers share: the per-request state, ids, stop sequences, logprobs."""

from __future__ import annotations

import os
import random
import time
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from ..errors import BadRequest
from ..plugin import MappingContext
from ._openai_values import read_stops, wants_usage

__all__ = [
    "STATE_KEY",
    "ChatLogprobs",
    "RequestState",
    "Slot",
    "TextLogprobs",
    "answered_model",
    "earliest_stop",
    "envelope",
    "finish_reason",
    "header",
    "held_tail",
    "int_header",
    "new_id",
    "state_of",
    "tool_call_id",
    "tool_setup",
]

#: key of the ``RequestState`` in ``ctx.state``
STATE_KEY = "openai_tgi"

_FINISH = {"length": "length", "eos_token": "stop", "stop_sequence": "stop"}

_rng: random.Random | None = None


def _reset_rng() -> None:
    global _rng
    _rng = None


if hasattr(os, "register_at_fork"):  # a forked worker must not repeat its parent's ids
    os.register_at_fork(after_in_child=_reset_rng)


def new_id(prefix: str) -> str:
    """``prefix`` + 32 random hex digits (not cryptographic: ids only need to be unique)."""
    global _rng
    if _rng is None:
        _rng = random.Random()  # seeded from os.urandom on first use
    return prefix + _rng.getrandbits(128).to_bytes(16, "big").hex()


_ALNUM = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"


def tool_call_id(fmt: str) -> str:
    """A new tool call id: ``call_`` + 32 hex digits; 9 letters and digits for Mistral, whose chat templates
    refuse any other id when the conversation comes back with the call."""
    if fmt != "mistral":
        return new_id("call_")
    global _rng
    if _rng is None:
        _rng = random.Random()
    return "".join(_rng.choices(_ALNUM, k=9))


#: tool-call formats parsed out of answers (``none`` and unknown values: never)
_TOOL_FORMATS = frozenset({"llama3", "hermes", "mistral"})
_NO_TOOLS: tuple[None, frozenset[str]] = (None, frozenset())


def tool_setup(payload: Any, ctx: MappingContext) -> tuple[str | None, frozenset[str]]:
    """The tool-call format to parse answers with, and the names of the request's tools.

    Only when the request has ``tools``, its ``tool_choice`` is not ``none`` and the route's ``tool_format``
    (given, or derived from the template at start-up) is a known format."""
    fmt = ctx.entry.get("tool_format")
    if fmt not in _TOOL_FORMATS or (type(payload) is not dict and not isinstance(payload, Mapping)):
        return _NO_TOOLS
    tools = payload.get("tools")
    if not isinstance(tools, list) or not tools or payload.get("tool_choice") == "none":
        return _NO_TOOLS
    names: set[str] = set()
    for tool in tools:
        function = tool.get("function") if isinstance(tool, Mapping) else None
        name = function.get("name") if isinstance(function, Mapping) else None
        if isinstance(name, str):
            names.add(name)
    return str(fmt), frozenset(names)


class Slot(NamedTuple):
    """One upstream request: which prompt it generates for and which choices it yields."""

    prompt: int  # index of the client's prompt
    choice: int  # index of its first choice
    n: int  # choices it yields: ``n`` when TGI picks among ``best_of`` candidates, else 1


class RequestState:
    """What the answer side needs to know about the request (kept in ``ctx.state[STATE_KEY]``)."""

    __slots__ = (
        "chat",
        "created",
        "echo",
        "fingerprint",
        "id",
        "include_usage",
        "logprobs",
        "model",
        "prompts",
        "slots",
        "stops",
        "tool_format",
        "tool_names",
    )

    def __init__(
        self,
        chat: bool,
        id: str,
        created: int,
        model: str,
        stops: Sequence[str] = (),
        slots: Sequence[Slot] = (Slot(0, 0, 1),),
        prompts: Sequence[str] = (),
        echo: bool = False,
        logprobs: int | None = None,
        include_usage: bool = False,
        fingerprint: str | None = None,
        tool_format: str | None = None,
        tool_names: frozenset[str] = frozenset(),
    ) -> None:
        self.chat = chat
        self.id = id
        self.created = created
        self.model = model
        #: stop sequences sent upstream: never returned to the client
        self.stops = tuple(stops)
        self.slots = tuple(slots)
        #: prompt texts, kept only for ``echo``
        self.prompts = tuple(prompts)
        self.echo = echo
        #: None: no logprobs; else the number of alternatives per token (0: the sampled token only)
        self.logprobs = logprobs
        self.include_usage = include_usage
        self.fingerprint = fingerprint
        #: chat answers: the format tool calls are parsed from (None: they are not), and the request's tools
        self.tool_format = tool_format
        self.tool_names = tool_names

    @classmethod
    def new(
        cls,
        payload: Any,
        ctx: MappingContext,
        *,
        chat: bool,
        stops: Sequence[str],
        slots: Sequence[Slot],
        include_usage: bool,
        prompts: Sequence[str] = (),
        echo: bool = False,
        logprobs: int | None = None,
    ) -> RequestState:
        """The state of a new request: a fresh id, the answered model name and the target's fingerprint."""
        fingerprint = ctx.options.get("system_fingerprint")
        tool_format, tool_names = tool_setup(payload, ctx) if chat else _NO_TOOLS
        # positional: a class called with keywords gets them through a new dict, which costs more than the rest
        return cls(
            chat,
            new_id("chatcmpl-" if chat else "cmpl-"),
            int(time.time()),
            answered_model(payload, ctx),
            stops,
            slots,
            prompts,
            echo,
            logprobs,
            include_usage,
            fingerprint if isinstance(fingerprint, str) else None,
            tool_format,
            tool_names,
        )

    @property
    def choices(self) -> int:
        return sum(slot.n for slot in self.slots)


def answered_model(payload: Any, ctx: MappingContext) -> str:
    """The model name answered: the request's ``model``, else the target's ``model`` option, else ``tgi``."""
    model = payload.get("model") if isinstance(payload, dict) else None
    if isinstance(model, str) and model:
        return model
    configured = ctx.options.get("model")
    return configured if isinstance(configured, str) and configured else "tgi"


def state_of(ctx: MappingContext, chat: bool, upstream_answers: int = 1) -> RequestState:
    """The state the request mapper left, or one guessed from the client's payload (another request mapper ran)."""
    state = ctx.state.get(STATE_KEY)
    if isinstance(state, RequestState):
        return state
    payload = ctx.payload if isinstance(ctx.payload, dict) else {}
    try:
        stops = read_stops(payload.get("stop"))
    except BadRequest:  # another request mapper accepted it: not ours to refuse now
        stops = []
    state = RequestState.new(
        payload,
        ctx,
        chat=chat,
        stops=stops,
        slots=[Slot(0, i, 1) for i in range(max(upstream_answers, 1))],
        include_usage=wants_usage(payload.get("stream_options")),
    )
    ctx.state[STATE_KEY] = state
    return state


def envelope(state: RequestState, obj: str) -> dict[str, Any]:
    """The fields every answer and chunk of one request starts with (same id and created on all of them)."""
    head: dict[str, Any] = {"id": state.id, "object": obj, "created": state.created, "model": state.model}
    if state.fingerprint:
        head["system_fingerprint"] = state.fingerprint
    return head


def finish_reason(tgi_reason: Any) -> str:
    """TGI ``eos_token`` / ``stop_sequence`` → ``stop``, ``length`` → ``length``; anything else → ``stop``."""
    return _FINISH.get(tgi_reason, "stop") if isinstance(tgi_reason, str) else "stop"


def earliest_stop(text: str, stops: Sequence[str]) -> int:
    """Where the stop sequence that completes first in ``text`` starts (the longest on a tie), or -1."""
    start = end = -1
    for stop in stops:
        i = text.find(stop)
        if i != -1:
            j = i + len(stop)
            if end == -1 or j < end or (j == end and i < start):
                start, end = i, j
    return start


def held_tail(text: str, stops: Sequence[str]) -> int:
    """Length of the longest end of ``text`` that could still grow into a stop sequence (0 when none)."""
    if not text:
        return 0
    last = text[-1]
    held = 0
    for stop in stops:
        if last not in stop:
            continue
        for k in range(min(len(stop) - 1, len(text)), held, -1):
            if stop[k - 1] == last and text.endswith(stop[:k]):
                held = k
                break
    return held


def header(headers: Mapping[str, str], name: str) -> str | None:
    """Header ``name`` (lower-case) from a case-insensitive or a plain mapping."""
    value = headers.get(name)
    if value is None:
        for key, val in headers.items():
            if key.lower() == name:
                return val
    return value


def int_header(headers: Mapping[str, str], name: str) -> int | None:
    value = header(headers, name)
    if value is None:
        return None
    try:
        return int(value.strip())
    except ValueError:
        return None


def _logprob(value: Any) -> float:
    # TGI writes a NaN logprob as null; OpenAI's "not in the top" value stands in for it
    return float(value) if isinstance(value, (int, float)) else -9999.0


def _text(token: Any) -> str:
    text = token.get("text") if isinstance(token, dict) else None
    return text if isinstance(text, str) else ""


class ChatLogprobs:
    """Chat logprobs: ``{"content": [{"token","logprob","bytes","top_logprobs"}], "refusal": null}``."""

    __slots__ = ("content", "top")

    def __init__(self, top: int) -> None:
        self.top = top
        self.content: list[dict[str, Any]] = []

    def add(self, token: Mapping[str, Any], alternatives: Any, offset: int) -> None:
        text = _text(token)
        tops: list[dict[str, Any]] = []
        if self.top and isinstance(alternatives, list):
            for alt in alternatives[: self.top]:
                if not isinstance(alt, dict):
                    continue
                alt_text = _text(alt)
                tops.append(
                    {"token": alt_text, "logprob": _logprob(alt.get("logprob")), "bytes": list(alt_text.encode())}
                )
        self.content.append(
            {
                "token": text,
                "logprob": _logprob(token.get("logprob")),
                "bytes": list(text.encode()),
                "top_logprobs": tops,
            }
        )

    def result(self) -> dict[str, Any]:
        return {"content": self.content, "refusal": None}


class TextLogprobs:
    """Legacy logprobs: ``{"tokens","token_logprobs","top_logprobs":[{token: logprob}],"text_offset"}``."""

    __slots__ = ("offsets", "token_logprobs", "tokens", "top", "tops")

    def __init__(self, top: int) -> None:
        self.top = top
        self.tokens: list[str] = []
        self.token_logprobs: list[float] = []
        self.tops: list[dict[str, float]] = []
        self.offsets: list[int] = []

    def add(self, token: Mapping[str, Any], alternatives: Any, offset: int) -> None:
        text = _text(token)
        logprob = _logprob(token.get("logprob"))
        tops: dict[str, float] = {}
        if self.top and isinstance(alternatives, list):
            for alt in alternatives[: self.top]:
                if isinstance(alt, dict):
                    tops.setdefault(_text(alt), _logprob(alt.get("logprob")))
        tops.setdefault(text, logprob)  # OpenAI always lists the sampled token too
        self.tokens.append(text)
        self.token_logprobs.append(logprob)
        self.tops.append(tops)
        self.offsets.append(offset)

    def result(self) -> dict[str, Any]:
        return {
            "tokens": self.tokens,
            "token_logprobs": self.token_logprobs,
            "top_logprobs": self.tops,
            "text_offset": self.offsets,
        }
