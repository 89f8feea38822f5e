"""User plug-ins loaded by dotted path in the tests, written like a user would (the original signatures)."""

from __future__ import annotations

from typing import Any


def add_field(ip: Any, cfg: Any = None) -> Any:
    """A legacy sync mapper: ``(payload, cfg) -> payload``."""
    out = dict(ip)
    out["mapped_by"] = "add_field"
    out["entry_path"] = cfg.get("path") if cfg is not None else None
    return out


async def wrap_answer(ip: Any, cfg: Any = None) -> Any:
    """An async answer mapper."""
    return {"wrapped": ip}


def shout(messages: list[dict[str, Any]], cfg: Any) -> tuple[str, str]:
    """A legacy prompter: ``(messages, cfg) -> (prompt, stop)``."""
    return " | ".join(m["content"].upper() for m in messages), "STOP"


NOT_CALLABLE = 42
