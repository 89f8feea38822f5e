"""Relaying upstream event streams through a ``StreamTranslator``, and what the proxy's paths share.

Nothing reaches the client before the translator's first bytes, so an error before the first token still gets its
HTTP status. A slow client slows the upstream reads down (a small bounded queue), and a client that leaves cancels
every upstream request of the stream.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from contextlib import AbstractAsyncContextManager
from typing import Any

from multidict import CIMultiDict, MultiMapping

from .errors import GatewayError, UpstreamError
from .inbound import Request, StreamResponse
from .plugin import MappingContext, StreamTranslator
from .upstream import Response, Upstream, decode_body

__all__ = ["INTERNAL_ERROR", "Exchange", "call_mapper", "internal_error", "relay_stream", "upstream_failure"]

log = logging.getLogger("mooltiproxy")

INTERNAL_ERROR = "The gateway had an error while processing your request."
#: upstream chunks waiting for the client, at most; then reading the upstream waits (backpressure)
QUEUE_SIZE = 8


class Exchange:
    """What ``forward`` needs to know about the inbound request, and what it reports back for the access log."""

    __slots__ = (
        "body",
        "count_tokens",
        "final",
        "headers",
        "method",
        "path",
        "payload",
        "query",
        "request_id",
        "started",
        "tokens",
        "tokens_in",
        "tokens_out",
        "upstream_seconds",
    )

    def __init__(self, method: str, path: str, query: str, headers: MultiMapping[str], body: bytes) -> None:
        self.method = method
        self.path = path
        self.query = query
        self.headers = headers
        self.body = body
        #: the body, already parsed as JSON for routing (None: not parsed)
        self.payload: Any = None
        #: no fallback target comes after this one: upstream failures are answered, not raised as ``Unavailable``
        self.final = True
        #: a response has been sent to the client: no other may follow on this connection
        self.started = False
        self.upstream_seconds = 0.0
        #: the caller's tokens are counted (a key with ``tpm``): pass-through JSON answers are read for their usage
        self.count_tokens = False
        #: prompt + completion tokens of the answer, when known
        self.tokens: int | None = None
        #: prompt and completion tokens of the answer, when known (for the metrics and the access log)
        self.tokens_in: int | None = None
        self.tokens_out: int | None = None
        #: sent to the target as ``X-Request-Id`` (empty: none)
        self.request_id = ""

    def send(
        self, client: Upstream, path: str, headers: CIMultiDict[str], body: bytes | None
    ) -> AbstractAsyncContextManager[Response]:
        """This request's method and query string, sent to ``client`` at ``path``."""
        return client.request(self.method, path, self.query, headers, body, final=self.final)


async def call_mapper(fn: Any, payload: Any, ctx: MappingContext) -> Any:
    """Call a plug-in, sync or async."""
    result = fn(payload, ctx)
    if type(result) is dict:  # the common answer of a sync mapper, without the longer awaitable check
        return result
    if inspect.isawaitable(result):
        result = await result
    return result


def internal_error(exc: BaseException, method: str, path: str) -> GatewayError:
    """A bug (ours or a plug-in's): logged with its traceback, answered without it."""
    log.error("unexpected error on %s %s", method, path, exc_info=exc)
    return GatewayError(INTERNAL_ERROR)


def upstream_failure(status: int, data: bytes, ctx: MappingContext, answer: Any) -> GatewayError:
    """An upstream error answer, translated by the answer mapper when it can, else reported as it came."""
    error: GatewayError | None = answer.error(status, data, ctx) if hasattr(answer, "error") else None
    if error is not None:
        return error
    text = data.decode("utf-8", "replace")[:2000] or f"target '{ctx.target}' answered {status}"
    return UpstreamError(text, status=status if status >= 400 else 502)


async def relay_stream(
    request: Request,
    exchange: Exchange,
    ctx: MappingContext,
    client: Upstream,
    headers: CIMultiDict[str],
    bodies: list[bytes | None],
    answer: Any,
) -> StreamResponse:
    """Translate one or more upstream event streams into the client's, chunk by chunk as tokens arrive."""
    translator: StreamTranslator = answer.stream(ctx)
    queue: asyncio.Queue[tuple[int, bytes | None | BaseException]] = asyncio.Queue(QUEUE_SIZE)
    started = time.perf_counter()
    ctx.reply_headers = [{} for _ in bodies]  # filled by index, whichever answers first

    async def pump(index: int, body: bytes | None) -> None:
        try:
            async with client.request(
                exchange.method, ctx.upstream_path, exchange.query, headers, body, final=exchange.final
            ) as r:
                ctx.reply_headers[index] = r.headers
                if r.status >= 300:
                    raise upstream_failure(r.status, decode_body(await r.read(), r.headers), ctx, answer)
                async for chunk in r.iter_any():
                    await queue.put((index, chunk))
            await queue.put((index, None))
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # handed to the relay loop, which decides what the client sees
            await queue.put((index, exc))

    tasks = [asyncio.ensure_future(pump(i, b)) for i, b in enumerate(bodies)]
    out: StreamResponse | None = None
    try:
        open_streams = len(tasks)
        while open_streams:
            index, item = await queue.get()
            if isinstance(item, BaseException):
                raise item
            if item is None:
                data = translator.end(index)
                open_streams -= 1
            else:
                data = translator.feed(index, item)
            if not open_streams:
                data += translator.finish()
            if data:
                if out is None:
                    exchange.upstream_seconds = time.perf_counter() - started
                    out = await _start(request, exchange, translator.content_type)
                await out.write(data)
        if out is None:
            out = await _start(request, exchange, translator.content_type)
        await out.write_eof()
        return out
    except ConnectionError:
        if out is None:
            raise
        return out  # the client went away mid-stream: nothing left to tell it (``finally`` stops the upstream)
    except Exception as exc:
        if out is None:
            raise
        error = exc if isinstance(exc, GatewayError) else internal_error(exc, exchange.method, exchange.path)
        await out.write(translator.fail(error))
        await out.write_eof()
        return out
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _start(request: Request, exchange: Exchange, content_type: str) -> StreamResponse:
    headers = {"Content-Type": content_type, "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    out = StreamResponse(headers=headers)
    await out.prepare(request)
    exchange.started = True
    return out
