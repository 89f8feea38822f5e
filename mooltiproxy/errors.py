"""Errors the gateway answers with, in OpenAI's error shape.

Every error a client can see is a ``GatewayError``: it knows its HTTP status and the OpenAI ``error.type``,
so one function renders them all as ``{"error": {"message", "type", "param", "code"}}``.

* GatewayError                  500 server_error
  - BadRequest                  400 invalid_request_error   (mappers and prompters raise this)
  - Unauthorized                401 invalid_request_error / invalid_api_key
  - Forbidden                   403 permission_error         (blacklisted or banned client)
  - NotFound                    404 invalid_request_error    (unknown target, unmapped path)
  - MethodNotAllowed            405 invalid_request_error    (carries the ``Allow`` header)
  - PayloadTooLarge             413 invalid_request_error
  - UnsupportedMediaType        415 invalid_request_error
  - UpstreamError               502 upstream_error           (target unreachable, broken answer)
    - UpstreamTimeout           504 timeout
    - UpstreamStatus            any status an upstream error is translated to (e.g. 422, 429, 424)

On Anthropic routes the same errors are rendered in Anthropic's shape, ``{"type": "error", "error": {"type",
"message"}}``, with the Anthropic error type that matches the status (``anthropic_json``).

``ConfigError`` is not an HTTP error: it lists every problem found in a config file, each with its YAML path.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import orjson

__all__ = [
    "BadRequest",
    "ConfigError",
    "Forbidden",
    "GatewayError",
    "MethodNotAllowed",
    "NotFound",
    "PayloadTooLarge",
    "Unauthorized",
    "UnsupportedMediaType",
    "UpstreamError",
    "UpstreamStatus",
    "UpstreamTimeout",
    "anthropic_type",
]

#: Anthropic's error type for each status it documents; other 4xx are invalid requests, other 5xx API errors
_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}


def anthropic_type(status: int) -> str:
    """The Anthropic ``error.type`` for an HTTP status."""
    known = _ANTHROPIC_TYPES.get(status)
    if known is not None:
        return known
    return "invalid_request_error" if status < 500 else "api_error"


class GatewayError(Exception):
    """An error answered to the client with ``status`` and an OpenAI-shaped body."""

    status: int = 500
    type: str = "server_error"
    code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        status: int | None = None,
        type: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        if type is not None:
            self.type = type
        self.headers: dict[str, str] = dict(headers or {})

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def to_json(self) -> bytes:
        return orjson.dumps(self.body())

    def anthropic_body(self) -> dict[str, Any]:
        return {"type": "error", "error": {"type": anthropic_type(self.status), "message": self.message}}

    def anthropic_json(self) -> bytes:
        return orjson.dumps(self.anthropic_body())


class BadRequest(GatewayError):
    status = 400
    type = "invalid_request_error"


class Unauthorized(GatewayError):
    status = 401
    type = "invalid_request_error"
    code = "invalid_api_key"


class Forbidden(GatewayError):
    status = 403
    type = "permission_error"


class NotFound(GatewayError):
    status = 404
    type = "invalid_request_error"


class MethodNotAllowed(GatewayError):
    status = 405
    type = "invalid_request_error"
    code = "method_not_allowed"


class PayloadTooLarge(GatewayError):
    status = 413
    type = "invalid_request_error"
    code = "payload_too_large"


class RequestTimeout(GatewayError):
    status = 408
    type = "invalid_request_error"
    code = "request_timeout"


class UnsupportedMediaType(GatewayError):
    status = 415
    type = "invalid_request_error"
    code = "unsupported_media_type"


class UpstreamError(GatewayError):
    status = 502
    type = "upstream_error"
    code = "bad_gateway"


class UpstreamTimeout(UpstreamError):
    status = 504
    type = "timeout"
    code = "upstream_timeout"


class UpstreamStatus(UpstreamError):
    """An error answer of the upstream, translated (its status is whatever fits best, e.g. 422 or 429)."""


class ConfigError(ValueError):
    """Every problem found in a configuration, each as ``"<yaml path>: <message>"``."""

    def __init__(self, problems: Sequence[str], source: str = "config") -> None:
        self.problems = list(problems)
        self.source = source
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{source}: {len(self.problems)} problem(s):\n{lines}")
