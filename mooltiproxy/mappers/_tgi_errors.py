"""TGI error answers (JSON ``{"error","error_type"}``, axum plain-text rejections, empty 401) → OpenAI errors.

| TGI                                                  | OpenAI status / type                       |
|------------------------------------------------------|--------------------------------------------|
| ``validation`` (422), template/tool errors (422)     | 400 ``invalid_request_error`` (+ ``param``) |
| … about the prompt length                            | 400, code ``context_length_exceeded``       |
| ``overloaded`` (429)                                 | 429 ``rate_limit_error`` (+ ``Retry-After`` when given) |
| ``generation`` (424)                                 | 500 ``server_error``                        |
| ``incomplete_generation*`` (500)                     | 502 ``upstream_error``                      |
| plain-text 422 (a value TGI could not deserialize)   | 400 ``invalid_request_error``              |
| plain-text 400 / 415 to a translated request         | 502 ``upstream_error`` (the gateway's fault) |
| 413                                                  | 413 ``invalid_request_error``               |
| anything else                                        | same status                                 |
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from ..errors import GatewayError, UpstreamStatus
from ._common import header

__all__ = ["event_error", "status_error"]

_INVALID = "invalid_request_error"

# TGI parameter → (OpenAI chat parameter, OpenAI legacy parameter)
_PARAMS: dict[str, tuple[str, str]] = {
    "temperature": ("temperature", "temperature"),
    "top_p": ("top_p", "top_p"),
    "top_k": ("top_k", "top_k"),
    "typical_p": ("typical_p", "typical_p"),
    "max_new_tokens": ("max_completion_tokens", "max_tokens"),
    "stop": ("stop", "stop"),
    "seed": ("seed", "seed"),
    "best_of": ("n", "best_of"),
    "top_n_tokens": ("top_logprobs", "logprobs"),
    "frequency_penalty": ("frequency_penalty", "frequency_penalty"),
    "repetition_penalty": ("presence_penalty", "presence_penalty"),
    "truncate": ("truncate", "truncate"),
    "inputs": ("messages", "prompt"),
    "grammar": ("response_format", "response_format"),
}
_CONTEXT_LENGTH = ("`inputs` tokens + `max_new_tokens`", "`inputs` must have less than")
_CLIENT_TYPES = frozenset(
    {"validation", "template_error", "missing_template_variable", "tool_error", "suffix not supported"}
)
_BROKEN_TYPES = frozenset({"incomplete_generation", "incomplete_generation_stream", "stream_serialization_error"})


def _param(message: str, chat: bool) -> str | None:
    """The OpenAI parameter a TGI message is about: the first TGI field it names."""
    best: tuple[int, str] | None = None
    for field, names in _PARAMS.items():
        for needle in (f"`{field}`", f"parameters.{field}"):
            i = message.find(needle)
            if i != -1 and (best is None or i < best[0]):
                best = (i, names[0] if chat else names[1])
    if best is None and "grammar" in message:
        return "response_format"
    return best[1] if best else None


def _retry_after(headers: Mapping[str, str] | None) -> dict[str, str]:
    value = header(headers, "retry-after") if headers else None
    return {"Retry-After": value} if value else {}


def _translate(
    message: str,
    error_type: str | None,
    status: int | None,
    headers: Mapping[str, str] | None,
    chat: bool,
    translated: bool = True,
) -> GatewayError:
    if error_type in _CLIENT_TYPES or (error_type is None and status == 422):
        code = "context_length_exceeded" if any(s in message for s in _CONTEXT_LENGTH) else None
        param = ("messages" if chat else "prompt") if code else _param(message, chat)
        return UpstreamStatus(message, status=400, type=_INVALID, param=param, code=code)
    if error_type == "overloaded" or (error_type is None and status == 429):
        return UpstreamStatus(
            message, status=429, type="rate_limit_error", code="rate_limit_exceeded", headers=_retry_after(headers)
        )
    if error_type == "generation" or (error_type is None and status == 424):
        return UpstreamStatus(message, status=500, type="server_error", code="generation_failed")
    if error_type in _BROKEN_TYPES:
        return UpstreamStatus(message, status=502, type="upstream_error", code="incomplete_generation")
    if status is None:  # an unknown kind of error inside a stream
        return UpstreamStatus(message, status=502, type="upstream_error", code=error_type)
    if status == 413:
        return UpstreamStatus(message, status=413, type=_INVALID, code="payload_too_large")
    if status == 401:
        return UpstreamStatus(message, status=401, type=_INVALID, code="invalid_api_key")
    if status in (400, 415) and translated:  # the body was written by the gateway, not by the client
        return UpstreamStatus(f"the model server refused the gateway's request: {message}", status=502)
    if status >= 500:
        return UpstreamStatus(message, status=status, type="server_error", code=None, headers=_retry_after(headers))
    return UpstreamStatus(message, status=status, type=_INVALID, code=None)


def status_error(
    status: int, body: bytes, headers: Mapping[str, str] | None, chat: bool, *, translated: bool = True
) -> GatewayError | None:
    """Translate a non-2xx TGI answer; None for a status that is not an error.

    ``translated``: the request body was written by the request mapper (else it is the client's own).
    """
    if status < 400:
        return None
    message = ""
    error_type: str | None = None
    text = body.strip()
    if text[:1] == b"{":
        try:
            parsed: Any = orjson.loads(text)
        except orjson.JSONDecodeError:
            parsed = None
        if isinstance(parsed, dict):
            error = parsed.get("error")
            if isinstance(error, str):
                message = error
                kind = parsed.get("error_type")
                error_type = kind if isinstance(kind, str) else None
            elif isinstance(error, dict) and isinstance(error.get("message"), str):  # already OpenAI-shaped
                message = error["message"]
    if not message:
        message = text.decode("utf-8", "replace")[:1000] or f"the model server answered HTTP {status}"
    return _translate(message, error_type, status, headers, chat, translated)


def event_error(event: Mapping[str, Any], headers: Mapping[str, str] | None, chat: bool) -> GatewayError:
    """Translate an error event of a TGI stream (``{"error": "...", "error_type": "..."}``)."""
    error = event.get("error")
    if isinstance(error, dict):
        error = error.get("message")
    message = error if isinstance(error, str) and error else "the model server reported an error"
    kind = event.get("error_type")
    return _translate(message, kind if isinstance(kind, str) else None, None, headers, chat)
