"""Anthropic Messages in front of TGI: the Anthropic codecs composed with the OpenAI ⇄ TGI mappers.

* ``messagesReqAnthropicToTGI``: Anthropic request → OpenAI chat request → the OpenAI ⇄ TGI chat request mapper
  (the route's template renders the messages and the tools; ``top_k`` is TGI's own). Streams ask for usage.
* ``messagesAnsTGItoAnthropic``: TGI answer → OpenAI chat answer (the OpenAI ⇄ TGI answer mapper) → Anthropic
  message; TGI event stream → OpenAI chunks (its stream translator) → Anthropic events. Which stop sequence ended
  the generation is read from the text TGI generated, against every stop the TGI layer cut on: one of the
  client's ``stop_sequences`` is a ``stop_sequence``, the template's own end of turn an ``end_turn``.
* ``countTokensReqAnthropicToTGI`` / ``countTokensAnsTGItoAnthropic``: ``/v1/messages/count_tokens`` → TGI
  ``/tokenize`` of the prompt the template renders (system and tools included) → ``{"input_tokens": N}``.

Errors of the OpenAI layer name the Anthropic fields (``stop_sequences``, not ``stop``).
"""

from __future__ import annotations

from typing import Any

import orjson

from ..errors import BadRequest, GatewayError, UpstreamError
from ..plugin import Fanout, MappingContext, StreamTranslator
from ..prompters.messages import check_messages
from ..sse import SSEDecoder
from ._anthropic_common import anthropic_state, matched_stop, rename_param
from ._common import state_of
from ._tgi_errors import status_error
from .anthropic_answer import encode_answer
from .anthropic_request import decode_request
from .anthropic_stream import AnthropicStream
from .openai_tgi import chat_request
from .openai_tgi_answers import chat_answer

__all__ = [
    "CountTokensAnswer",
    "MessagesAnswerFromTGI",
    "count_tokens_answer",
    "count_tokens_request",
    "messages_answer",
    "messages_request",
]


async def messages_request(payload: Any, ctx: MappingContext) -> Any:
    """Anthropic Messages request → TGI ``/generate`` (``/generate_stream``) request."""
    request = decode_request(payload, ctx)
    if request.get("stream"):
        request["stream_options"] = {"include_usage": True}
    ctx.payload = request  # what the prompter (tools) and the OpenAI ⇄ TGI layer read
    try:
        mapped: dict[str, Any] | Fanout = await chat_request(request, ctx)
    except GatewayError as exc:
        raise rename_param(exc) from None
    return mapped


def _generated_text(payload: Any) -> str:
    item = payload[0] if isinstance(payload, list) and payload else payload
    if isinstance(item, list) and item:  # ``POST /`` answers a one-element list
        item = item[0]
    text = item.get("generated_text") if isinstance(item, dict) else None
    return text if isinstance(text, str) else ""


class _GeneratedText:
    """The text a TGI event stream generated (special tokens left out), to tell which stop sequence matched."""

    __slots__ = ("decoder", "parts", "stops")

    def __init__(self, stops: tuple[str, ...]) -> None:
        self.decoder = SSEDecoder()
        self.parts: list[str] = []
        self.stops = stops

    def feed(self, data: bytes) -> None:
        self._events(self.decoder.feed(data))

    def flush(self) -> None:
        self._events(self.decoder.flush())

    def _events(self, events: list[str]) -> None:
        for data in events:
            if '"token"' not in data:
                continue
            try:
                event = orjson.loads(data)
            except orjson.JSONDecodeError:
                continue  # the TGI translator reports it
            token = event.get("token") if isinstance(event, dict) else None
            if isinstance(token, dict) and not token.get("special") and isinstance(token.get("text"), str):
                self.parts.append(token["text"])

    def matched(self) -> str | None:
        return matched_stop("".join(self.parts), self.stops)


class _ThroughOpenAI:
    """A TGI → OpenAI stream translator followed by the OpenAI → Anthropic one."""

    content_type = "text/event-stream"

    __slots__ = ("_inner", "_outer", "_text")

    def __init__(self, inner: StreamTranslator, outer: AnthropicStream, text: _GeneratedText | None) -> None:
        self._inner = inner
        self._outer = outer
        self._text = text

    def feed(self, index: int, data: bytes) -> bytes:
        if self._text is not None:
            self._text.feed(data)  # first: the outer translator may ask which stop matched
        return self._outer.feed(0, self._inner.feed(index, data))

    def end(self, index: int) -> bytes:
        if self._text is not None:
            self._text.flush()
        return self._outer.feed(0, self._inner.end(index))

    def finish(self) -> bytes:
        tail = self._outer.feed(0, self._inner.finish())
        return tail + self._outer.end(0) + self._outer.finish()

    def fail(self, error: GatewayError) -> bytes:
        return self._outer.fail(error)


class MessagesAnswerFromTGI:
    """TGI answers, streams and errors → Anthropic's, through the OpenAI ⇄ TGI answer mapper."""

    __slots__ = ()

    #: the gateway renders the errors of routes with this answer mapper in Anthropic's shape
    error_format = "anthropic"

    def __call__(self, payload: Any, ctx: MappingContext) -> dict[str, Any]:
        answer = chat_answer(payload, ctx)
        matched = matched_stop(_generated_text(payload), state_of(ctx, True).stops)
        return encode_answer(answer, anthropic_state(ctx), matched)

    def stream(self, ctx: MappingContext) -> StreamTranslator:
        state = anthropic_state(ctx)
        text = _GeneratedText(state_of(ctx, True).stops) if state.stops else None
        outer = AnthropicStream(state, ctx, stop_finder=text.matched if text is not None else None)
        return _ThroughOpenAI(chat_answer.stream(ctx), outer, text)

    def error(self, status: int, body: bytes, ctx: MappingContext) -> GatewayError | None:
        error = chat_answer.error(status, body, ctx)
        return rename_param(error) if error is not None else None


async def count_tokens_request(payload: Any, ctx: MappingContext) -> dict[str, Any]:
    """``/v1/messages/count_tokens`` request → TGI ``/tokenize`` request of the prompt the template renders."""
    request = decode_request(payload, ctx, count_tokens=True)
    ctx.payload = request  # the prompter offers the request's tools to the template
    try:
        prompt = await ctx.render(check_messages(request["messages"]))
    except GatewayError as exc:
        raise rename_param(exc) from None
    if not prompt.text:
        raise BadRequest("messages: the rendered prompt is empty", param="messages")
    return {"inputs": prompt.text}


class CountTokensAnswer:
    """TGI ``/tokenize`` answer (the list of tokens) → ``{"input_tokens": N}``."""

    __slots__ = ()

    error_format = "anthropic"

    def __call__(self, payload: Any, ctx: MappingContext) -> dict[str, Any]:
        if not isinstance(payload, list):
            raise UpstreamError("the model server's answer is not a TGI tokenize answer")
        return {"input_tokens": len(payload)}

    def error(self, status: int, body: bytes, ctx: MappingContext) -> GatewayError | None:
        headers = ctx.reply_headers[-1] if ctx.reply_headers else None
        error = status_error(status, body, headers, True)
        return rename_param(error) if error is not None else None


#: ``messagesAnsTGItoAnthropic``
messages_answer = MessagesAnswerFromTGI()
#: ``countTokensAnsTGItoAnthropic``
count_tokens_answer = CountTokensAnswer()
