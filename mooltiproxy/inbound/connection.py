"""One client connection: HTTP/1.1 parsed by llhttp (``httptools``), requests answered in order.

The parser is strict, as the gateway's security needs: a request whose framing two servers could read differently
(Content-Length with Transfer-Encoding, two lengths, obs-fold, bad chunk sizes, bare LF, control characters), a
line or header past the limits, a second Host or other single-valued header, a missing Host is refused with a 400
in OpenAI's error shape that quotes none of its bytes, and the connection is closed. Requests that came in one read
with the broken one are refused with it, so none of them reaches a target.

Each request is handled in a task of its own, one at a time: pipelined requests wait (reading pauses when too many
do), and are answered in order. A client that goes away cancels its request's task, which closes the upstream
request. A connection with no request under way closes after ``header_timeout``, counted from its start or from
the end of the last answer, and a client that has not sent a whole head by then is cut off (slowloris). An answer
sent before its request's body has all arrived closes the connection, after a short linger so that the client
reads the answer instead of a reset.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, cast
from urllib.parse import unquote

import httptools
from multidict import CIMultiDict

from ..errors import GatewayError
from .messages import BodyError, Request, Response

if TYPE_CHECKING:
    from .listener import Listener

__all__ = ["Connection", "Handler", "PrepareHook", "reason"]

log = logging.getLogger("mooltiproxy")

Handler = Callable[[Request], Awaitable[Response]]
#: what every answer passes through just before its headers are sent
PrepareHook = Callable[[Request, Response], None]

#: the longest request target, header line and number of headers accepted (as most servers: 8 KiB lines)
MAX_LINE = 8190
MAX_HEADERS = 128
#: requests read ahead of the one being answered before reading pauses
PIPELINE_DEPTH = 8
#: how long an answer sent before the end of its request's body waits for the client to stop sending
LINGER_SECONDS = 2.0
#: headers a request may carry once at most (a second Host is how some caches are fooled)
SINGLE = frozenset(
    [b"content-length", b"content-location", b"content-range", b"content-type", b"etag", b"host", b"max-forwards"]
    + [b"server", b"transfer-encoding", b"user-agent"]
)
_METHODS = {m.encode(): m for m in ("GET", "POST", "HEAD", "OPTIONS", "PUT", "PATCH", "DELETE")}


class Refused(Exception):
    """The request cannot be parsed: the reason, which quotes none of its bytes."""


def reason(message: str | None) -> str:
    """The parser's reason for refusing a request, without the request bytes it may quote after a colon."""
    first = (message or "").split("\n", 1)[0].split(": ", 1)[0].rstrip(":. ")
    return first or "the request is not valid HTTP/1.1"


def _answer(status: int, error: GatewayError, extra: str = "") -> bytes:
    body = error.to_json()
    phrase = "Bad Request" if status == 400 else "Service Unavailable"
    head = (
        f"HTTP/1.1 {status} {phrase}\r\nServer: mooltiproxy\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n{extra}Connection: close\r\n\r\n"
    )
    return head.encode() + body


def refused_answer(message: str) -> bytes:
    error = GatewayError(message, status=400, type="invalid_request_error", code="invalid_http")
    return _answer(400, error)


TOO_MANY = _answer(
    503,
    GatewayError(
        "the gateway has too many open connections: try again shortly",
        status=503,
        type="server_error",
        code="too_many_connections",
    ),
    "Retry-After: 1\r\n",
)


def _target(url: bytes, method: str) -> tuple[str, str]:
    """The request target's decoded path and its query (origin form, absolute form, ``*``, CONNECT's authority)."""
    if url[:1] != b"/":
        if url == b"*" or method == "CONNECT":
            return ("*" if url == b"*" else ""), ""
        parsed = httptools.parse_url(url)  # the absolute form: its path (llhttp has checked its characters)
        url = (parsed.path or b"/") + (b"?" + parsed.query if parsed.query else b"")
    path, _, query = url.decode("utf-8", "surrogateescape").partition("#")[0].partition("?")
    return (unquote(path) if "%" in path else path), query


def _single_valued(raw: list[tuple[bytes, bytes]]) -> None:
    seen: set[bytes] = set()
    for name, _ in raw:
        lower = name.lower()
        if lower in seen and lower in SINGLE:
            raise Refused(f"more than one '{lower.decode('latin-1')}' header")
        seen.add(lower)


class Connection(asyncio.Protocol):
    """One client connection, its parser and the request being answered."""

    def __init__(self, listener: Listener) -> None:
        self.listener = listener
        self.handler = listener.handler
        self.prepare_hook = listener.prepare_hook
        self.body_limit = listener.body_limit
        self.loop = listener.loop
        self.transport: asyncio.Transport | None = None
        self.remote: str | None = None
        self.parser = httptools.HttpRequestParser(self)
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        #: the request whose head or body the parser is reading
        self._parsing: Request | None = None
        #: requests complete in the data being parsed: queued only once all of it has parsed
        self._parsed: list[Request] = []
        self._queue: collections.deque[Request] = collections.deque()
        self.task: asyncio.Task[None] | None = None
        #: the header timeout's timer, armed once and moved on rather than made again for every request
        self._timer: asyncio.TimerHandle | None = None
        #: when the connection last became idle (its start, the end of an answer); None while a request is under way
        self._idle_since: float | None = None
        #: the answer for a request that could not be parsed, sent once those before it are answered
        self._refusal: bytes | None = None
        #: no request after the current one: the connection closes once it is answered
        self.closing = False
        #: nothing more is read: a refusal, a protocol switch, a linger
        self._deaf = False
        self._reading = True
        self.closed = False
        self.write_paused = False
        self._drained: asyncio.Future[None] | None = None

    # -- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport = cast(asyncio.Transport, transport)  # uvloop's do not subclass asyncio's
        if not self.listener.admit(self):
            self.closed = self._deaf = True
            transport.write(TOO_MANY)
            transport.close()
            return
        peer = transport.get_extra_info("peername")
        self.remote = peer[0] if isinstance(peer, tuple) else None
        self._wait_for_head()

    def data_received(self, data: bytes) -> None:
        if self._deaf:
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # Upgrade or CONNECT: answered as a plain request; what follows would be another protocol, never read.
            self.closing = self._deaf = True
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            self._refuse(str(cause) if isinstance(cause, Refused) else "the request is not valid HTTP/1.1", cause)
            return
        except httptools.HttpParserError as exc:
            self._refuse(reason(str(exc)), exc)
            return
        if self._parsed:
            self._queue.extend(self._parsed)
            self._parsed.clear()
        if self.task is None and self._queue:
            self._next()
        if len(self._queue) > PIPELINE_DEPTH and self._reading and self.transport is not None:
            self._reading = False
            self.transport.pause_reading()

    def eof_received(self) -> bool:
        if self._parsing is not None and not self._parsing.complete:
            self._parsing.fail(BodyError("the client closed the connection before the end of the body"))
        return False  # close: the answers in flight cannot be read by a client that has hung up anyway

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = self._deaf = True
        self.listener.forget(self)
        if self._timer is not None:
            self._timer.cancel()
        if self.task is not None and not self.task.done():
            self.task.cancel()  # the client left: stop its request, and the upstream request with it
        if self._drained is not None and not self._drained.done():
            self._drained.set_exception(ConnectionResetError("the client closed the connection"))
        self._queue.clear()

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    # -- llhttp's callbacks

    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = []

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > MAX_LINE:
            raise Refused(f"the request target is longer than {MAX_LINE} bytes")

    def on_header(self, name: bytes, value: bytes) -> None:
        if len(name) + len(value) > MAX_LINE:
            raise Refused(f"a header is longer than {MAX_LINE} bytes")
        if len(self._headers) >= MAX_HEADERS:
            raise Refused(f"more than {MAX_HEADERS} headers")
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        raw = self._headers
        names = {name.lower() for name, _ in raw}
        if len(names) != len(raw):
            _single_valued(raw)
        # llhttp has refused control characters in values and strips the whitespace before a value, not after it
        headers = CIMultiDict(
            [(name.decode("latin-1"), value.rstrip(b" \t").decode("utf-8", "surrogateescape")) for name, value in raw]
        )
        parser = self.parser
        version = parser.get_http_version()
        if b"host" not in names and version == "1.1":
            raise Refused("an HTTP/1.1 request needs a Host header")
        raw_method = parser.get_method()
        method = _METHODS.get(raw_method) or raw_method.decode("ascii", "replace")
        path, query = _target(self._url, method)
        request = Request(self, method, path, query, headers, version, parser.should_keep_alive())
        self._parsing = request
        self._parsed.append(request)
        self._idle_since = None

    def on_body(self, body: bytes) -> None:
        if self._parsing is not None:
            self._parsing.feed(body)

    def on_message_complete(self) -> None:
        if self._parsing is not None:
            self._parsing.finish()
            self._parsing = None

    # -- serving

    def _next(self) -> None:
        request = self._queue.popleft()
        self.task = self.loop.create_task(self._serve(request))
        if not self._reading and len(self._queue) <= PIPELINE_DEPTH // 2 and not self._deaf:
            self._reading = True
            if self.transport is not None:
                self.transport.resume_reading()

    async def _serve(self, request: Request) -> None:
        response: Response | None = None
        try:
            try:
                response = await self.handler(request)
            except (asyncio.CancelledError, ConnectionError):
                raise
            except Exception:
                log.exception("unexpected error on %s %s", request.method, request.path)
                if request.answered:
                    raise
                error = GatewayError("the gateway could not serve the request", status=500)
                response = Response(status=500, body=error.to_json(), content_type="application/json")
            response.send(request)  # a stream the handler has prepared only ends here
        except asyncio.CancelledError:  # the client left, or the gateway is stopping: nothing more to say
            response = None
        except Exception:  # the answer had begun, or it cannot be written: cut the connection so the client knows
            if self.transport is not None:
                self.transport.abort()
            response = None
        finally:
            self.task = None
        self._answered(request, response)

    def _answered(self, request: Request, response: Response | None) -> None:
        if self.closed:
            return
        if response is None or response.closing:
            self._close(linger=not request.complete)
            return
        if self._queue:
            self._next()
            return
        if self._refusal is not None:
            self._send_refusal()
            return
        self._wait_for_head()

    def _refuse(self, message: str, exc: BaseException | None) -> None:
        """The data cannot be parsed: refuse it, with every request that came in the same read."""
        self._deaf = True
        broken, self._parsing = self._parsing, None
        dispatched = broken is not None and all(broken is not r for r in self._parsed)
        self._parsed.clear()
        if broken is not None and dispatched:
            broken.fail(BodyError(message))  # a body its handler is reading broke off: the handler answers (400)
            self.closing = True
            return
        log.info("400 from %s: %s (%s)", self.remote or "?", message, type(exc).__name__ if exc else "-")
        self._refusal = refused_answer(message)
        if self.task is None and not self._queue:
            self._send_refusal()

    def _send_refusal(self) -> None:
        if self.transport is not None and self._refusal is not None:
            self.transport.write(self._refusal)
        self._refusal = None
        self._close(linger=True)

    def _wait_for_head(self) -> None:
        self._idle_since = now = self.loop.time()
        if self._timer is None:
            self._timer = self.loop.call_at(now + self.listener.header_timeout, self._expire)

    def _expire(self) -> None:
        self._timer = None
        since = self._idle_since
        if since is None or self.task is not None or self._queue or self.transport is None:
            return  # a request is under way: its end arms the timer again
        left = since + self.listener.header_timeout - self.loop.time()
        if left > 0:
            self._timer = self.loop.call_later(left, self._expire)
        else:
            self.transport.close()

    def _close(self, *, linger: bool) -> None:
        transport = self.transport
        if transport is None or self.closed:
            return
        self._deaf = True
        if linger and transport.can_write_eof():
            transport.write_eof()  # the answer is complete; what the client still sends is read and dropped
            self.loop.call_later(LINGER_SECONDS, transport.close)
            if not self._reading:
                self._reading = True
                transport.resume_reading()
        else:
            transport.close()

    # -- used by the answers

    def write(self, data: bytes) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            raise ConnectionResetError("the client closed the connection")
        transport.write(data)

    async def drain(self) -> None:
        if self.write_paused and not self.closed:
            self._drained = self.loop.create_future()
            try:
                await self._drained
            finally:
                self._drained = None

    def stop(self) -> None:
        """The gateway is stopping: close now when idle, else after the answer under way."""
        self.closing = True
        if self.task is None and not self._queue and self.transport is not None:
            self.transport.close()
