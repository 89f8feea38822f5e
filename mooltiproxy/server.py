"""The inbound side: the aiohttp application, in the fixed order health → CORS pre-flight → guard → routing → proxy.

Every error becomes an OpenAI-shaped JSON answer with its status; an unexpected exception is logged with its
traceback and answered as an OpenAI-shaped 500 without it. After a response has started, an error can only cut it
short (see ``proxy``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import orjson
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError

from .config.model import Settings
from .errors import BadRequest, GatewayError, NotFound, PayloadTooLarge, UpstreamError
from .guard import Guard
from .health import watch
from .keys import KeyRing, KeyStore, permit
from .limits import Limiter
from .models import ModelList
from .proxy import Exchange, forward
from .redact import Redactor
from .relay import internal_error
from .routing import model_of, parse_json, pick_target, renamed, routes
from .state import open_state
from .upstream import Unavailable, Upstream

__all__ = ["HEALTH_PATH", "create_app"]

access_log = logging.getLogger("mooltiproxy.access")
log = logging.getLogger("mooltiproxy")

HEALTH_PATH = "/-/health"
COUNT_TOKENS = "/messages/count_tokens"
_PREFLIGHT_METHODS = "GET, POST, PUT, PATCH, DELETE, OPTIONS"
_EXPOSED = "Retry-After, X-Request-Id, X-Prompt-Tokens, X-Generated-Tokens"


class Gateway:
    """Per-process state: settings, the guard with its ban list, one upstream client per target."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.state = open_state(settings.redis)
        self.keys = KeyRing(KeyStore(settings.keys_db), self.state.unban) if settings.keys_db else None
        self.limiter = Limiter(self.state, settings.redis_limits_on_failure)
        self.guard = Guard(
            settings.master_key,
            max_tries=settings.max_tries,
            whitelist=settings.whitelist,
            blacklist=settings.blacklist,
            trusted_proxies=settings.trusted_proxies,
            ban_seconds=settings.ban_seconds,
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

    async def start(self, _app: web.Application) -> None:
        if self.keys is not None:
            await self.keys.start()
        for upstream in self.upstreams.values():
            await upstream.start()
            if upstream.target.health is not None:
                self.watchers.append(asyncio.ensure_future(watch(upstream, upstream.target.health)))

    async def stop(self, _app: web.Application) -> None:
        for task in self.watchers:
            task.cancel()
        await asyncio.gather(*self.watchers, return_exceptions=True)
        for upstream in self.upstreams.values():
            await upstream.close()
        if self.keys is not None:
            await self.keys.stop()
        await self.state.close()

    def allowed_origin(self, origin: str | None) -> str | None:
        if origin is None:
            return None
        if self.any_origin:
            return "*"
        return origin if origin in self.origins else None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        started = time.perf_counter()
        ip = request.remote or "unknown"
        target_name = "-"
        exchange: Exchange | None = None
        response: web.StreamResponse | None = None
        anthropic = _is_anthropic(request.path)  # errors in Anthropic's shape
        try:
            forwarded = None
            if self.guard.trusted_proxies:  # every X-Forwarded-For line: a proxy may add its own below the client's
                forwarded = ",".join(request.headers.getall("X-Forwarded-For", ())) or None
            ip = self.guard.client_ip(request.remote, forwarded)
            path = request.path
            if path == HEALTH_PATH and request.method in ("GET", "HEAD"):
                response = web.json_response({"status": "ok"})
                return response
            if request.method == "OPTIONS":
                await self.guard.check_address(ip)
                response = self.preflight(request)
                return response
            key = await self.guard.check(ip, request.headers.get("Authorization"), request.headers.get("x-api-key"))
            header = request.headers.get("target")
            body: bytes | None = None
            payload: Any = None
            if not header and self.settings.model_index and request.method == "POST":
                body = await self.read(request)
                payload = parse_json(request.headers, body)
            target = pick_target(self.settings, header, model_of(payload))
            target_name = target.name
            if key is not None:  # a virtual key: its targets and models, then its limits
                if payload is None and body is None and key.models is not None and request.method == "POST":
                    body = await self.read(request)
                    payload = parse_json(request.headers, body)
                permit(key, target.name, model_of(payload))
                await self.limiter.admit(key)
            route = target.find(path)
            if route is not None and getattr(route.answer_mapper, "error_format", None) == "anthropic":
                anthropic = True
            if route is None:
                if request.method == "GET" and ModelList.handles(path):
                    response = await self.models.answer(path, target.name if header else None)
                    return response
                if _bare(path) == COUNT_TOKENS:
                    raise GatewayError(f"target '{target.name}' cannot count tokens", status=501, code="not_supported")
                raise NotFound(f"no route for '{path}' on target '{target.name}'", code="unknown_route")
            if not header and self.settings.model_index and request.method == "GET" and ModelList.handles(path):
                response = await self.models.answer(path, None)  # every routable model, not one target's list
                return response
            hops = routes(self.settings, target, route, path, request.method)
            if body is None:
                body = await self.read(request)
            query = request.raw_path.partition("?")[2]
            for i, hop in enumerate(hops):
                target_name = hop.target.name
                exchange = Exchange(request.method, path, query, request.headers, body)
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
            return response
        except Exception as exc:
            if exchange is not None and exchange.started:
                # The answer has begun: a second one cannot follow. Cut the connection so the client knows.
                log.error("error after the answer started on %s %s", request.method, request.path, exc_info=exc)
                if request.transport is not None:
                    request.transport.abort()
                raise
            response = self.error_response(internal_error(exc, request.method, request.path), anthropic)
            return response
        finally:
            status = response.status if response is not None else 499
            upstream_ms = exchange.upstream_seconds * 1000 if exchange else 0.0
            access_log.info(
                '%s "%s %s" target=%s status=%d upstream_ms=%.1f total_ms=%.1f',
                ip,
                request.method,
                request.path,
                target_name,
                status,
                upstream_ms,
                (time.perf_counter() - started) * 1000,
            )

    async def read(self, request: web.Request) -> bytes:
        limit = self.settings.max_body_size
        if request.content_length is not None and request.content_length > limit:
            raise PayloadTooLarge(f"the request body is larger than {limit} bytes")
        if not request.body_exists:
            return b""
        try:
            return await request.read()
        except web.HTTPRequestEntityTooLarge as exc:
            raise PayloadTooLarge(f"the request body is larger than {limit} bytes") from exc
        except (RequestPayloadError, HttpProcessingError) as exc:  # broken chunking or content encoding
            raise BadRequest(f"the request body cannot be read: {exc}") from exc

    def preflight(self, request: web.Request) -> web.StreamResponse:
        origin = request.headers.get("Origin")
        if origin is None:  # a plain OPTIONS, not a browser pre-flight
            return web.Response(status=204, headers={"Allow": _PREFLIGHT_METHODS})
        allowed = self.allowed_origin(origin)
        if allowed is None:
            return self.error_response(GatewayError(f"origin '{origin}' is not allowed", status=403, type="cors"))
        headers = {
            "Access-Control-Allow-Methods": _PREFLIGHT_METHODS,
            "Access-Control-Allow-Headers": request.headers.get("Access-Control-Request-Headers", "*"),
            "Access-Control-Max-Age": "600",
        }
        return web.Response(status=204, headers=headers)

    def error_response(self, error: GatewayError, anthropic: bool = False) -> web.Response:
        body = error.anthropic_json() if anthropic else error.to_json()
        return web.Response(status=error.status, body=body, content_type="application/json", headers=error.headers)

    async def on_prepare(self, request: web.Request, response: web.StreamResponse) -> None:
        """Headers every answer gets: no server version for scanners, CORS for browser pages."""
        response.headers["Server"] = "mooltiproxy"
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


def create_app(settings: Settings) -> web.Application:
    """The gateway's application. Serve it with ``handler_cancellation=True`` (as ``runner.start_gateway`` does),
    so that a client that disconnects cancels its upstream request; aiohttp's default keeps it running."""
    gateway = Gateway(settings)
    # The body limit is enforced in Gateway.read with an OpenAI-shaped 413; aiohttp's own is set just above it.
    app = web.Application(client_max_size=settings.max_body_size + 1)
    app.router.add_route("*", "/{tail:.*}", gateway.handle)
    app.on_startup.append(gateway.start)
    app.on_cleanup.append(gateway.stop)
    app.on_response_prepare.append(gateway.on_prepare)
    return app
