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


def fan_out_twice(ip: Any, cfg: Any) -> Any:
    """A request mapper that sends two requests at once."""
    from mooltiproxy import Fanout

    return Fanout([{"copy": 1, **ip}, {"copy": 2, **ip}])


def count_answers(ip: Any, cfg: Any) -> Any:
    return {"answers": len(ip), "copies": sorted(a["body"] for a in ip)}


def crash(ip: Any, cfg: Any) -> Any:
    raise KeyError("a bug in a user mapper")


def stream_request(ip: Any, cfg: Any) -> Any:
    cfg.stream = True
    return ip


class _UpperTranslator:
    """A user stream translator: upper-cases every upstream chunk, and breaks on the word 'boom'."""

    content_type = "text/plain"

    def feed(self, index: int, data: bytes) -> bytes:
        if b"boom" in data:
            raise RuntimeError("translator bug")
        return data.upper()

    def end(self, index: int) -> bytes:
        return b""

    def finish(self) -> bytes:
        return b"[END]"

    def fail(self, error: Any) -> bytes:
        return f"[ERROR {error.status}: {error.message}]".encode()


class _UpperAnswer:
    def __call__(self, ip: Any, cfg: Any) -> Any:
        return ip

    def stream(self, cfg: Any) -> _UpperTranslator:
        return _UpperTranslator()


upper_stream = _UpperAnswer()
