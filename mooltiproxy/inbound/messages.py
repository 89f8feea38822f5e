"""The requests the gateway receives and the answers it sends: plain objects over one client connection.

A ``Request`` is built by the connection (``inbound.connection``) once its headers are in; its body arrives behind
it and ``read()`` waits for it (decoded when it came gzip- or deflate-compressed, never more than the connection's
body limit). An answer is a ``Response`` (status, headers, a body sent in one write) or a ``StreamResponse`` whose
body is written piece by piece after ``prepare``; both pass through the connection's prepare hook just before their
headers go out.
"""

from __future__ import annotations

import asyncio
import time
import zlib
from email.utils import formatdate
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

from multidict import CIMultiDict

if TYPE_CHECKING:
    from .connection import Connection

__all__ = ["BodyError", "BodyTooLarge", "Request", "Response", "StreamResponse", "json_response"]

#: answers that never carry a body (RFC 9110 §6.4.1)
_NO_BODY = frozenset({204, 304})
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_PHRASES = {status.value: status.phrase for status in HTTPStatus}


class BodyError(Exception):
    """The request's body cannot be read: broken chunking, a compressed body that does not decompress."""


class BodyTooLarge(BodyError):
    """The request's body is larger than the connection's limit (as it came, or once decompressed)."""


class Request:
    """One request: its head as parsed, its body as it arrives."""

    __slots__ = (
        "_body",
        "_complete",
        "_error",
        "_size",
        "_waiter",
        "answered",
        "connection",
        "content_length",
        "chunked",
        "headers",
        "keep_alive",
        "method",
        "path",
        "query_string",
        "served_by",
        "version",
    )

    def __init__(
        self,
        connection: Connection,
        method: str,
        path: str,
        query_string: str,
        headers: CIMultiDict[str],
        version: str,
        keep_alive: bool,
    ) -> None:
        self.connection = connection
        self.method = method
        #: percent-decoded, as the routes are written (``/%70ublic`` is ``/public``); dot segments stay as they are
        self.path = path
        self.query_string = query_string
        self.headers = headers
        self.version = version
        self.keep_alive = keep_alive
        length = headers.get("Content-Length")
        self.content_length = int(length) if length is not None else None  # llhttp has checked its digits
        self.chunked = "Transfer-Encoding" in headers
        #: the gateway that serves the request (set by ``live.Live``: the one whose prepare hook applies)
        self.served_by: Any = None
        #: the answer's head has been sent
        self.answered = False
        self._body: list[bytes] = []
        self._size = 0
        self._complete = not self.body_exists
        self._error: BodyError | None = None
        self._waiter: asyncio.Future[None] | None = None

    @property
    def remote(self) -> str | None:
        """The peer's address (not yet the client's behind a proxy: the guard decides that)."""
        return self.connection.remote

    @property
    def transport(self) -> asyncio.Transport | None:
        return self.connection.transport

    @property
    def body_exists(self) -> bool:
        return self.chunked or bool(self.content_length)

    @property
    def complete(self) -> bool:
        """The whole body has arrived (a body that failed never completes: its connection closes)."""
        return self._complete

    # -- fed by the connection

    def feed(self, data: bytes) -> None:
        if self._error is not None:
            return
        self._size += len(data)
        if self._size > self.connection.body_limit:
            self.fail(BodyTooLarge(f"the request body is larger than {self.connection.body_limit} bytes"))
            return
        self._body.append(data)

    def finish(self) -> None:
        self._complete = True
        self._wake()

    def fail(self, error: BodyError) -> None:
        self._error = error
        self._body = []
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    # -- read by the handler

    async def read(self, timeout: float | None = None) -> bytes:
        """The whole body, decompressed: ``BodyError`` (``BodyTooLarge``) when it cannot be had,
        ``asyncio.TimeoutError`` when it has not all arrived within ``timeout`` seconds."""
        if not self._complete and self._error is None:
            if not self._body and self.headers.get("Expect", "").lower() == "100-continue":
                self.connection.write(_CONTINUE)  # the client waits for this before it sends the body
            loop = asyncio.get_running_loop()
            waiter = self._waiter = loop.create_future()
            timer = None if timeout is None else loop.call_later(timeout, _expire, waiter)
            try:
                await waiter
            finally:
                self._waiter = None
                if timer is not None:
                    timer.cancel()
        if self._error is not None:
            raise self._error
        data = self._body[0] if len(self._body) == 1 else b"".join(self._body)
        encoding = self.headers.get("Content-Encoding")
        if encoding is None or not data:
            return data
        return _decoded(data, encoding.strip().lower(), self.connection.body_limit)


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(asyncio.TimeoutError())


def _decoded(data: bytes, encoding: str, limit: int) -> bytes:
    if encoding == "identity":
        return data
    if encoding in ("gzip", "x-gzip"):
        attempts: tuple[int, ...] = (16 + zlib.MAX_WBITS,)
    elif encoding == "deflate":  # zlib-wrapped as the RFC says, or raw as some clients send it
        attempts = (zlib.MAX_WBITS, -zlib.MAX_WBITS)
    else:
        raise BodyError(f"content encoding '{encoding[:40]}' is not supported (gzip, deflate)")
    for wbits in attempts:
        inflater = zlib.decompressobj(wbits)
        try:
            out = inflater.decompress(data, limit + 1)
        except zlib.error:
            continue
        if len(out) > limit:
            raise BodyTooLarge(f"the request body is larger than {limit} bytes once decompressed")
        if not inflater.eof:
            raise BodyError(f"the {encoding} body is cut short")
        return out
    raise BodyError(f"the body is not valid {encoding}")


class _Date:
    """The ``Date`` and ``Server`` header lines, formatted once a second."""

    second = 0
    value = ""

    @classmethod
    def now(cls) -> str:
        second = int(time.time())
        if second != cls.second:
            cls.second, cls.value = second, f"Date: {formatdate(second, usegmt=True)}\r\nServer: mooltiproxy\r\n"
        return cls.value


class Response:
    """An answer whose body is known in full: sent with its head in one write."""

    __slots__ = ("body", "closing", "headers", "prepared", "reason", "status")

    def __init__(
        self,
        *,
        status: int = 200,
        reason: str | None = None,
        body: bytes = b"",
        headers: Any = None,
        content_type: str | None = None,
    ) -> None:
        self.status = status
        self.reason = reason
        self.body = body
        #: a CIMultiDict given is the answer's own from then on (the proxy builds one per answer); others are copied
        self.headers: CIMultiDict[str] = headers if type(headers) is CIMultiDict else CIMultiDict(headers or ())
        if content_type is not None:
            self.headers["Content-Type"] = content_type
        #: the connection closes after this answer
        self.closing = False
        self.prepared = False

    def force_close(self) -> None:
        self.closing = True

    def _head(self, request: Request, length: int | None, chunked: bool) -> bytes:
        """The status line and headers, with the ones the connection decides: Date, Server, framing, Connection.

        ``headers`` never hold the framing ones (Content-Length, Transfer-Encoding, Connection): they are set here."""
        connection = request.connection
        connection.prepare_hook(request, self)
        status = self.status
        if not request.complete or connection.closing or not request.keep_alive:
            self.closing = True
        if status in _NO_BODY or status < 200:
            framing = ""
        elif length is not None:
            framing = f"Content-Length: {length}\r\n"
        elif chunked:
            framing = "Transfer-Encoding: chunked\r\n"
        else:
            framing = ""
            self.closing = True  # an HTTP/1.0 client: the body ends where the connection does
        if self.closing:
            framing += "Connection: close\r\n"
        elif request.version == "1.0":
            framing += "Connection: keep-alive\r\n"
        headers = self.headers
        fields = "".join([f"{name}: {value}\r\n" for name, value in headers.items()])
        reason = self.reason if self.reason is not None else _PHRASES.get(status, "")
        head = f"HTTP/1.1 {status} {reason}\r\n{_Date.now()}{fields}{framing}\r\n"
        breaks = len(headers) + framing.count("\n") + 4  # every CR and LF is a separator put in here, else a value
        if head.count("\n") != breaks or head.count("\r") != breaks:  # carried its own
            raise ValueError("an answer header contains a line break")
        self.prepared = request.answered = True
        return head.encode("utf-8", "surrogateescape")

    def send(self, request: Request) -> None:
        """Write the whole answer (the connection does, once the handler returns it)."""
        head = self._head(request, len(self.body), False)
        body = self.body if request.method != "HEAD" and self.status not in _NO_BODY else b""
        request.connection.write(head + body if body else head)


class StreamResponse(Response):
    """An answer written as it comes: ``await prepare(request)``, then ``write``, then ``write_eof``."""

    __slots__ = ("_chunked", "_request", "_silent", "content_length", "ended")

    def __init__(self, *, status: int = 200, reason: str | None = None, headers: Any = None) -> None:
        super().__init__(status=status, reason=reason, headers=headers)
        #: the body's length when known before ``prepare`` (else it is sent chunked)
        self.content_length: int | None = None
        self._chunked = False
        self._silent = False
        self._request: Request | None = None
        self.ended = False

    async def prepare(self, request: Request) -> None:
        self._begin(request)

    def _begin(self, request: Request) -> None:
        self._request = request
        self._chunked = self.content_length is None and request.version != "1.0"
        self._silent = request.method == "HEAD" or self.status in _NO_BODY
        request.connection.write(self._head(request, self.content_length, self._chunked))

    async def write(self, data: bytes) -> None:
        request = self._request
        assert request is not None, "prepare() first"
        if not data or self._silent:
            return
        connection = request.connection
        connection.write(b"%x\r\n%b\r\n" % (len(data), data) if self._chunked else data)
        if connection.write_paused:
            await connection.drain()

    async def write_eof(self) -> None:
        self._end()

    def _end(self) -> None:
        request = self._request
        assert request is not None, "prepare() first"
        if self.ended:
            return
        self.ended = True
        if self._chunked and not self._silent:
            request.connection.write(b"0\r\n\r\n")

    def send(self, request: Request) -> None:
        if not self.prepared:
            self._begin(request)
        self._end()


def json_response(body: bytes, status: int = 200) -> Response:
    return Response(status=status, body=body, content_type="application/json")
