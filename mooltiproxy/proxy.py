"""One request through a route: map the body, call the target, map the answer (or relay the stream).

Data flows one way: guard and routing happened in ``server``; here come mapping → upstream → answer. This is the
only module that calls mappers, and with ``upstream`` and ``relay`` the only one that touches the target.

Once a response has started (``exchange.started``), no other response can follow on that connection: a failure
after that point ends the body early and closes the connection, and is logged.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from typing import Any

import orjson
from multidict import CIMultiDict, MultiMapping

from .client import ClientError
from .config.model import Route, Target
from .errors import BadRequest, GatewayError, UnsupportedMediaType, UpstreamError
from .inbound import Request, Response, StreamResponse, json_response
from .limits import usage_tokens
from .metrics import usage_counts
from .plugin import USAGE_COUNTS, USAGE_TOKENS, Fanout, MappingContext
from .redact import Redactor
from .relay import Exchange, call_mapper, relay_stream, upstream_failure
from .routing import is_json
from .upstream import HOP_BY_HOP, Upstream, decode_body
from .upstream import Response as Answer

__all__ = ["Exchange", "forward"]

log = logging.getLogger("mooltiproxy")
debug_log = logging.getLogger("mooltiproxy.debug")

#: request headers the gateway consumes or recomputes (a compressed request body is read decoded)
_DROP_REQUEST = HOP_BY_HOP | {
    "host",
    "authorization",
    "x-api-key",
    "target",
    "content-length",
    "content-encoding",
    "expect",
    "x-request-id",  # the gateway's id of the request is sent instead (the client's when sane)
}
#: answer headers recomputed, or the gateway's own to set (CORS follows ``system.cors``, not the target)
_DROP_ANSWER = HOP_BY_HOP | {"content-length", "content-encoding", "server", "date"}


#: largest pass-through JSON answer read for its ``usage`` (bytes)
_USAGE_READ_LIMIT = 1024 * 1024


def _count(exchange: Exchange, answer: Any) -> None:
    """The tokens of an answer's ``usage``, for the metrics and (when it has a ``tpm``) a key's limits."""
    exchange.tokens_in, exchange.tokens_out = usage_counts(answer)
    if exchange.count_tokens:
        exchange.tokens = usage_tokens(answer)


def _passed_usage(exchange: Exchange, body: bytes) -> None:
    try:
        _count(exchange, orjson.loads(body))
    except orjson.JSONDecodeError:
        pass


def _encode(value: Any, error: type[GatewayError], what: str) -> bytes:
    """JSON bytes of a mapped payload; what orjson refuses (nesting over 255 levels, odd types) is a clear error."""
    try:
        return orjson.dumps(value)
    except orjson.JSONEncodeError as exc:
        raise error(f"{what}: {exc}") from exc


def _json_response(answer: Any) -> Response:
    return json_response(_encode(answer, UpstreamError, "the mapped answer cannot be sent"))


def _named_by_connection(headers: MultiMapping[str]) -> frozenset[str]:
    """The headers a ``Connection`` header names: they concern that hop only (RFC 9110 §7.6.1)."""
    if "Connection" not in headers:
        return _NONE
    names = (n.strip().lower() for v in headers.getall("Connection") for n in v.split(","))
    return frozenset(n for n in names if n and n not in ("close", "keep-alive"))


_NONE: frozenset[str] = frozenset()


def _upstream_headers(
    inbound: MultiMapping[str], *, json_body: bool, accept: str | None, request_id: str = ""
) -> CIMultiDict[str]:
    headers: CIMultiDict[str] = CIMultiDict()
    named = _named_by_connection(inbound)
    for name, value in inbound.items():
        lower = name.lower()
        if lower not in _DROP_REQUEST and lower not in named:
            headers.add(name, value)
    if request_id:
        headers["X-Request-Id"] = request_id
    if json_body:
        headers["Content-Type"] = "application/json"
    if accept is not None:
        headers["Accept-Encoding"] = accept
    return headers


def _answer_headers(upstream: MultiMapping[str], keep_encoding: bool) -> CIMultiDict[str]:
    headers: CIMultiDict[str] = CIMultiDict()
    named = _named_by_connection(upstream)
    for name, value in upstream.items():
        lower = name.lower()
        if lower.startswith("access-control-") or lower in named:
            continue
        if lower not in _DROP_ANSWER or (keep_encoding and lower == "content-encoding"):
            headers.add(name, value)
    return headers


async def forward(
    request: Request,
    exchange: Exchange,
    target: Target,
    route: Route,
    client: Upstream,
    redactor: Redactor | None,
) -> Response:
    """Serve ``exchange`` through ``route``; with ``exchange.final`` false, upstream failures raise ``Unavailable``
    for a fallback target to take over."""
    ctx = route.context(target, exchange.method)
    payload: Any = None
    parse = route.translates and bool(exchange.body)
    if route.request_mapper is not None and not parse and exchange.method in ("POST", "PUT", "PATCH"):
        raise BadRequest("this endpoint expects a JSON body")
    if parse:
        if not is_json(exchange.headers.get("Content-Type")):
            raise UnsupportedMediaType("this endpoint expects a JSON body: send 'Content-Type: application/json'")
        payload = exchange.payload
        if payload is None:
            try:
                payload = orjson.loads(exchange.body)
            except orjson.JSONDecodeError as exc:
                raise BadRequest(f"the request body is not valid JSON: {exc}") from exc
        ctx.payload = exchange.payload = payload  # the access log reads its model
    bodies: list[bytes | None] = [exchange.body or None]
    fanout = False
    if route.request_mapper is not None and parse:
        if redactor:
            debug_log.debug("request before mapping: %s", redactor.dumps(payload))
        mapped = await call_mapper(route.request_mapper, payload, ctx)
        fanout = isinstance(mapped, Fanout)
        payloads = mapped.payloads if isinstance(mapped, Fanout) else [mapped]
        if not payloads:
            raise BadRequest("nothing to send upstream")
        bodies = [_encode(p, BadRequest, "the request cannot be forwarded") for p in payloads]
        if redactor:
            for p in payloads:
                debug_log.debug("request after mapping to %s%s: %s", target.name, ctx.upstream_path, redactor.dumps(p))
    answer = route.answer_mapper
    streamed = ctx.stream and answer is not None and hasattr(answer, "stream")
    # An answer mapper reads the body: ask only for what decode_body undoes; a stream translator reads raw bytes.
    accept = None if answer is None else "identity" if streamed else "gzip, deflate"
    json_body = route.request_mapper is not None and parse
    headers = _upstream_headers(exchange.headers, json_body=json_body, accept=accept, request_id=exchange.request_id)
    if streamed:
        response = await relay_stream(request, exchange, ctx, client, headers, bodies, answer)
        tokens = ctx.state.get(USAGE_TOKENS)
        exchange.tokens = tokens if isinstance(tokens, int) else None
        counts = ctx.state.get(USAGE_COUNTS)
        if isinstance(counts, tuple) and len(counts) == 2:
            exchange.tokens_in, exchange.tokens_out = counts
        return response
    if len(bodies) == 1 and not fanout:
        return await _single(request, exchange, ctx, client, headers, bodies[0], answer, redactor)
    return await _fanout(exchange, ctx, client, headers, bodies, answer, redactor)


async def _single(
    request: Request,
    exchange: Exchange,
    ctx: MappingContext,
    client: Upstream,
    headers: CIMultiDict[str],
    body: bytes | None,
    answer: Any,
    redactor: Redactor | None,
) -> Response:
    started = time.perf_counter()
    async with client.request(
        exchange.method, ctx.upstream_path, exchange.query, headers, body, final=exchange.final
    ) as resp:
        if answer is None or (resp.status >= 300 and not hasattr(answer, "error")):
            return await _pass_through(request, exchange, resp, started)
        data = decode_body(await resp.read(), resp.headers)
    exchange.upstream_seconds = time.perf_counter() - started
    ctx.reply_headers.append(resp.headers)
    if resp.status >= 300:
        error = answer.error(resp.status, data, ctx)
        if error is None:
            return Response(status=resp.status, body=data, headers=_answer_headers(resp.headers, False))
        raise error
    mapped = await _map_answer(answer, resp.headers.get("Content-Type"), data, ctx, redactor)
    _count(exchange, mapped)
    return _json_response(mapped)


async def _map_answer(
    answer: Any, content_type: str | None, data: bytes | list[bytes], ctx: MappingContext, redactor: Redactor | None
) -> Any:
    """Parse the upstream answer (or answers, for a ``Fanout``) and run the answer mapper on it."""
    try:
        parsed = [orjson.loads(d) for d in data] if isinstance(data, list) else orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise UpstreamError(f"target '{ctx.target}' answered with a body that is not JSON ({content_type})") from exc
    if answer is None:
        return parsed
    if redactor:
        debug_log.debug("answer before mapping: %s", redactor.dumps(parsed))
    out = await call_mapper(answer, parsed, ctx)
    if redactor:
        debug_log.debug("answer after mapping: %s", redactor.dumps(out))
    return out


async def _pass_through(request: Request, exchange: Exchange, resp: Answer, started: float) -> Response:
    """Relay status, headers and body bytes as they come (compressed bodies untouched).

    A body that came whole with the head (most JSON answers) is answered in one write, as a plain response."""
    headers = _answer_headers(resp.headers, True)
    if request.method != "HEAD" and resp.status not in (204, 304):
        whole = resp.arrived()
        if whole is not None:
            exchange.upstream_seconds = time.perf_counter() - started
            if exchange.count_tokens and resp.status < 300 and "Content-Encoding" not in resp.headers:
                if len(whole) <= _USAGE_READ_LIMIT and is_json(resp.headers.get("Content-Type")):
                    _passed_usage(exchange, whole)
            return Response(status=resp.status, reason=resp.reason, body=whole, headers=headers)
    out = StreamResponse(status=resp.status, reason=resp.reason, headers=headers)
    length = resp.headers.get("Content-Length")
    if length is not None and length.isdigit():
        out.content_length = int(length)
    await out.prepare(request)
    exchange.started = True
    exchange.upstream_seconds = time.perf_counter() - started
    # The usage of a plain JSON answer (not compressed, not too big) is read for a key's tpm; streams are not.
    kept: list[bytes] | None = None
    if exchange.count_tokens and resp.status < 300 and "Content-Encoding" not in resp.headers:
        size = out.content_length
        if size is not None and size <= _USAGE_READ_LIMIT and is_json(resp.headers.get("Content-Type")):
            kept = []
    try:
        async for chunk in resp.iter_any():
            if kept is not None:
                kept.append(chunk)
            await out.write(chunk)
        await out.write_eof()
        if kept:
            _passed_usage(exchange, b"".join(kept))
    except (ClientError, ConnectionError) as exc:
        # The status line is gone: all that is left is to cut the body short, so the client sees it is incomplete.
        log.warning("%s %s: the upstream answer broke off: %r", exchange.method, exchange.path, exc)
        if request.transport is not None:
            request.transport.abort()
    return out


async def _fanout(
    exchange: Exchange,
    ctx: MappingContext,
    client: Upstream,
    headers: CIMultiDict[str],
    bodies: list[bytes | None],
    answer: Any,
    redactor: Redactor | None,
) -> Response:
    """Send every request of a ``Fanout`` at once; the answer mapper gets the list of parsed answers.

    The first failure cancels the requests still running: their answers could not be used anyway.
    """
    started = time.perf_counter()

    async def one(body: bytes | None) -> tuple[Mapping[str, str], bytes]:
        async with client.request(
            exchange.method, ctx.upstream_path, exchange.query, headers, body, final=exchange.final
        ) as r:
            data = decode_body(await r.read(), r.headers)
        if r.status >= 300:
            raise upstream_failure(r.status, data, ctx, answer)
        return r.headers, data

    tasks = [asyncio.ensure_future(one(b)) for b in bodies]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for task in done:
            if task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
        results = [task.result() for task in tasks]
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    exchange.upstream_seconds = time.perf_counter() - started
    ctx.reply_headers.extend(h for h, _ in results)
    mapped = await _map_answer(answer, None, [d for _, d in results], ctx, redactor)
    _count(exchange, mapped)
    return _json_response(mapped)
