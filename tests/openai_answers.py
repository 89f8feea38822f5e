"""What the OpenAI-compatible test upstream answers: request checks, steerable answers, bodies and stream chunks.

Pure code, no I/O (the server is ``tests/openai_upstream.py``). Directives in the last user message (or in the
prompt of a legacy completion) steer the answer; the last one of each kind wins, except ``<<tool:…>>``:

* ``<<say:TEXT>>``        answer exactly TEXT;
* ``<<tokens:N>>``        answer N words, ``w1 w2 … wN``;
* ``<<delay:MS>>``        wait MS ms before the answer, and before each content or tool-call chunk of a stream;
* ``<<error_after:N>>``   a stream sends N content chunks, then an ``{"error": …}`` event and ends (a 500 when not
  streamed);
* ``<<cut_after:N>>``     a stream sends N content chunks, then the connection is dropped (at once when not
  streamed);
* ``<<tool:NAME:JSON>>``  answer with a call of tool NAME with arguments JSON (several give several calls).

Without ``<<say>>``/``<<tokens>>`` the answer is ``"{replica} says: {text}"``, the user's text without directives.
A word with the space before it is one token; ``max_tokens`` and ``stop`` cut the answer as a model would.
"""

from __future__ import annotations

import base64
import hashlib
import math
import re
import secrets
import struct
from dataclasses import dataclass, field
from typing import Any

_DIRECTIVE_RE = re.compile(r"<<(say|tokens|delay|error_after|cut_after)(?::(.*?))?>>", re.DOTALL)
_TOOL_RE = re.compile(r"<<tool:([^:>]+):(.*?)>>", re.DOTALL)
_PIECE_RE = re.compile(r"\s*\S+(?:\s+$)?")
EMBEDDING_SIZE = 8
SIMULATED_FAILURE = "simulated failure"


class RequestError(Exception):
    """A request the upstream refuses: ``status`` and an OpenAI-shaped body (see :func:`error_body`)."""

    def __init__(self, status: int, message: str, param: str | None = None, kind: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.kind = kind or error_type(status)

    def body(self) -> dict[str, Any]:
        return error_body(self.status, self.message, self.param, self.kind)


def error_type(status: int) -> str:
    return {
        400: "BadRequestError",
        401: "AuthenticationError",
        403: "PermissionDeniedError",
        404: "NotFoundError",
        429: "RateLimitError",
    }.get(status, "InternalServerError" if status >= 500 else "BadRequestError")


def error_body(status: int, message: str, param: str | None = None, kind: str | None = None) -> dict[str, Any]:
    """The error shape of vLLM's OpenAI server: ``code`` is the HTTP status."""
    return {"error": {"message": message, "type": kind or error_type(status), "param": param, "code": status}}


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: str
    id: str = field(default_factory=lambda: "call_" + secrets.token_hex(12))

    def as_json(self) -> dict[str, Any]:
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}


@dataclass(frozen=True)
class Directives:
    say: str | None = None
    tokens: int | None = None
    delay_ms: float = 0.0
    error_after: int | None = None
    cut_after: int | None = None
    tools: tuple[tuple[str, str], ...] = ()


def parse_directives(text: str) -> Directives:
    if "<<" not in text:
        return Directives()
    found = {m.group(1): m.group(2) or "" for m in _DIRECTIVE_RE.finditer(text)}
    return Directives(
        say=found.get("say"),
        tokens=_count(found.get("tokens")),
        delay_ms=float(_count(found.get("delay")) or 0),
        error_after=_count(found.get("error_after")),
        cut_after=_count(found.get("cut_after")),
        tools=tuple((m.group(1).strip(), m.group(2).strip()) for m in _TOOL_RE.finditer(text)),
    )


def _count(text: str | None) -> int | None:
    if text is None:
        return None
    try:
        value = int(float(text.strip()))
    except ValueError:
        return None
    return value if value >= 0 else None


def without_directives(text: str) -> str:
    return " ".join(_TOOL_RE.sub(" ", _DIRECTIVE_RE.sub(" ", text)).split())


def pieces(text: str) -> list[str]:
    """The tokens of ``text``: each word with the whitespace before it; they add up to ``text``."""
    found: list[str] = _PIECE_RE.findall(text)
    return found or ([text] if text else [])


def message_text(content: Any) -> str:
    """The text of a message's ``content``: a string, or a list of parts whose ``text`` parts are read."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


@dataclass
class Answer:
    """One choice: ``text`` (None for tool calls), how it ended and what it cost."""

    text: str | None
    finish_reason: str
    completion_tokens: int
    tool_calls: list[ToolCall] = field(default_factory=list)

    @property
    def chunks(self) -> list[str]:
        return pieces(self.text or "")


def answer(replica: str, said: str, max_tokens: int | None, stops: list[str]) -> Answer:
    """The answer to ``said`` (the last user text or a prompt), cut by ``max_tokens`` and ``stops``."""
    directives = parse_directives(said)
    if directives.tools:
        calls = [ToolCall(name, arguments) for name, arguments in directives.tools]
        return Answer(None, "tool_calls", sum(len(pieces(c.arguments)) + 1 for c in calls), calls)
    if directives.say is not None:
        full = directives.say
    elif directives.tokens is not None:
        full = " ".join(f"w{i + 1}" for i in range(directives.tokens))
    else:
        full = f"{replica} says: {without_directives(said)}"
    text, count = "", 0
    for piece in pieces(full):
        if max_tokens is not None and count >= max_tokens:
            return Answer(text, "length", count)
        candidate = text + piece
        hits = [candidate.find(s) for s in stops if s and s in candidate]
        count += 1
        if hits:
            return Answer(candidate[: min(hits)], "stop", count)
        text = candidate
    return Answer(text, "stop", count)


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def prompt_tokens(texts: list[str]) -> int:
    return max(1, sum(len(pieces(t)) for t in texts))


def argument_pieces(arguments: str, parts: int = 3) -> list[str]:
    """A tool call's arguments in several pieces, as a model streams them."""
    if not arguments:
        return []
    size = max(1, math.ceil(len(arguments) / parts))
    return [arguments[i : i + size] for i in range(0, len(arguments), size)]


# ---------------------------------------------------------------------------------------------- request checks


def check_model(data: dict[str, Any], models: list[str]) -> str:
    model = data.get("model")
    if not isinstance(model, str) or not model:
        raise RequestError(400, "Field required: 'model' must be a non-empty string.", "model")
    if model not in models:
        raise RequestError(404, f"The model `{model}` does not exist.", "model")
    return model


def check_common(data: dict[str, Any], *, chat: bool) -> tuple[bool, int | None, list[str], bool]:
    """``stream``, ``max_tokens`` (``max_completion_tokens`` for chat), ``stop`` and ``include_usage``."""
    stream = data.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise RequestError(400, "'stream' must be a boolean.", "stream")
    name = "max_completion_tokens" if chat and data.get("max_completion_tokens") is not None else "max_tokens"
    limit = data.get(name)
    if limit is None and not chat:
        limit = 16
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < (1 if chat else 0)):
        raise RequestError(400, f"'{name}' must be an integer of at least {1 if chat else 0}.", name)
    stop = data.get("stop")
    stops = [stop] if isinstance(stop, str) else stop if stop is not None else []
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise RequestError(400, "'stop' must be a string or a list of strings.", "stop")
    options = data.get("stream_options")
    if options is not None and (not isinstance(options, dict) or not stream):
        raise RequestError(
            400, "'stream_options' is only allowed (as an object) when 'stream' is true.", "stream_options"
        )
    include_usage = bool(options and options.get("include_usage"))
    return stream, limit, stops, include_usage


def check_messages(data: dict[str, Any]) -> list[dict[str, Any]]:
    messages = data.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError(400, "'messages' must be a non-empty list.", "messages")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise RequestError(400, f"messages[{i}] must be an object with a 'role'.", "messages")
    return messages


def last_user_text(messages: list[dict[str, Any]]) -> str:
    for message in reversed(messages):
        if message.get("role") == "user":
            return message_text(message.get("content"))
    return ""


def check_prompts(data: dict[str, Any]) -> list[str]:
    prompt = data.get("prompt")
    if isinstance(prompt, str):
        return [prompt]
    if isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
        return prompt
    raise RequestError(400, "'prompt' must be a string or a non-empty list of strings.", "prompt")


def check_inputs(data: dict[str, Any]) -> list[str]:
    value = data.get("input")
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return value
    if isinstance(value, list) and value and all(isinstance(v, int) for v in value):
        return [" ".join(map(str, value))]
    raise RequestError(400, "'input' must be a string or a non-empty list of strings.", "input")


def embedding(text: str, size: int = EMBEDDING_SIZE) -> list[float]:
    """A deterministic unit vector for ``text``."""
    digest = b""
    while len(digest) < size:
        digest += hashlib.sha256(text.encode() + len(digest).to_bytes(2, "little")).digest()
    raw = [b / 127.5 - 1.0 for b in digest[:size]]
    norm = math.sqrt(sum(x * x for x in raw)) or 1.0
    return [round(x / norm, 6) for x in raw]


def encode_embedding(vector: list[float], encoding_format: str) -> list[float] | str:
    if encoding_format == "base64":
        return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
    return vector
