"""Anthropic Messages in front of an OpenAI-compatible ``/chat/completions`` (vLLM, llama.cpp, OpenAI…).

``messagesReqAnthropicToOpenAI`` sends the decoded OpenAI chat request as it is, asking for
``stream_options.include_usage`` when the client streams, so the final ``message_delta`` carries real usage.
``messagesAnsOpenAItoAnthropic`` encodes the answer, translates the event stream and upstream errors.
"""

from __future__ import annotations

from typing import Any

from ..errors import GatewayError
from ..plugin import MappingContext, StreamTranslator
from ._anthropic_common import anthropic_state
from .anthropic_answer import encode_answer, openai_error
from .anthropic_request import decode_request
from .anthropic_stream import AnthropicStream

__all__ = ["MessagesAnswerFromOpenAI", "messages_answer", "messages_request"]


def messages_request(payload: Any, ctx: MappingContext) -> dict[str, Any]:
    """Anthropic Messages request → OpenAI chat request (streamed with usage when the client streams)."""
    request = decode_request(payload, ctx)
    if request.get("stream"):
        request["stream_options"] = {"include_usage": True}
        ctx.stream = True
    return request


class MessagesAnswerFromOpenAI:
    """OpenAI chat answers, streams and errors → Anthropic's."""

    __slots__ = ()

    #: the gateway renders the errors of routes with this answer mapper in Anthropic's shape
    error_format = "anthropic"

    def __call__(self, payload: Any, ctx: MappingContext) -> dict[str, Any]:
        return encode_answer(payload, anthropic_state(ctx))

    def stream(self, ctx: MappingContext) -> StreamTranslator:
        return AnthropicStream(anthropic_state(ctx), ctx)

    def error(self, status: int, body: bytes, ctx: MappingContext) -> GatewayError | None:
        return openai_error(status, body, ctx.reply_headers[-1] if ctx.reply_headers else None)


#: ``messagesAnsOpenAItoAnthropic``
messages_answer = MessagesAnswerFromOpenAI()
