"""The inbound side: every request, in the fixed order health → CORS pre-flight → guard → routing → proxy.

Every error becomes an OpenAI-shaped JSON answer with its status; an unexpected exception is logged with its
traceback and answered as an OpenAI-shaped 500 without it. After a response has started, an error can only cut it
short (see ``proxy``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Any

import orjson
from aiohttp import web

from . import logs
from .config.model import Settings
from .errors import BadRequest, Forbidden, GatewayError, NotFound, PayloadTooLarge, RequestTimeout, UpstreamError
from .guard import Guard
from .health import watch
from .inbound import BodyError, BodyTooLarge, Listener, Request, Response, json_response
from .keys import KeyRing, KeyStore, permit
from .limits import Limiter
from .live import Carried, Live
from .metrics import Metrics
from .models import ModelList
from .proxy import Exchange, forward
from .redact import Redactor
from .relay import internal_error
from .routing import model_of, parse_json, pick_target, renamed, routes
from .state import open_state
from .upstream import Unavailable, Upstream

__all__ = ["HEALTH_PATH", "METRICS_PATH", "create_server"]

access_log = logging.getLogger(logs.ACCESS_LOGGER)
log = logging.getLogger("mooltiproxy")

HEALTH_PATH = "/-/health"
METRICS_PATH = "/-/metrics"
COUNT_TOKENS = "/messages/count_tokens"
_PREFLIGHT_METHODS = "GET, POST, PUT, PATCH, DELETE, OPTIONS"
_EXPOSED = "Retry-After, X-Request-Id, X-Prompt-Tokens, X-Generated-Tokens"


class Gateway:
    """Per-process state: settings, the guard with its ban list, one upstream client per target."""

    def __init__(self, settings: Settings, carried: Carried | None = None) -> None:
        self.settings = settings
        #: what this gateway takes over from the one it replaces on a reload (``live.carry_over`` decides)
        self.carried = carried or Carried()
        self.state = self.carried.state or open_state(settings.redis)
        if self.carried.keys is not None:
            self.keys: KeyRing | None = self.carried.keys
        else:
            self.keys = KeyRing(KeyStore(settings.keys_db), self.state.unban) if settings.keys_db else None
        self.limiter = Limiter(self.state, settings.redis_limits_on_failure)
        self.guard = Guard(
            settings.master_key,
            max_tries=settings.max_tries,
            whitelist=settings.whitelist,
            blacklist=settings.blacklist,
            trusted_proxies=settings.trusted_proxies,
            ban_seconds=settings.ban_seconds,
            ban_ipv6_prefix=settings.ban_ipv6_prefix,
            state=self.state,
            keys=self.keys,
        )
        self.upstreams = {
            name: Upstream(t, pool_size=settings.pool_size, max_redirects=settings.max_redirects)
            for name, t in settings.targets.items()
        }
        self.models = ModelList(settings, self.upstreams)
        self.redactor = Redactor(settings.secrets) if settings.debug else None
        self.any_origin = "*" in settings.cors_origins
        self.origins = frozenset(settings.cors_origins)
        self.watchers: list[asyncio.Future[None]] = []
        self.metrics = self.carried.metrics or Metrics(self.upstreams)
        self.metrics.replicas.upstreams = self.upstreams
        self.guard.on_failure = self.metrics.auth_failed
        self.guard.on_ban = self.metrics.banned
        #: the key-less listener of ``system.metrics_host``
        self.metrics_runner: web.AppRunner | None = self.carried.metrics_runner

    async def start(self) -> None:
        if self.settings.metrics_host is not None and self.metrics_runner is None:
            # first: a port in use stops the start before anything runs
            self.metrics_runner = await self.metrics.listen(*self.settings.metrics_host, METRICS_PATH)
        if self.keys is not None and self.keys is not self.carried.keys:
            await self.keys.start()
        for upstream in self.upstreams.values():
            await upstream.start()
            if upstream.target.health is not None:
                self.watchers.append(asyncio.ensure_future(watch(upstream, upstream.target.health)))

    async def stop(self) -> None:
        for task in self.watchers:
            task.cancel()
        await asyncio.gather(*self.watchers, return_exceptions=True)
        for upstream in self.upstreams.values():
            await upstream.close()
        if self.keys is not None:
            await self.keys.stop()
        await self.state.close()
        if self.metrics_runner is not None:
            await self.metrics_runner.cleanup()

    def allowed_origin(self, origin: str | None) -> str | None:
        if origin is None:
            return None
        if self.any_origin:
            return "*"
        return origin if origin in self.origins else None

    async def handle(self, request: Request) -> Response:
        started = time.perf_counter()
        info = logs.start(request.headers.get("X-Request-Id"))
        self.metrics.in_flight.inc()
        ip = request.remote or "unknown"
        target_name = "-"
        route_label = "unrouted"  # a fixed word or a mapped path, never the raw path (bounded label values)
        payload: Any = None
        exchange: Exchange | None = None
        response: Response | None = None
        anthropic = _is_anthropic(request.path)  # errors in Anthropic's shape
        try:
            forwarded = None
            if self.guard.trusted_proxies:  # every X-Forwarded-For line: a proxy may add its own below the client's
                forwarded = ",".join(request.headers.getall("X-Forwarded-For", ())) or None
            ip = self.guard.client_ip(request.remote, forwarded)
            path = request.path
            if path == HEALTH_PATH and request.method in ("GET", "HEAD"):
                route_label = "health"
                response = json_response(orjson.dumps({"status": "ok", "pid": os.getpid()}))  # the worker that answered
                return response
            metrics = path == METRICS_PATH and request.method in ("GET", "HEAD")
            if metrics and self.settings.metrics_host is not None:
                raise NotFound(f"no route for '{path}': the metrics are served on system.metrics_host")
            if request.method == "OPTIONS":
                route_label = "preflight"
                await self.guard.check_address(ip)
                response = self.preflight(request)
                return response
            key = await self.guard.check(ip, request.headers.get("Authorization"), request.headers.get("x-api-key"))
            if metrics:
                route_label = "metrics"
                if key is not None:
                    raise Forbidden("the metrics need the master key", code="master_key_required")
                response = await self.metrics.answer()
                return response
            header = request.headers.get("target")
            by_model = not header and bool(self.settings.model_index)
            body: bytes | None = None
            # the body's model is needed to pick the target, or to check a virtual key's models
            if request.method == "POST" and (by_model or (key is not None and key.models is not None)):
                body = await self.read(request)
                payload = parse_json(request.headers, body)
            target = pick_target(self.settings, header, model_of(payload))
            target_name = target.name
            if key is not None:  # a virtual key: its targets and models, then its limits
                permit(key, target.name, model_of(payload))
                await self.limiter.admit(key)
            route = target.find(path)
            if route is not None and getattr(route.answer_mapper, "error_format", None) == "anthropic":
                anthropic = True
            # the gateway's model list where the target maps none, and always when models route (every one of them)
            if request.method == "GET" and ModelList.handles(path) and (route is None or by_model):
                route_label = "models"
                response = await self.models.answer(path, target.name if header else None)
                return response
            if route is None:
                if _bare(path) == COUNT_TOKENS:
                    raise GatewayError(f"target '{target.name}' cannot count tokens", status=501, code="not_supported")
                raise NotFound(f"no route for '{path}' on target '{target.name}'", code="unknown_route")
            route_label = route.inbound  # also for what goes wrong before a hop (405, 413...)
            hops = routes(self.settings, target, route, path, request.method)
            if body is None:
                body = await self.read(request)
            for i, hop in enumerate(hops):
                target_name, route_label = hop.target.name, hop.route.inbound
                exchange = Exchange(request.method, path, request.query_string, request.headers, body)
                exchange.request_id = info.id
                if i > 0:  # a mapper may have changed the parsed body in place: a fallback starts from the bytes
                    payload = None
                if hop.target.models and request.method == "POST":
                    if payload is None:
                        payload = parse_json(request.headers, body)
                    new_model = renamed(hop.target, payload)
                    if new_model is not None:
                        payload = {**payload, "model": new_model}
                        exchange.body = orjson.dumps(payload)
                exchange.payload = payload
                exchange.final = hop.final
                exchange.count_tokens = key is not None and key.tpm is not None
                try:
                    response = await forward(
                        request, exchange, hop.target, hop.route, self.upstreams[hop.target.name], self.redactor
                    )
                    if key is not None:
                        await self.limiter.spend(key, exchange.tokens)
                    return response
                except Unavailable as exc:
                    log.warning("target '%s' is unavailable (%s): falling back", hop.target.name, exc.message)
            raise UpstreamError("no target could serve the request")  # not reached: the last hop is final
        except GatewayError as error:
            response = self.error_response(error, anthropic)
            if isinstance(error, RequestTimeout):  # the rest of the body will not be read: answer, then hang up
                response.force_close()
            return response
        except Exception as exc:
            if isinstance(exc, ConnectionResetError) and (request.transport is None or request.transport.is_closing()):
                # The client left while its answer was being written, before its connection noticed and cancelled us.
                log.debug("the client left during %s %s", request.method, request.path)
                raise asyncio.CancelledError from None
            if exchange is not None and exchange.started:
                # The answer has begun: a second one cannot follow. Cut the connection so the client knows.
                log.error("error after the answer started on %s %s", request.method, request.path, exc_info=exc)
                if request.transport is not None:
                    request.transport.abort()
                raise
            response = self.error_response(internal_error(exc, request.method, request.path), anthropic)
            return response
        finally:
            self.done(request, info, started, ip, target_name, route_label, response, exchange, payload)

    def done(
        self,
        request: Request,
        info: logs.RequestInfo,
        started: float,
        ip: str,
        target: str,
        route: str,
        response: Response | None,
        exchange: Exchange | None,
        payload: Any,
    ) -> None:
        """A request is over: its access line and its metrics."""
        total = time.perf_counter() - started
        info.open = False
        status = response.status if response is not None else 499
        upstream = exchange.upstream_seconds if exchange is not None else 0.0
        tokens_in = exchange.tokens_in if exchange is not None else None
        tokens_out = exchange.tokens_out if exchange is not None else None
        metrics = self.metrics
        # The gateway's own time, where a target answered; a stream's total is the stream's length, not ours.
        added = total - upstream if upstream > 0 and not info.stream else None
        metrics.observe(target, route, status, upstream or None, added, tokens_in, tokens_out)
        metrics.in_flight.dec()
        if info.stream:
            metrics.in_flight_streams.dec()
        if access_log.isEnabledFor(logging.INFO):
            model = model_of(exchange.payload if exchange is not None else payload)
            method, path = request.method, request.path
            logs.access(info.id, ip, method, path, target, route, model, status, upstream, total, tokens_in, tokens_out)

    async def read(self, request: Request) -> bytes:
        limit = self.settings.max_body_size
        if request.content_length is not None and request.content_length > limit:
            raise PayloadTooLarge(f"the request body is larger than {limit} bytes")
        if not request.body_exists:
            return b""
        try:
            return await request.read(self.settings.body_timeout)
        except asyncio.TimeoutError as exc:
            raise RequestTimeout(f"the request body did not arrive within {self.settings.body_timeout:g} s") from exc
        except BodyTooLarge as exc:
            raise PayloadTooLarge(f"the request body is larger than {limit} bytes") from exc
        except BodyError as exc:  # broken chunking or content encoding
            raise BadRequest(f"the request body cannot be read: {exc}") from exc

    def preflight(self, request: Request) -> Response:
        origin = request.headers.get("Origin")
        if origin is None:  # a plain OPTIONS, not a browser pre-flight
            return Response(status=204, headers={"Allow": _PREFLIGHT_METHODS})
        allowed = self.allowed_origin(origin)
        if allowed is None:
            return self.error_response(GatewayError(f"origin '{origin}' is not allowed", status=403, type="cors"))
        headers = {
            "Access-Control-Allow-Methods": _PREFLIGHT_METHODS,
            "Access-Control-Allow-Headers": request.headers.get("Access-Control-Request-Headers", "*"),
            "Access-Control-Max-Age": "600",
        }
        return Response(status=204, headers=headers)

    def error_response(self, error: GatewayError, anthropic: bool = False) -> Response:
        body = error.anthropic_json() if anthropic else error.to_json()
        return Response(status=error.status, body=body, content_type="application/json", headers=error.headers)

    def on_prepare(self, request: Request, response: Response) -> None:
        """Headers every answer gets (with ``Server: mooltiproxy``, no version for scanners, from the connection): the
        request id, CORS for browser pages."""
        info = logs.current.get()
        if info is not None:
            theirs = response.headers.get("X-Request-Id")
            if theirs is not None and theirs != info.id:  # the target's own id, kept under another name
                response.headers["X-Upstream-Request-Id"] = theirs
            response.headers["X-Request-Id"] = info.id
            if info.open and response.headers.get("Content-Type", "").startswith("text/event-stream"):
                info.stream = True
                self.metrics.in_flight_streams.inc()
        allowed = self.allowed_origin(request.headers.get("Origin"))
        if allowed is not None:
            response.headers["Access-Control-Allow-Origin"] = allowed
            response.headers["Access-Control-Expose-Headers"] = _EXPOSED
            if allowed != "*":
                response.headers.add("Vary", "Origin")


def _bare(path: str) -> str:
    return path[3:] if path.startswith("/v1/") else path


def _is_anthropic(path: str) -> bool:
    """The Anthropic Messages API's paths (with or without /v1), whose errors are rendered in its shape."""
    bare = _bare(path)
    return bare == "/messages" or bare.startswith("/messages/")


def create_server(settings: Settings) -> tuple[Listener, Live]:
    """The gateway's HTTP server, and what passes each request on to the current gateway (``live.reload``
    replaces it). ``runner.start_gateway`` makes it listen; start and stop ``live`` around it. A client that
    disconnects cancels its handler, which closes the upstream request."""
    live = Live(Gateway(settings))
    listener = Listener(
        live.handle,
        live.on_prepare,
        limit=settings.max_connections,
        body_limit=settings.max_body_size,
        header_timeout=settings.header_timeout,  # closes idle connections and those still sending their head
    )
    return listener, live
