"""OpenAI chat answers → Anthropic messages, and OpenAI-style error answers → errors with the same status.

* ``content``: the text (when not empty) as a ``text`` block, then one ``tool_use`` block per tool call
  (``id`` ``toolu_…``, ``input`` the parsed ``arguments``, which must be a JSON object);
* ``stop_reason``: ``length`` → ``max_tokens``; tool calls (or ``tool_calls``) → ``tool_use``;
  ``content_filter`` → ``refusal``; ``stop`` → ``stop_sequence`` when the stop that matched is one of the client's
  ``stop_sequences`` (named in ``stop_sequence``), else ``end_turn``. Which stop matched comes from the back-end:
  vLLM's ``stop_reason`` in the choice, or what the TGI back-end saw;
* ``usage``: ``prompt_tokens`` → ``input_tokens``, ``completion_tokens`` → ``output_tokens``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from ..errors import GatewayError, UpstreamError, UpstreamStatus
from ._anthropic_common import AnthropicState, tool_id_out
from ._common import header

__all__ = ["encode_answer", "openai_error", "stop_reason", "tool_input", "usage_of"]

_REASONS = {"length": "max_tokens", "tool_calls": "tool_use", "function_call": "tool_use", "content_filter": "refusal"}


def stop_reason(finish: Any, matched: Any, stops: tuple[str, ...], tool_calls: bool) -> tuple[str, str | None]:
    """Anthropic ``(stop_reason, stop_sequence)`` for an OpenAI ``finish_reason`` and the stop that matched."""
    reason = _REASONS.get(finish) if isinstance(finish, str) else None
    if reason is not None:
        return reason, None
    if tool_calls:
        return "tool_use", None
    if isinstance(matched, str) and matched in stops:
        return "stop_sequence", matched
    return "end_turn", None


def tool_input(arguments: Any) -> dict[str, Any]:
    """The ``input`` object of a tool call from its JSON ``arguments`` (empty: ``{}``)."""
    if isinstance(arguments, dict):
        return arguments
    if arguments is None or (isinstance(arguments, str) and not arguments.strip()):
        return {}
    try:
        value = orjson.loads(arguments) if isinstance(arguments, str) else None
    except orjson.JSONDecodeError:
        value = None
    if not isinstance(value, dict):
        raise UpstreamError("the model's tool call arguments are not a JSON object")
    return value


def usage_of(usage: Any) -> tuple[int | None, int | None]:
    """``(prompt_tokens, completion_tokens)`` of an OpenAI ``usage`` object, None when missing."""
    if not isinstance(usage, dict):
        return None, None
    prompt = usage.get("prompt_tokens")
    completion = usage.get("completion_tokens")
    return (
        prompt if isinstance(prompt, int) and not isinstance(prompt, bool) else None,
        completion if isinstance(completion, int) and not isinstance(completion, bool) else None,
    )


def encode_answer(answer: Any, state: AnthropicState, matched: str | None = None) -> dict[str, Any]:
    """An OpenAI chat answer as an Anthropic message. ``matched``: the stop the back-end saw, when it knows."""
    if not isinstance(answer, dict):
        raise UpstreamError("the model server's answer is not an OpenAI chat completion")
    choices = answer.get("choices")
    choice = choices[0] if isinstance(choices, list) and choices else None
    if not isinstance(choice, dict) or not isinstance(choice.get("message"), dict):
        raise UpstreamError("the model server's answer has no choice")
    message: dict[str, Any] = choice["message"]
    content: list[dict[str, Any]] = []
    text = message.get("content")
    if isinstance(text, list):  # content parts
        text = "".join(p.get("text", "") for p in text if isinstance(p, dict) and isinstance(p.get("text"), str))
    if isinstance(text, str) and text:
        content.append({"type": "text", "text": text})
    calls = message.get("tool_calls")
    for call in calls if isinstance(calls, list) else ():
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict):
            continue
        name = function.get("name")
        content.append(
            {
                "type": "tool_use",
                "id": tool_id_out(call.get("id")),
                "name": name if isinstance(name, str) else "",
                "input": tool_input(function.get("arguments")),
            }
        )
    if matched is None:
        matched = choice.get("stop_reason")  # vLLM: the stop string that ended the generation
    reason, sequence = stop_reason(
        choice.get("finish_reason"), matched, state.stops, any(b["type"] == "tool_use" for b in content)
    )
    prompt, completion = usage_of(answer.get("usage"))
    return {
        "id": state.id,
        "type": "message",
        "role": "assistant",
        "model": state.model,
        "content": content,
        "stop_reason": reason,
        "stop_sequence": sequence,
        "usage": {"input_tokens": prompt or 0, "output_tokens": completion or 0},
    }


def _message(body: bytes) -> str | None:
    text = body.strip()
    if text[:1] != b"{":
        return text.decode("utf-8", "replace")[:1000] or None
    try:
        parsed = orjson.loads(text)
    except orjson.JSONDecodeError:
        return text.decode("utf-8", "replace")[:1000]
    if not isinstance(parsed, dict):
        return None
    error = parsed.get("error")
    for source in (error, parsed):  # OpenAI: {"error": {"message"}}; vLLM: {"message"}; FastAPI: {"detail"}
        if isinstance(source, dict):
            for key in ("message", "detail"):
                value = source.get(key)
                if isinstance(value, str) and value:
                    return value
                if value is not None and key == "detail":
                    return orjson.dumps(value).decode()[:1000]
    return error if isinstance(error, str) and error else None


def openai_error(status: int, body: bytes, headers: Mapping[str, str] | None) -> GatewayError | None:
    """An OpenAI-style error answer as an error with the same status and message (None below 400)."""
    if status < 400:
        return None
    message = _message(body) or f"the model server answered HTTP {status}"
    retry = header(headers, "retry-after") if headers else None
    kind = "invalid_request_error" if status < 500 else "server_error"
    return UpstreamStatus(message, status=status, type=kind, headers={"Retry-After": retry} if retry else None)
