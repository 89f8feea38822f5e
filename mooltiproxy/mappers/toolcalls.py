"""A model's tool-call text → OpenAI tool calls, for text back-ends (TGI) whose chat template defines the format.

Formats (``tool_format`` of a mapping entry, or derived from its template at start-up by ``template_tool_format``):

* ``llama3`` (Llama 3.1 / 3.2 / 3.3): ``<|python_tag|>`` then JSON objects, or an answer that is only JSON
  objects, ``{"name": ..., "parameters": {...}}`` (or ``"arguments"``), separated by ``;`` or newlines. A bare
  answer counts only when every name is one of the request's tools.
* ``hermes`` (Hermes, Qwen 2.5 / 3, ChatML with tools): ``<tool_call>\\n{"name": ..., "arguments": {...}}\\n
  </tool_call>``, one or more, text before allowed (the closing tag may be missing at the end of the answer).
* ``mistral``: ``[TOOL_CALLS] [{"name": ..., "arguments": {...}}, ...]``, or the newer
  ``[TOOL_CALLS]name[ARGS]{...}`` (repeated for several calls). ``[TOOL_CALLS]`` is a special token that TGI
  may leave out of the text: an answer that is only such an array counts when every name is one of the tools.

``parse_tool_calls`` gives the calls and the text around them, or None when the text is not tool calls (it then
stays content as it is: no text is ever lost). ``ToolTextStream`` does the same for text arriving piece by piece:
it releases content as soon as it cannot be the start of a tool call and keeps the rest to parse at the end.
Pure code: no I/O.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Mapping
from typing import Any, NamedTuple

__all__ = [
    "TOOL_FORMATS",
    "MarkerScan",
    "ParsedCalls",
    "ToolCall",
    "ToolTextStream",
    "parse_hermes",
    "parse_llama3",
    "parse_mistral",
    "parse_tool_calls",
    "scan_markers",
    "template_tool_format",
]

#: the values of a mapping entry's ``tool_format``
TOOL_FORMATS = ("llama3", "hermes", "mistral", "none")

PYTHON_TAG = "<|python_tag|>"
TOOL_CALL_OPEN = "<tool_call>"
TOOL_CALL_CLOSE = "</tool_call>"
MISTRAL_CALLS = "[TOOL_CALLS]"
MISTRAL_ARGS = "[ARGS]"

#: markers that may appear anywhere in an answer, per format
_MARKERS: dict[str, tuple[str, ...]] = {
    "llama3": (PYTHON_TAG,),
    "hermes": (TOOL_CALL_OPEN,),
    "mistral": (MISTRAL_CALLS,),
}
_WHITESPACE = " \t\r\n"
_NAME_RE = re.compile(r"[A-Za-z_][\w.\-]*")
_decoder = json.JSONDecoder()

#: built-in templates (``prompters.library``) whose models have a tool-call format
_BUILTIN_FORMATS = {
    "llama3.1": "llama3",
    "qwen2.5": "hermes",
    "chatml": "hermes",
    "qwen": "hermes",
    "mistral": "mistral",
}
#: what a Jinja template's source says about its model's format, checked in this order
_SOURCE_MARKERS = (
    (MISTRAL_CALLS, "mistral"),
    (TOOL_CALL_OPEN, "hermes"),
    (PYTHON_TAG, "llama3"),
    ('"parameters": dictionary of argument name', "llama3"),  # Llama 3.2, whose template has no python tag
)


class ToolCall(NamedTuple):
    name: str
    #: the arguments as a JSON object text, as OpenAI sends them
    arguments: str


class ParsedCalls(NamedTuple):
    #: the text outside the calls (before them, between, after), stripped; None when there is none
    content: str | None
    calls: list[ToolCall]


def template_tool_format(template: Any, builtin: bool) -> str:
    """The tool-call format of a route's template: by name for a built-in one, by the markers in a Jinja source."""
    name = getattr(template, "name", None)
    if builtin and isinstance(name, str):
        return _BUILTIN_FORMATS.get(name.lower(), "none")
    sources = getattr(template, "sources", None)
    if not isinstance(sources, Mapping):
        return "none"
    text = "\n".join(s for s in sources.values() if isinstance(s, str))
    for marker, fmt in _SOURCE_MARKERS:
        if marker in text:
            return fmt
    return "none"


# -- parsing


def _arguments(value: Any) -> str | None:
    if value is None:
        return "{}"
    if isinstance(value, dict):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, str):  # already JSON text: kept as the model wrote it when it is an object
        if not value.strip():
            return "{}"
        try:
            decoded = json.loads(value)
        except ValueError:
            return None
        return value if isinstance(decoded, dict) else None
    return None


def _call(obj: Any) -> ToolCall | None:
    """``{"name", "arguments" | "parameters"}`` (or OpenAI's ``{"function": {...}}``) → a call, else None."""
    if not isinstance(obj, dict):
        return None
    if "name" not in obj and isinstance(obj.get("function"), dict):
        obj = obj["function"]
    name = obj.get("name")
    if not isinstance(name, str) or not name.strip():
        return None
    raw = obj["arguments"] if "arguments" in obj else obj.get("parameters")
    arguments = _arguments(raw)
    if arguments is None:
        return None
    return ToolCall(name.strip(), arguments)


def _skip(text: str, pos: int, extra: str = "") -> int:
    chars = _WHITESPACE + extra
    while pos < len(text) and text[pos] in chars:
        pos += 1
    return pos


def _decode(text: str, pos: int) -> tuple[Any, int] | None:
    try:
        return _decoder.raw_decode(text, pos)
    except ValueError:
        return None


def _result(outside: list[str], calls: list[ToolCall]) -> ParsedCalls | None:
    if not calls:
        return None
    pieces = [piece.strip() for piece in outside]
    content = "\n".join(piece for piece in pieces if piece)
    return ParsedCalls(content or None, calls)


def _known(calls: list[ToolCall], names: Collection[str]) -> bool:
    return not names or all(call.name in names for call in calls)


def _starts_bare(text: str, fmt: str) -> bool:
    """Whether ``text`` (after whitespace) opens like a bare answer of calls: ``{`` (llama3), ``[ {`` (mistral)."""
    pos = _skip(text, 0)
    if fmt == "llama3":
        return text.startswith("{", pos)
    if fmt == "mistral" and text.startswith("[", pos):
        return text.startswith("{", _skip(text, pos + 1))
    return False


def parse_hermes(text: str) -> ParsedCalls | None:
    """``<tool_call>{...}</tool_call>`` blocks; None when there are none or one does not hold a call."""
    start = text.find(TOOL_CALL_OPEN)
    if start == -1:
        return None
    outside = [text[:start]]
    calls: list[ToolCall] = []
    pos = start
    while pos < len(text):
        body = pos + len(TOOL_CALL_OPEN)
        close = text.find(TOOL_CALL_CLOSE, body)
        reopen = text.find(TOOL_CALL_OPEN, body)
        end = close
        if end == -1 or (reopen != -1 and reopen < end):
            end = reopen if reopen != -1 else len(text)
        try:
            obj = json.loads(text[body:end])
        except ValueError:
            return None
        call = _call(obj)
        if call is None:
            return None
        calls.append(call)
        pos = end + len(TOOL_CALL_CLOSE) if end == close else end
        following = text.find(TOOL_CALL_OPEN, pos)
        if following == -1:
            outside.append(text[pos:])
            break
        outside.append(text[pos:following])
        pos = following
    return _result(outside, calls)


def _json_calls(text: str, pos: int, separators: str) -> tuple[list[ToolCall], int] | None:
    """JSON call objects from ``pos`` to the end of ``text``, separated by whitespace and ``separators``."""
    calls: list[ToolCall] = []
    pos = _skip(text, pos, separators)
    while pos < len(text):
        decoded = _decode(text, pos)
        if decoded is None:
            return None
        call = _call(decoded[0])
        if call is None:
            return None
        calls.append(call)
        pos = _skip(text, decoded[1], separators)
    return calls, pos


def parse_llama3(text: str, names: Collection[str] = ()) -> ParsedCalls | None:
    """``<|python_tag|>`` + JSON calls, or an answer made only of JSON calls to the tools in ``names``."""
    tag = text.find(PYTHON_TAG)
    if tag != -1:
        leading, body = text[:tag], text[tag + len(PYTHON_TAG) :]
    elif _starts_bare(text, "llama3"):
        leading, body = "", text
    else:
        return None
    found = _json_calls(body, 0, ";")
    if found is None or not found[0]:
        return None
    if tag == -1 and not _known(found[0], names):
        return None
    return _result([leading], found[0])


def parse_mistral(text: str, names: Collection[str] = ()) -> ParsedCalls | None:
    """``[TOOL_CALLS]`` + a JSON array (or ``name[ARGS]{...}``), or an answer that is only such an array."""
    tag = text.find(MISTRAL_CALLS)
    if tag != -1:
        outside = [text[:tag]]
        pos = tag + len(MISTRAL_CALLS)
    elif _starts_bare(text, "mistral"):
        outside = []
        pos = 0
    else:
        return None
    calls: list[ToolCall] = []
    while True:
        pos = _skip(text, pos)
        if text.startswith(("[", "{"), pos):
            decoded = _decode(text, pos)
            if decoded is None:
                return None
            items = decoded[0] if isinstance(decoded[0], list) else [decoded[0]]
            for item in items:
                call = _call(item)
                if call is None:
                    return None
                calls.append(call)
            pos = decoded[1]
        else:
            args = text.find(MISTRAL_ARGS, pos)
            name = text[pos:args].strip() if args != -1 else ""
            if not _NAME_RE.fullmatch(name):
                return None
            decoded = _decode(text, _skip(text, args + len(MISTRAL_ARGS)))
            if decoded is None or not isinstance(decoded[0], dict):
                return None
            calls.append(ToolCall(name, json.dumps(decoded[0], ensure_ascii=False)))
            pos = decoded[1]
        pos = _skip(text, pos)
        if text.startswith(MISTRAL_CALLS, pos):
            pos += len(MISTRAL_CALLS)
            continue
        outside.append(text[pos:])
        break
    if tag == -1 and (not _known(calls, names) or outside[-1].strip()):
        return None  # a bare array followed by text is an answer, not calls
    return _result(outside, calls)


def parse_tool_calls(fmt: str, text: str, names: Collection[str] = ()) -> ParsedCalls | None:
    """The calls in ``text`` in format ``fmt``, or None (the text is content). ``names``: the request's tools."""
    if fmt == "hermes":
        return parse_hermes(text)
    if fmt == "llama3":
        return parse_llama3(text, names)
    if fmt == "mistral":
        return parse_mistral(text, names)
    return None


# -- streaming


class MarkerScan(NamedTuple):
    #: where a tool-call marker begins in the text, or -1
    start: int
    #: without a marker: how many characters at the end could still become one (to hold back)
    hold: int


def _tail(text: str, markers: tuple[str, ...]) -> int:
    """Length of the longest end of ``text`` that is the beginning of a marker."""
    held = 0
    for marker in markers:
        for k in range(min(len(marker) - 1, len(text)), held, -1):
            if text.endswith(marker[:k]):
                held = k
                break
    return held


def scan_markers(fmt: str, text: str, at_start: bool) -> MarkerScan:
    """Where tool calls begin in ``text``; ``at_start``: nothing but whitespace came before ``text``.

    At the start of the answer, leading whitespace is held (it is not content when calls follow), and the opening
    of a bare answer of calls (``{`` for llama3, ``[`` then ``{`` for mistral) counts as a marker.
    """
    markers = _MARKERS.get(fmt)
    if markers is None:
        return MarkerScan(-1, 0)
    found = [i for i in (text.find(marker) for marker in markers) if i != -1]
    start = min(found) if found else -1
    if at_start:
        first = _skip(text, 0)
        if first == len(text):
            return MarkerScan(-1, len(text))  # only whitespace so far
        if fmt != "hermes" and (start == -1 or first < start):
            if _starts_bare(text, fmt):
                return MarkerScan(first, 0)
            if fmt == "mistral" and text[first] == "[" and _skip(text, first + 1) == len(text):
                return MarkerScan(-1, len(text) - first)  # ``[`` (and whitespace): maybe an array of calls
    if start != -1:
        return MarkerScan(start, 0)
    hold = _tail(text, markers)
    if at_start and not text[: len(text) - hold].strip():
        hold = len(text)  # whitespace, then maybe a marker: nothing is content yet
    return MarkerScan(-1, hold)


class ToolTextStream:
    """One choice's text, piece by piece: ``feed`` returns the content to send now, ``end`` the rest.

    Text goes out until a tool-call marker begins; from there on everything is kept, and parsed at ``end``. Only
    a tail that could still become a marker is held back meanwhile.
    """

    __slots__ = ("_at_start", "_capture", "_fmt", "_names", "_pending")

    def __init__(self, fmt: str, names: Collection[str] = ()) -> None:
        self._fmt = fmt
        self._names = names
        self._pending = ""
        self._capture: list[str] | None = None  # the text from the marker on, once one began
        self._at_start = True

    @property
    def capturing(self) -> bool:
        """A marker began: the rest of the text is kept for ``end``."""
        return self._capture is not None

    def feed(self, text: str) -> str:
        """Add ``text``; return the content that can be sent now (maybe ``""``)."""
        if self._capture is not None:
            self._capture.append(text)
            return ""
        pending = self._pending + text
        scan = scan_markers(self._fmt, pending, self._at_start)
        if scan.start != -1:
            out = pending[: scan.start]
            if self._at_start and not out.strip():
                out = ""  # whitespace before the calls is not content
                self._capture = [pending]
            else:
                self._capture = [pending[scan.start :]]
            self._pending = ""
        else:
            cut = len(pending) - scan.hold
            out, self._pending = pending[:cut], pending[cut:]
        if self._at_start and out.strip():
            self._at_start = False
        return out

    def end(self) -> tuple[str, list[ToolCall]]:
        """The text ended: the content still to send and the calls (none when the kept text is not calls)."""
        if self._capture is None:
            rest, self._pending = self._pending, ""
            return rest, []
        kept = "".join(self._capture)
        self._capture = []
        parsed = parse_tool_calls(self._fmt, kept, self._names)
        if parsed is None:
            return kept, []
        return parsed.content or "", parsed.calls
