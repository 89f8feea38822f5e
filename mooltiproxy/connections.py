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
  one line with no traceback.

``GuardedServer`` is the gateway's aiohttp low-level ``Server``: the protocol factory every connection comes from
(TCP and TLS alike, in each worker of ``serve --workers N``). It hands every request, whatever its target, to one
handler — no application, router or middleware in between — as a ``GatewayRequest``, whose answers get the
gateway's own headers just before they are sent.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.http_parser import RawRequestMessage
from aiohttp.streams import StreamReader
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from .errors import GatewayError

__all__ = ["GatewayRequest", "GuardedServer", "PrepareHook", "read_within", "reason"]

log = logging.getLogger("mooltiproxy")

#: what every answer passes through before its headers are sent
PrepareHook = Callable[[BaseRequest, web.StreamResponse], Awaitable[None]]


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
        response = web.Response(
            status=status,
            body=error.to_json(),
            content_type="application/json",
            headers={"Server": "mooltiproxy", "Connection": "close"},
        )
        response.force_close()
        return response


class GatewayRequest(BaseRequest):
    """A request of the low-level server, whose answers pass through ``hook`` just before their headers go out
    (as an application's ``on_response_prepare`` signal does for its requests)."""

    ATTRS = BaseRequest.ATTRS | frozenset(["_hook"])

    def __init__(self, *args: Any, hook: PrepareHook, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._hook = hook

    async def _prepare_hook(self, response: web.StreamResponse) -> None:
        await self._hook(self, response)


class GuardedServer(web.Server):
    """A ``web.Server`` that hands out ``GuardedHandler``s, makes ``GatewayRequest``s (bodies up to
    ``client_max_size``), and refuses connections past ``limit`` open ones. Other keywords go to aiohttp's
    connection handler (``keepalive_timeout`` and the like)."""

    def __init__(
        self,
        handler: Callable[[BaseRequest], Awaitable[web.StreamResponse]],
        hook: PrepareHook,
        *,
        limit: int,
        client_max_size: int,
        **kwargs: Any,
    ) -> None:
        super().__init__(handler, request_factory=self._request, handler_cancellation=True, **kwargs)
        self.hook = hook
        self.limit = limit
        self.client_max_size = client_max_size
        self.counted: set[RequestHandler] = set()
        self.refused = 0

    def _request(
        self,
        message: RawRequestMessage,
        payload: StreamReader,
        protocol: RequestHandler,
        writer: AbstractStreamWriter,
        task: asyncio.Task[None],
    ) -> BaseRequest:
        loop = asyncio.get_running_loop()
        return GatewayRequest(
            message, payload, protocol, writer, task, loop, client_max_size=self.client_max_size, hook=self.hook
        )

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


async def read_within(request: BaseRequest, seconds: float) -> bytes:
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
