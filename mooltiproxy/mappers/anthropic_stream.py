"""OpenAI ``chat.completion.chunk`` event streams → Anthropic Messages event streams (sans-IO).

Events go out as ``event: NAME\\ndata: JSON\\n\\n``, in the order the Anthropic SDK's accumulator expects:

1. one ``message_start`` (the message with empty ``content``; ``usage.input_tokens`` is the best value known at
   the start: the ``x-prompt-tokens`` header TGI sends, else 0), with the first chunk;
2. per content block, ``content_block_start`` / ``content_block_delta`` / ``content_block_stop`` with indices
   0, 1, 2…: text (``text_delta``) and tool calls (``tool_use`` started with ``input: {}``, the arguments as
   ``input_json_delta`` pieces). Blocks do not interleave: a new block closes the open one;
3. once the upstream stream is over, ``message_delta`` (``stop_reason``, ``stop_sequence``, and the usage the last
   chunk reported: ``output_tokens`` and ``input_tokens``, which the SDK keeps) and ``message_stop``.

Only choice 0 is read (the Anthropic API has no ``n``). An upstream error event raises the error with its status;
so does a stream that ends before a ``finish_reason``. ``fail(error)`` is an ``event: error`` with Anthropic's error
body.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson

from ..errors import GatewayError, UpstreamError, UpstreamStatus
from ..plugin import USAGE_COUNTS, MappingContext
from ..sse import SSEDecoder
from ._anthropic_common import AnthropicState, tool_id_out
from ._common import int_header
from .anthropic_answer import stop_reason, usage_of

__all__ = ["AnthropicStream", "sse_event"]

_TEXT = "text"


def sse_event(name: str, data: dict[str, Any]) -> bytes:
    """One named server-sent event."""
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


def _stream_error(error: Any) -> GatewayError:
    message = error.get("message") if isinstance(error, dict) else error
    if not isinstance(message, str) or not message:
        message = "the model server reported an error"
    code = error.get("code") if isinstance(error, dict) else None
    status = code if isinstance(code, int) and not isinstance(code, bool) and 400 <= code <= 599 else 502
    return UpstreamStatus(message, status=status)


class AnthropicStream:
    """``StreamTranslator`` of one OpenAI chat event stream into an Anthropic event stream.

    ``stop_finder``: called when the upstream finished on a stop without naming it (vLLM names it in the
    choice's ``stop_reason``), to learn which stop sequence matched.
    """

    content_type = "text/event-stream"

    __slots__ = (
        "_block",
        "_closed",
        "_ctx",
        "_decoder",
        "_finish",
        "_matched",
        "_next",
        "_output",
        "_prompt",
        "_started",
        "_state",
        "_stop_finder",
        "_tools",
    )

    def __init__(
        self, state: AnthropicState, ctx: MappingContext, *, stop_finder: Callable[[], str | None] | None = None
    ) -> None:
        self._state = state
        self._ctx = ctx
        self._stop_finder = stop_finder
        self._decoder = SSEDecoder()
        self._started = False
        self._closed = False  # message_stop went out
        self._next = 0  # index of the next content block
        self._block: int | str | None = None  # the open block: _TEXT, an upstream tool-call index, or None
        self._tools: dict[int, int] = {}  # upstream tool-call index → its block index
        self._finish: str | None = None  # the upstream's finish_reason
        self._matched: str | None = None
        self._prompt: int | None = None
        self._output: int | None = None

    # -- StreamTranslator

    def feed(self, index: int, data: bytes) -> bytes:
        out: list[bytes] = []
        for event in self._decoder.feed(data):
            self._event(event, out)
        return b"".join(out)

    def end(self, index: int) -> bytes:
        out: list[bytes] = []
        for event in self._decoder.flush():
            self._event(event, out)
        if self._finish is None:
            raise UpstreamError("upstream stream ended before the generation finished")
        return b"".join(out)

    def finish(self) -> bytes:
        if self._finish is None:
            raise UpstreamError("upstream stream ended before the generation finished")
        if self._closed:
            return b""
        self._closed = True
        self._ctx.state[USAGE_COUNTS] = (self._prompt, self._output)
        reason, sequence = stop_reason(self._finish, self._matched, self._state.stops, bool(self._tools))
        usage: dict[str, int] = {"output_tokens": self._output or 0}
        if self._prompt is not None:
            usage["input_tokens"] = self._prompt
        delta = {"type": "message_delta", "delta": {"stop_reason": reason, "stop_sequence": sequence}, "usage": usage}
        return sse_event("message_delta", delta) + sse_event("message_stop", {"type": "message_stop"})

    def fail(self, error: GatewayError) -> bytes:
        return b"event: error\ndata: " + error.anthropic_json() + b"\n\n"

    # -- upstream events

    def _event(self, data: str, out: list[bytes]) -> None:
        if not data or data == "[DONE]":
            return
        try:
            chunk = orjson.loads(data)
        except orjson.JSONDecodeError:
            raise UpstreamError("the model server sent an event that is not JSON") from None
        if not isinstance(chunk, dict):
            raise UpstreamError("the model server sent an event that is not a JSON object")
        if chunk.get("error") is not None:
            raise _stream_error(chunk["error"])
        if not self._started:
            self._start(out)
        prompt, output = usage_of(chunk.get("usage"))
        if prompt is not None:
            self._prompt = prompt
        if output is not None:
            self._output = output
        choices = chunk.get("choices")
        if not isinstance(choices, list):
            return
        for choice in choices:
            if isinstance(choice, dict) and choice.get("index", 0) == 0 and self._finish is None:
                self._choice(choice, out)

    def _start(self, out: list[bytes]) -> None:
        self._started = True
        replies = self._ctx.reply_headers
        known = int_header(replies[0], "x-prompt-tokens") if replies else None
        message: dict[str, Any] = {
            "id": self._state.id,
            "type": "message",
            "role": "assistant",
            "model": self._state.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": known or 0, "output_tokens": 0},
        }
        out.append(sse_event("message_start", {"type": "message_start", "message": message}))

    def _choice(self, choice: dict[str, Any], out: list[bytes]) -> None:
        delta = choice.get("delta")
        if isinstance(delta, dict):
            text = delta.get("content")
            if isinstance(text, str) and text:
                self._text(text, out)
            calls = delta.get("tool_calls")
            if isinstance(calls, list):
                for position, call in enumerate(calls):
                    if isinstance(call, dict):
                        self._tool(call, position, out)
        finish = choice.get("finish_reason")
        if finish is not None:
            self._close(out)
            self._finish = finish if isinstance(finish, str) else "stop"
            matched = choice.get("stop_reason")
            if isinstance(matched, str):
                self._matched = matched
            elif self._finish == "stop" and self._stop_finder is not None:
                self._matched = self._stop_finder()

    def _text(self, text: str, out: list[bytes]) -> None:
        if self._block != _TEXT:
            self._open(_TEXT, {"type": "text", "text": ""}, out)
        delta = {"type": "content_block_delta", "index": self._next - 1, "delta": {"type": "text_delta", "text": text}}
        out.append(sse_event("content_block_delta", delta))

    def _tool(self, call: dict[str, Any], position: int, out: list[bytes]) -> None:
        key = call.get("index", position)
        if not isinstance(key, int):
            key = position
        function = call.get("function")
        if not isinstance(function, dict):
            function = {}
        block = self._tools.get(key)
        if block is None:
            name = function.get("name")
            tool_id = tool_id_out(call.get("id"))
            tool = {"type": "tool_use", "id": tool_id, "name": name if isinstance(name, str) else "", "input": {}}
            self._open(key, tool, out)
            block = self._tools[key] = self._next - 1
        elif self._block != key:
            raise UpstreamError("the model server interleaved the arguments of several tool calls")
        arguments = function.get("arguments")
        if isinstance(arguments, str) and arguments:
            delta = {"type": "input_json_delta", "partial_json": arguments}
            event = {"type": "content_block_delta", "index": block, "delta": delta}
            out.append(sse_event("content_block_delta", event))

    def _open(self, kind: int | str, block: dict[str, Any], out: list[bytes]) -> None:
        self._close(out)
        self._block = kind
        start = {"type": "content_block_start", "index": self._next, "content_block": block}
        out.append(sse_event("content_block_start", start))
        self._next += 1

    def _close(self, out: list[bytes]) -> None:
        if self._block is not None:
            out.append(sse_event("content_block_stop", {"type": "content_block_stop", "index": self._next - 1}))
            self._block = None
