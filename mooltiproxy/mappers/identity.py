"""The identity mapper: the payload goes through unchanged."""

from __future__ import annotations

from typing import Any

from ..plugin import MappingContext

__all__ = ["identity"]


def identity(payload: Any, ctx: MappingContext) -> Any:
    """Return ``payload`` as it is."""
    return payload
