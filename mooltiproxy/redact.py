"""Redaction of secrets in debug logs: known keys by value, and credential-like fields by name."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import orjson

__all__ = ["Redactor"]

_SECRET_NAMES = re.compile(
    r"(authorization|api[_-]?key|secret|password|passwd|(access|auth|refresh|bearer)[_-]?token)", re.I
)
MASK = "***"
#: nesting logged at most (orjson writes 255 levels)
MAX_DEPTH = 64


class Redactor:
    def __init__(self, secrets: Iterable[str]) -> None:
        self._secrets = [s for s in secrets if s]

    def clean(self, value: Any, depth: int = 0) -> Any:
        if depth > MAX_DEPTH:
            return "…"
        if isinstance(value, dict):
            return {k: (MASK if _SECRET_NAMES.search(str(k)) else self.clean(v, depth + 1)) for k, v in value.items()}
        if isinstance(value, list):
            return [self.clean(v, depth + 1) for v in value]
        if isinstance(value, str):
            for secret in self._secrets:
                if secret in value:
                    value = value.replace(secret, MASK)
        return value

    def dumps(self, value: Any) -> str:
        """The value as JSON with secrets masked; never raises (a debug log must not fail a request)."""
        try:
            return orjson.dumps(self.clean(value)).decode()
        except (TypeError, ValueError) as exc:
            return f"<not loggable: {exc}>"
