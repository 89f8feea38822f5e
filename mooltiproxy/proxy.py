"""One request through a route: map the body, call the target, map the answer (or relay the stream).

Data flows one way: guard and routing happened in ``server``; here come mapping → upstream → answer. This is the
only module that calls mappers, and with ``upstream`` the only one that touches the target.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import Mapping
from typing import Any

import aiohttp
import orjson
from aiohttp import web
from multidict import CIMultiDict

from .config.model import Route, Target
from .errors import BadRequest, GatewayError, UnsupportedMediaType, UpstreamError
from .plugin import Fanout, MappingContext, StreamTranslator
from .redact import Redactor
from .upstream import HOP_BY_HOP, Upstream, decode_body

__all__ = ["Exchange", "forward", "is_json"]

log = logging.getLogger("mooltiproxy.debug")

#: request headers the gateway consumes or recomputes
_DROP_REQUEST = HOP_BY_HOP | {"host", "authorization", "target", "content-length", "expect"}
#: answer headers recomputed or not meant for the client
_DROP_ANSWER = HOP_BY_HOP | {"content-length", "content-encoding", "server", "date"}


def is_json(content_type: str | None) -> bool:
    """``application/json``, ``application/x+json``, parameters allowed (``; charset=utf-8``)."""
    if not content_type:
        return False
    mime = content_type.split(";", 1)[0].strip().lower()
    return mime == "application/json" or (mime.startswith("application/") and mime.endswith("+json"))


def _encode(value: Any, error: type[GatewayError], what: str) -> bytes:
    """JSON bytes of a mapped payload; what orjson refuses (nesting over 255 levels, odd types) is a clear error."""
    try:
        return orjson.dumps(value)
    except orjson.JSONEncodeError as exc:
        raise error(f"{what}: {exc}") from exc


def _json_response(answer: Any) -> web.Response:
    body = _encode(answer, UpstreamError, "the mapped answer cannot be sent")
    return web.Response(body=body, content_type="application/json")


async def _call(fn: Any, payload: Any, ctx: MappingContext) -> Any:
    result = fn(payload, ctx)
    if inspect.isawaitable(result):
        result = await result
    return result


class Exchange:
    """What ``forward`` needs to know about the inbound request, and what it reports back for the access log."""

    __slots__ = ("body", "headers", "method", "path", "query", "upstream_seconds")

    def __init__(self, method: str, path: str, query: str, headers: Mapping[str, str], body: bytes) -> None:
        self.method = method
        self.path = path
        self.query = query
        self.headers = headers
        self.body = body
        self.upstream_seconds = 0.0


def _upstream_headers(inbound: Mapping[str, str], *, json_body: bool, read_answer: bool) -> CIMultiDict[str]:
    headers: CIMultiDict[str] = CIMultiDict()
    for name, value in inbound.items():
        if name.lower() not in _DROP_REQUEST:
            headers.add(name, value)
    if json_body:
        headers["Content-Type"] = "application/json"
    if read_answer:  # only encodings decode_body can undo
        headers["Accept-Encoding"] = "gzip, deflate"
    return headers


def _answer_headers(upstream: Mapping[str, str], keep_encoding: bool) -> CIMultiDict[str]:
    headers: CIMultiDict[str] = CIMultiDict()
    for name, value in upstream.items():
        lower = name.lower()
        if lower not in _DROP_ANSWER or (keep_encoding and lower == "content-encoding"):
            headers.add(name, value)
    return headers


async def forward(
    request: web.Request, exchange: Exchange, target: Target, route: Route, client: Upstream, redactor: Redactor | None
) -> web.StreamResponse:
    ctx = route.context(target, exchange.method)
    payload: Any = None
    parse = route.translates and bool(exchange.body)
    if route.request_mapper is not None and not parse and exchange.method in ("POST", "PUT", "PATCH"):
        raise BadRequest("this endpoint expects a JSON body")
    if parse:
        if not is_json(exchange.headers.get("Content-Type")):
            raise UnsupportedMediaType("this endpoint expects a JSON body: send 'Content-Type: application/json'")
        try:
            payload = orjson.loads(exchange.body)
        except orjson.JSONDecodeError as exc:
            raise BadRequest(f"the request body is not valid JSON: {exc}") from exc
        ctx.payload = payload
    bodies: list[bytes | None] = [exchange.body or None]
    if route.request_mapper is not None and parse:
        if redactor:
            log.debug("request before mapping: %s", redactor.dumps(payload))
        mapped = await _call(route.request_mapper, payload, ctx)
        payloads = mapped.payloads if isinstance(mapped, Fanout) else [mapped]
        if not payloads:
            raise BadRequest("nothing to send upstream")
        bodies = [_encode(p, BadRequest, "the request cannot be forwarded") for p in payloads]
        if redactor:
            for p in payloads:
                log.debug("request after mapping to %s%s: %s", target.name, ctx.upstream_path, redactor.dumps(p))
        fanout = isinstance(mapped, Fanout)
    else:
        fanout = False
    headers = _upstream_headers(
        exchange.headers,
        json_body=route.request_mapper is not None and parse,
        read_answer=route.answer_mapper is not None,
    )
    answer = route.answer_mapper
    if ctx.stream and answer is not None and hasattr(answer, "stream"):
        return await _relay_stream(request, exchange, ctx, client, headers, bodies, answer)
    if len(bodies) == 1 and not fanout:
        return await _single(request, exchange, ctx, client, headers, bodies[0], answer, redactor)
    return await _fanout(exchange, ctx, client, headers, bodies, answer)


async def _single(
    request: web.Request,
    exchange: Exchange,
    ctx: MappingContext,
    client: Upstream,
    headers: CIMultiDict[str],
    body: bytes | None,
    answer: Any,
    redactor: Redactor | None,
) -> web.StreamResponse:
    started = time.perf_counter()
    async with client.request(exchange.method, ctx.upstream_path, exchange.query, headers, body) as resp:
        if answer is None or (resp.status >= 300 and not hasattr(answer, "error")):
            return await _pass_through(request, exchange, resp, started)
        raw = await resp.read()
        exchange.upstream_seconds = time.perf_counter() - started
        ctx.reply_headers.append(resp.headers)
        data = decode_body(raw, resp.headers)
        if resp.status >= 300:
            error = answer.error(resp.status, data, ctx)
            if error is None:
                return web.Response(status=resp.status, body=data, headers=_answer_headers(resp.headers, False))
            raise error
        out = await _map_answer(answer, resp.headers.get("Content-Type"), data, ctx, redactor)
        return _json_response(out)


async def _map_answer(
    answer: Any, content_type: str | None, data: bytes, ctx: MappingContext, redactor: Redactor | None
) -> Any:
    try:
        parsed = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise UpstreamError(f"target '{ctx.target}' answered with a body that is not JSON ({content_type})") from exc
    if redactor:
        log.debug("answer before mapping: %s", redactor.dumps(parsed))
    out = await _call(answer, parsed, ctx)
    if redactor:
        log.debug("answer after mapping: %s", redactor.dumps(out))
    return out


async def _pass_through(
    request: web.Request, exchange: Exchange, resp: aiohttp.ClientResponse, started: float
) -> web.StreamResponse:
    """Relay status, headers and body bytes as they come (compressed bodies untouched)."""
    out = web.StreamResponse(status=resp.status, reason=resp.reason, headers=_answer_headers(resp.headers, True))
    length = resp.headers.get("Content-Length")
    if length is not None and length.isdigit():
        out.content_length = int(length)
    await out.prepare(request)
    exchange.upstream_seconds = time.perf_counter() - started
    async for chunk in resp.content.iter_any():
        await out.write(chunk)
    await out.write_eof()
    return out


async def _fanout(
    exchange: Exchange,
    ctx: MappingContext,
    client: Upstream,
    headers: CIMultiDict[str],
    bodies: list[bytes | None],
    answer: Any,
) -> web.StreamResponse:
    """Send every request of a ``Fanout`` at once; the answer mapper gets the list of parsed answers."""
    started = time.perf_counter()

    async def one(body: bytes | None) -> tuple[int, Mapping[str, str], bytes]:
        async with client.request(exchange.method, ctx.upstream_path, exchange.query, headers.copy(), body) as r:
            return r.status, r.headers, decode_body(await r.read(), r.headers)

    results = await asyncio.gather(*(one(b) for b in bodies))
    exchange.upstream_seconds = time.perf_counter() - started
    ctx.reply_headers.extend(h for _, h, _ in results)
    for status, _, data in results:
        if status >= 300:
            error = answer.error(status, data, ctx) if hasattr(answer, "error") else None
            raise error or GatewayError(data.decode("utf-8", "replace")[:2000], status=status, type="upstream_error")
    try:
        parsed = [orjson.loads(data) for _, _, data in results]
    except orjson.JSONDecodeError as exc:
        raise UpstreamError(f"target '{ctx.target}' answered with a body that is not JSON") from exc
    out = parsed if answer is None else await _call(answer, parsed, ctx)
    return _json_response(out)


async def _relay_stream(
    request: web.Request,
    exchange: Exchange,
    ctx: MappingContext,
    client: Upstream,
    headers: CIMultiDict[str],
    bodies: list[bytes | None],
    answer: Any,
) -> web.StreamResponse:
    """Translate one or more upstream event streams into the client's, chunk by chunk as tokens arrive."""
    translator: StreamTranslator = answer.stream(ctx)
    queue: asyncio.Queue[tuple[int, bytes | None | BaseException]] = asyncio.Queue()
    started = time.perf_counter()

    async def pump(index: int, body: bytes | None) -> None:
        try:
            async with client.request(exchange.method, ctx.upstream_path, exchange.query, headers.copy(), body) as r:
                ctx.reply_headers[index] = r.headers
                if r.status >= 300:
                    data = decode_body(await r.read(), r.headers)
                    error = answer.error(r.status, data, ctx) if hasattr(answer, "error") else None
                    raise error or UpstreamError(f"target '{ctx.target}' answered {r.status}", status=r.status)
                async for chunk in r.content.iter_any():
                    await queue.put((index, chunk))
            await queue.put((index, None))
        except BaseException as exc:  # handed to the relay loop, which decides what the client sees
            await queue.put((index, exc))
            if isinstance(exc, asyncio.CancelledError):
                raise

    ctx.reply_headers = [{} for _ in bodies]  # filled by index, whichever answers first
    tasks = [asyncio.ensure_future(pump(i, b)) for i, b in enumerate(bodies)]
    out: web.StreamResponse | None = None
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
                    out = await _start_stream(request, translator.content_type)
                await out.write(data)
        if out is None:
            out = await _start_stream(request, translator.content_type)
        await out.write_eof()
        return out
    except Exception as exc:
        if out is None:
            raise
        error = exc if isinstance(exc, GatewayError) else _internal(exc, request)
        await out.write(translator.fail(error))
        await out.write_eof()
        return out
    finally:
        for task in tasks:
            task.cancel()


def _internal(exc: Exception, request: web.Request) -> GatewayError:
    """A bug after the stream started: logged with its traceback, reported to the client as an error event."""
    logging.getLogger("mooltiproxy").error(
        "unexpected error while streaming %s %s", request.method, request.path, exc_info=exc
    )
    return GatewayError("The gateway had an error while processing your request.")


async def _start_stream(request: web.Request, content_type: str) -> web.StreamResponse:
    headers = {"Content-Type": content_type, "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    out = web.StreamResponse(headers=headers)
    await out.prepare(request)
    return out
