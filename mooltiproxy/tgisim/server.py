"""The simulated TGI HTTP server (aiohttp): the routes, status codes, headers and stream framing of TGI's router.

Routes: ``POST /generate``, ``POST /generate_stream``, ``POST /`` (compat: a JSON array, or a stream),
``POST /tokenize``, ``GET /info``, ``GET /health`` (also ``/ping`` and ``GET /``), ``GET /metrics``,
``GET /v1/models``. Unknown routes answer 404 and wrong methods 405, both with an empty body.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from typing import Any

import orjson
from aiohttp import web

from . import model
from .settings import TGI_VERSION, SimSettings
from .stream import EventWriter, stream_events
from .validation import (
    TgiError,
    is_json_content_type,
    parse_generate_request,
    validate_best_of,
    validate_parameters,
)

__all__ = ["SimSettings", "Simulator", "create_app"]

_PROTECTED = frozenset({("POST", "/"), ("POST", "/generate"), ("POST", "/generate_stream"), ("POST", "/tokenize")})
_TOO_LARGE = "Failed to buffer the request body: length limit exceeded"
_DRAIN_CAP = 64 * 1024 * 1024


class Simulator:
    """Shared state of one simulated server: settings, free slots and metrics."""

    def __init__(self, settings: SimSettings) -> None:
        self.settings = settings
        self.in_flight = 0
        self.counters: Counter[str] = Counter()

    def try_acquire(self, permits: int = 1) -> bool:
        """Take ``permits`` slots at once or none (TGI's ``try_acquire``: no queueing)."""
        if self.in_flight + permits > self.settings.max_concurrent_requests:
            return False
        self.in_flight += permits
        return True

    def release(self, permits: int = 1) -> None:
        self.in_flight -= permits

    def token_delay(self, directives: model.Directives) -> float:
        return directives.delay_ms / 1000.0 if directives.delay_ms is not None else self.settings.token_delay

    def failed(self, err: TgiError) -> None:
        self.counters[f'tgi_request_failure{{err="{err.error_type}"}}'] += 1

    def succeeded(self) -> None:
        self.counters["tgi_request_success"] += 1


SIMULATOR = web.AppKey("tgisim", Simulator)


def _error(err: TgiError) -> web.Response:
    return web.Response(status=err.status, body=err.body(), headers={"Content-Type": err.content_type})


async def _drain(request: web.Request) -> None:
    seen = 0
    while seen < _DRAIN_CAP and (chunk := await request.content.readany()):
        seen += len(chunk)


async def _read_request(request: web.Request, *, compat: bool) -> dict[str, Any]:
    """The JSON extractor: 415 on the content type, 413 on the size, then 400/422 from the body."""
    sim = request.app[SIMULATOR]
    content_type = request.headers.get("Content-Type")
    if not is_json_content_type(content_type):
        return parse_generate_request(b"", content_type, limits=sim.settings.limits)
    limit = sim.settings.payload_limit
    if request.content_length is not None and request.content_length > limit:
        await _drain(request)
        raise TgiError(413, _TOO_LARGE, plain=True)
    body = bytearray()
    async for chunk in request.content.iter_chunked(1 << 16):
        body += chunk
        if len(body) > limit:
            await _drain(request)
            raise TgiError(413, _TOO_LARGE, plain=True)
    return parse_generate_request(bytes(body), content_type, limits=sim.settings.limits, compat=compat)


def _details(gen: model.Generation, *, best_of: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if best_of:
        out["generated_text"] = gen.generated_text
    out["finish_reason"] = gen.finish_reason
    out["generated_tokens"] = len(gen.tokens)
    out["seed"] = gen.seed
    out["prefill"] = [t.as_prefill() for t in gen.prefill]
    out["tokens"] = [t.as_json() for t in gen.tokens]
    return out


def _top_tokens(gen: model.Generation) -> list[list[dict[str, Any]]]:
    return [[t.as_json() for t in top] for top in gen.top_tokens]


async def _generate(sim: Simulator, req: dict[str, Any]) -> tuple[dict[str, str], dict[str, Any]]:
    """``/generate``: 0a/0b, the semaphore, rules 2–21, generation; returns headers and body."""
    start = time.monotonic()
    limits = sim.settings.limits
    params = req["parameters"]
    validate_best_of(req, limits=limits)
    best_of = params["best_of"] if params["best_of"] and params["best_of"] > 1 else 1
    directives = model.parse_directives(req["inputs"])
    if directives.overloaded or not sim.try_acquire(best_of):
        raise TgiError.overloaded()
    try:
        queued = time.monotonic()
        checked = validate_parameters(req, limits=limits)
        validated = time.monotonic()
        gens = [
            model.generate(
                req,
                input_length=checked.input_length,
                max_total_tokens=limits.max_total_tokens,
                variant=k if best_of > 1 else None,
                fallback_seed=random.getrandbits(64),
            )
            for k in range(best_of)
        ]
        delay = sim.token_delay(directives)
        steps = max(len(g.tokens) + (g.error is not None) for g in gens)
        if delay > 0 and steps:
            await asyncio.sleep(delay * steps)
        for g in gens:
            if g.error is not None:
                raise TgiError.generation(g.error)
    finally:
        sim.release(best_of)
    done = time.monotonic()
    best = max(gens, key=lambda g: g.mean_logprob)
    body: dict[str, Any] = {"generated_text": best.generated_text}
    if params["details"] or params["decoder_input_details"]:
        details = _details(best, best_of=False)
        if best_of > 1:
            details["best_of_sequences"] = [
                {**_details(g, best_of=True), **({"top_tokens": _top_tokens(g)} if g.top_tokens else {})}
                for g in gens
                if g is not best
            ]
        if best.top_tokens:
            details["top_tokens"] = _top_tokens(best)
        body["details"] = details
    inference = done - validated
    generated = len(best.tokens)
    headers = {
        "x-compute-type": sim.settings.compute_type,
        "x-compute-time": f"{done - start:.6f}",
        "x-compute-characters": str(len(req["inputs"])),
        "x-total-time": str(int((done - start) * 1000)),
        "x-validation-time": str(int((validated - queued) * 1000)),
        "x-queue-time": str(int((queued - start) * 1000)),
        "x-inference-time": str(int(inference * 1000)),
        "x-time-per-token": str(int(inference * 1000 / generated) if generated else 0),
        "x-prompt-tokens": str(best.input_length),
        "x-generated-tokens": str(generated),
    }
    return headers, body


async def _answer(request: web.Request, req: dict[str, Any], *, wrap: bool) -> web.Response:
    sim = request.app[SIMULATOR]
    sim.counters["tgi_request_count"] += 1
    try:
        headers, body = await _generate(sim, req)
    except TgiError as err:
        sim.failed(err)
        return _error(err)
    sim.succeeded()
    payload = orjson.dumps([body] if wrap else body)
    return web.Response(body=payload, headers={**headers, "Content-Type": "application/json"})


async def _stream(request: web.Request, req: dict[str, Any]) -> web.StreamResponse:
    sim = request.app[SIMULATOR]
    sim.counters["tgi_request_count"] += 1
    resp = web.StreamResponse(
        status=200,
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "x-compute-type": sim.settings.compute_type,
            "x-compute-characters": str(len(req["inputs"])),
            "X-Accel-Buffering": "no",
        },
    )
    await resp.prepare(request)
    writer = EventWriter(resp, sim.settings)
    try:
        await stream_events(sim, req, writer)
        await writer.close()
        await resp.write_eof()
    except (ConnectionError, RuntimeError):  # the client went away; nothing left to answer
        pass
    return resp


async def generate(request: web.Request) -> web.StreamResponse:
    try:
        req = await _read_request(request, compat=False)
    except TgiError as err:
        return _error(err)
    return await _answer(request, req, wrap=False)


async def generate_stream(request: web.Request) -> web.StreamResponse:
    try:
        req = await _read_request(request, compat=False)
    except TgiError as err:
        return _error(err)
    return await _stream(request, req)


async def compat_generate(request: web.Request) -> web.StreamResponse:
    sim = request.app[SIMULATOR]
    try:
        req = await _read_request(request, compat=True)
    except TgiError as err:
        return _error(err)
    if req["parameters"]["return_full_text"] is None:
        tag = sim.settings.model_pipeline_tag
        req["parameters"]["return_full_text"] = tag is None or tag == "text-generation"
    if req.pop("stream"):
        return await _stream(request, req)
    return await _answer(request, req, wrap=True)


async def tokenize(request: web.Request) -> web.Response:
    try:
        req = await _read_request(request, compat=False)
    except TgiError as err:
        return _error(err)
    out = [{"id": model.BOS.id, "text": "", "start": 0, "stop": 0}]
    offset = 0
    for text in model.tokenize(req["inputs"]):
        out.append({"id": model.token_id(text), "text": text, "start": offset, "stop": offset + len(text)})
        offset += len(text)
    return web.Response(body=orjson.dumps(out), content_type="application/json")


def _json(obj: Any) -> web.Response:
    return web.Response(body=orjson.dumps(obj), content_type="application/json")


async def info(request: web.Request) -> web.Response:
    s = request.app[SIMULATOR].settings
    return _json(
        {
            "model_id": s.model_id,
            "model_sha": None,
            "model_pipeline_tag": s.model_pipeline_tag,
            "max_concurrent_requests": s.max_concurrent_requests,
            "max_best_of": s.limits.max_best_of,
            "max_stop_sequences": s.limits.max_stop_sequences,
            "max_input_tokens": s.limits.max_input_tokens,
            "max_total_tokens": s.limits.max_total_tokens,
            "validation_workers": 2,
            "max_client_batch_size": s.limits.max_client_batch_size,
            "router": "text-generation-router",
            "version": TGI_VERSION,
            "sha": None,
            "docker_label": None,
        }
    )


async def health(request: web.Request) -> web.Response:
    return web.Response(status=200)


async def models(request: web.Request) -> web.Response:
    model_id = request.app[SIMULATOR].settings.model_id
    return _json({"object": "list", "data": [{"id": model_id, "object": "model", "created": 0, "owned_by": model_id}]})


async def metrics(request: web.Request) -> web.Response:
    sim = request.app[SIMULATOR]
    lines: list[str] = []
    for name in ("tgi_request_count", "tgi_request_success"):
        lines += [f"# TYPE {name} counter", f"{name} {sim.counters[name]}"]
    lines.append("# TYPE tgi_request_failure counter")
    lines += [f"{key} {value}" for key, value in sorted(sim.counters.items()) if key.startswith("tgi_request_failure")]
    lines += ["# TYPE tgi_queue_size gauge", "tgi_queue_size 0"]
    lines += ["# TYPE tgi_batch_current_size gauge", f"tgi_batch_current_size {sim.in_flight}"]
    return web.Response(
        body=("\n".join(lines) + "\n").encode(), headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"}
    )


@web.middleware
async def _axum_defaults(request: web.Request, handler: Any) -> web.StreamResponse:
    """Unknown route: 404, wrong method: 405 (with ``allow``); both with an empty body, as the router does."""
    try:
        response: web.StreamResponse = await handler(request)
    except web.HTTPMethodNotAllowed as exc:
        return web.Response(status=405, headers={"allow": ",".join(sorted(exc.allowed_methods))})
    except web.HTTPNotFound:
        return web.Response(status=404)
    return response


@web.middleware
async def _api_key(request: web.Request, handler: Any) -> web.StreamResponse:
    """With an API key, the generation routes need ``Authorization: Bearer <key>`` (any case), else 401."""
    key = request.app[SIMULATOR].settings.api_key
    if key is not None and (request.method, request.path) in _PROTECTED:
        if request.headers.get("Authorization", "").lower() != f"bearer {key}".lower():
            return web.Response(status=401)
    response: web.StreamResponse = await handler(request)
    return response


def create_app(settings: SimSettings | None = None) -> web.Application:
    """The simulator as an aiohttp application."""
    app = web.Application(middlewares=[_axum_defaults, _api_key])
    app[SIMULATOR] = Simulator(settings if settings is not None else SimSettings())
    app.router.add_post("/generate", generate)
    app.router.add_post("/generate_stream", generate_stream)
    app.router.add_post("/", compat_generate)
    app.router.add_post("/tokenize", tokenize)
    app.router.add_get("/", health)
    app.router.add_get("/health", health)
    app.router.add_get("/ping", health)
    app.router.add_get("/info", info)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/v1/models", models)
    return app
