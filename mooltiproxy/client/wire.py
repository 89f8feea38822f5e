"""What the upstream client's parts share: its errors, an origin, the request's bytes, bounded waits (no I/O)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

#: seconds an idle connection is kept for reuse
KEEPALIVE_SECONDS = 15.0
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


class ClientError(Exception):
    """The request to a target failed; the subclasses say how."""


class ConnectFailed(ClientError):
    """No connection: refused, unreachable, or the name does not resolve."""


class ConnectTimeout(ClientError):
    """No connection within the connect timeout."""


class Disconnected(ClientError):
    """The target closed or reset the connection before its answer was complete."""

    def __init__(self, message: str, *, answered: bool) -> None:
        super().__init__(message)
        #: some of the answer had arrived (the target may have processed the request)
        self.answered = answered


class ReadTimeout(ClientError):
    """No answer, or no next chunk of it, within the read timeout (or no free connection in that time)."""


class BadResponse(ClientError):
    """What the target sent is not HTTP/1.1."""


class InvalidHeader(ClientError):
    """A header to send contains a line break or a NUL: it would split the request."""


@dataclass(frozen=True)
class Origin:
    """Where requests go: scheme, host and port, and the ``Host`` header's value."""

    scheme: str
    host: str
    port: int

    @property
    def host_header(self) -> str:
        default = 443 if self.scheme == "https" else 80
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == default else f"{host}:{self.port}"


def bounded(fut: asyncio.Future[Any], timeout: float) -> asyncio.TimerHandle:
    """Fail ``fut`` with ``ReadTimeout`` unless it is done within ``timeout``; cancel the handle when it is."""

    def expire() -> None:
        if not fut.done():
            fut.set_exception(ReadTimeout(f"no answer within {timeout:g} s"))

    return asyncio.get_running_loop().call_later(timeout, expire)


def encode_request(
    method: str, target: str, origin: Origin, headers: Iterable[tuple[str, str]], body: bytes | None
) -> bytes:
    """The request's bytes; a header that would split the request (CR, LF or NUL in it) is refused."""
    lines = [f"{method} {target} HTTP/1.1", f"Host: {origin.host_header}"]
    for name, value in headers:
        lines.append(f"{name}: {value}")
    if body or method in BODY_METHODS:
        lines.append(f"Content-Length: {len(body) if body else 0}")
    head = "\r\n".join(lines)
    # every CR and LF is one of the separators just put in, else a value carried its own
    breaks = len(lines) - 1
    if head.count("\n") != breaks or head.count("\r") != breaks or "\x00" in head:
        raise InvalidHeader("a header sent to the target contains a line break or a NUL")
    try:
        encoded = (head + "\r\n\r\n").encode("utf-8", "surrogateescape")  # the bytes the client sent, as they came
    except UnicodeEncodeError as exc:
        raise InvalidHeader("a header sent to the target cannot be encoded") from exc
    return encoded + body if body else encoded


def phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""
