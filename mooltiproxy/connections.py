"""Client connections: how many may be open, how long a client may take, and what a broken request is told.

* ``system.max_connections``: past that many open connections (per process), a new one is answered at once with
  a 503 in OpenAI's error shape (``too_many_connections``) and closed, before anything of it is read; the
  connections already open are not disturbed.
* ``system.header_timeout``: a connection that has not sent a complete request's headers within it, from its
  start or from the end of the previous answer, is closed (aiohttp's keep-alive timer, which also closes idle
  keep-alive connections). Slowloris clients hold a connection no longer than that.
* ``system.body_timeout`` bounds the reading of a body (a 408, see ``Gateway.read``).
* A request that is not valid HTTP/1.1 (smuggling attempts such as Content-Length with Transfer-Encoding,
  duplicate lengths, obs-fold, bad chunk sizes, control characters, too long lines, TLS on the plain port) is
  refused by aiohttp's parser with a 400 and the connection closed. The answer is made ours here: OpenAI's error
  shape, ``Server: mooltiproxy``, a reason with none of the request's bytes in it (they may hold a key), logged on
  one line with no traceback. So is a request target with no path (``CONNECT host:port``, ``http://host``),
  which aiohttp's router would answer with a plain-text 404 before the gateway saw it.

``guard_connections`` makes the runner's aiohttp ``Server`` a ``GuardedServer``: the protocol factory every
connection comes from (TCP and TLS alike, in each worker of ``serve --workers N``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from .errors import GatewayError

__all__ = ["GuardedServer", "guard_connections", "read_within", "reason"]

log = logging.getLogger("mooltiproxy")


def _too_many() -> bytes:
    body = GatewayError(
        "the gateway has too many open connections: try again shortly",
        status=503,
        type="server_error",
        code="too_many_connections",
    ).to_json()
    head = (
        "HTTP/1.1 503 Service Unavailable\r\nServer: mooltiproxy\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nRetry-After: 1\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + body


_TOO_MANY = _too_many()


def reason(message: str | None) -> str:
    """The parser's reason for refusing a request, without the request bytes it quotes after a colon."""
    first = (message or "").split("\n", 1)[0].split(": ", 1)[0].rstrip(":. ")
    return first or "the request is not valid HTTP/1.1"


def _error_response(status: int, error: GatewayError) -> web.Response:
    response = web.Response(
        status=status,
        body=error.to_json(),
        content_type="application/json",
        headers={"Server": "mooltiproxy", "Connection": "close"},
    )
    response.force_close()
    return response


class GuardedHandler(RequestHandler):
    """aiohttp's connection handler, with the gateway's answer to a request it cannot parse or serve."""

    __slots__ = ()

    def handle_error(
        self, request: BaseRequest, status: int = 500, exc: BaseException | None = None, message: str | None = None
    ) -> web.StreamResponse:
        if request.writer.output_size > 0:  # an answer has begun: the connection is broken, aiohttp closes it
            raise ConnectionError("an answer was already sent")
        if status >= 500:
            error = GatewayError("the gateway could not serve the request", status=status)
        else:
            error = GatewayError(reason(message), status=status, type="invalid_request_error", code="invalid_http")
        peer = request.transport.get_extra_info("peername") if request.transport is not None else None
        log.info("%d from %s: %s (%s)", status, peer[0] if peer else "?", error.message, type(exc).__name__)
        return _error_response(status, error)


def _needs_a_path(
    handler: Callable[[BaseRequest], Awaitable[web.StreamResponse]],
) -> Callable[[BaseRequest], Awaitable[web.StreamResponse]]:
    async def handle(request: BaseRequest) -> web.StreamResponse:
        if request.rel_url.path_safe:
            return await handler(request)
        error = GatewayError(
            "the request target has no path", status=400, type="invalid_request_error", code="invalid_http"
        )
        return _error_response(400, error)

    return handle


class GuardedServer(web.Server):
    """A ``web.Server`` that hands out ``GuardedHandler``s and refuses connections past ``limit`` open ones."""

    limit: int
    counted: set[RequestHandler]
    refused: int

    def __call__(self) -> RequestHandler:  # as aiohttp's own, with the gateway's handler class
        return GuardedHandler(self, loop=self._loop, **self._kwargs)

    def connection_made(self, handler: RequestHandler, transport: asyncio.Transport) -> None:
        if len(self.counted) >= self.limit:
            self.refused += 1
            if self.refused == 1 or self.refused % 1000 == 0:
                log.warning("%d connections open (system.max_connections): refused %d", self.limit, self.refused)
            transport.write(_TOO_MANY)
            transport.close()
            return
        self.counted.add(handler)
        super().connection_made(handler, transport)

    def connection_lost(self, handler: RequestHandler, exc: BaseException | None = None) -> None:
        self.counted.discard(handler)
        super().connection_lost(handler, exc)


def guard_connections(server: web.Server, limit: int) -> GuardedServer:
    """Make the runner's ``server`` a ``GuardedServer`` (see the module's docstring), before any site starts.

    aiohttp builds the ``Server`` inside ``AppRunner.setup`` with no hook for its class; the instance is
    re-classed in place, so the runner, its sites and its shutdown keep using the same object."""
    server.__class__ = GuardedServer
    assert isinstance(server, GuardedServer)
    server.limit, server.counted, server.refused = limit, set(), 0
    server.request_handler = _needs_a_path(server.request_handler)
    return server


async def read_within(request: web.Request, seconds: float) -> bytes:
    """The request's body, or ``asyncio.TimeoutError`` when it has not all arrived within ``seconds``.

    The handler's own task is cancelled at the deadline (as ``asyncio.timeout`` does, on Python 3.10 too): no task
    is made per request, and a client that leaves meanwhile still cancels the handler as aiohttp means it to. A
    body that has arrived whole with the headers (most of them) needs no timer at all."""
    if request.content.is_eof():
        return await request.read()
    task = asyncio.current_task()
    assert task is not None
    expired = False

    def expire() -> None:
        nonlocal expired
        expired = True
        task.cancel()

    timer = asyncio.get_running_loop().call_later(seconds, expire)
    try:
        return await request.read()
    except asyncio.CancelledError:
        if not expired:
            raise
        uncancel = getattr(task, "uncancel", None)  # Python 3.11+: the cancellation was ours, it is handled
        if uncancel is not None:
            uncancel()
        raise asyncio.TimeoutError from None
    finally:
        timer.cancel()
