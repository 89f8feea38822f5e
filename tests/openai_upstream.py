"""A real OpenAI-compatible upstream on loopback that behaves like vLLM's OpenAI server, steerable by the tests.

Routes: ``POST /v1/chat/completions``, ``POST /v1/completions`` (both streamed with ``"stream": true``),
``POST /v1/embeddings``, ``GET /v1/models``, ``GET /v1/models/{id}`` and ``GET /health`` (200, or 503 while
``healthy`` is False). Every answer carries ``X-Replica: <name>``. With an ``api_key``, every ``/v1`` request
needs ``Authorization: Bearer <api_key>``. Errors have vLLM's shape, ``{"error": {"message", "type", "param",
"code"}}``. The last user message steers the answer (see ``tests/openai_answers.py``).

``fail_next(n, status)`` makes the next n ``/v1`` POSTs fail; ``stop()`` kills the server (the listener and
every open connection, in-flight streams included); ``restart()`` serves again on the same port.
"""

from __future__ import annotations

import asyncio
import collections
import errno
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from .openai_answers import (
    SIMULATED_FAILURE,
    Answer,
    RequestError,
    argument_pieces,
    check_common,
    check_inputs,
    check_messages,
    check_model,
    check_prompts,
    embedding,
    encode_embedding,
    error_body,
    last_user_text,
    message_text,
    parse_directives,
    prompt_tokens,
    usage,
)
from .openai_answers import answer as make_answer

__all__ = ["OpenAIUpstream"]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_NOT_JSON = object()


def _json(status: int, body: Any, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json", headers=headers)


def _event(data: Any) -> bytes:
    return b"data: " + orjson.dumps(data) + b"\n\n"


class _Dropped(Exception):
    """The connection was dropped on purpose (``<<cut_after:N>>``)."""


class OpenAIUpstream:
    """One replica. ``calls`` counts requests by ``"METHOD /path"``; ``received`` keeps each one's method, path,
    headers (case-insensitive) and parsed JSON body (None when there is none or it is not JSON)."""

    def __init__(self, name: str, models: list[str] | None = None, *, api_key: str | None = None) -> None:
        self.name = name
        self.models = list(models) if models is not None else ["test-model"]
        self.api_key = api_key
        self.port = 0
        self.calls: collections.Counter[str] = collections.Counter()
        self.received: list[dict[str, Any]] = []
        self.healthy = True
        self._failures: collections.deque[tuple[int, float | None, dict[str, Any] | None]] = collections.deque()
        self._runner: web.AppRunner | None = None
        self._server: asyncio.AbstractServer | None = None
        self._created = int(time.time())

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return self.origin + "/v1"

    # -------------------------------------------------------------------------------------------- life cycle

    async def start(self, port: int = 0) -> str:
        """Listen on 127.0.0.1 (``port=0`` picks a free port); returns :attr:`url`."""
        if self._server is not None:
            return self.url
        app = web.Application(middlewares=[self._middleware])
        app.on_response_prepare.append(self._tag)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/completions", self._completions)
        app.router.add_post("/v1/embeddings", self._embeddings)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/v1/models/{model:.+}", self._model)
        app.router.add_get("/health", self._health)
        runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=1.0)
        await runner.setup()
        factory = runner.server
        assert factory is not None
        loop = asyncio.get_running_loop()
        for attempt in range(50):
            try:
                server = await loop.create_server(factory, "127.0.0.1", port, reuse_address=True)
                break
            except OSError as exc:  # a restart can race the port's release
                if exc.errno != errno.EADDRINUSE or not port or attempt == 49:
                    await runner.cleanup()
                    raise
                await asyncio.sleep(0.05)
        self._runner, self._server = runner, server
        self.port = server.sockets[0].getsockname()[1]
        return self.url

    async def stop(self) -> None:
        """A kill: stop listening and abort every connection at once (in-flight requests and streams too)."""
        server, runner = self._server, self._runner
        if server is None or runner is None:
            return
        self._server = self._runner = None
        server.close()
        self._abort_all(runner)
        await runner.cleanup()

    async def restart(self) -> None:
        """Serve again on the same port after :meth:`stop`."""
        await self.start(self.port)

    @staticmethod
    def _abort_all(runner: web.AppRunner) -> None:
        if runner.server is None:
            return
        for handler in runner.server.connections:
            transport = handler.transport
            if transport is not None:
                transport.abort()

    # ------------------------------------------------------------------------------------------------ steering

    def fail_next(
        self, count: int, status: int = 503, *, retry_after: float | None = None, body: dict[str, Any] | None = None
    ) -> None:
        """The next ``count`` POSTs to ``/v1/*`` answer ``status`` (``body``, else an OpenAI-shaped error)."""
        self._failures.extend([(status, retry_after, body)] * count)

    def reset(self) -> None:
        self.calls.clear()
        self.received.clear()
        self._failures.clear()
        self.healthy = True

    # ---------------------------------------------------------------------------------------------- plumbing

    async def _tag(self, request: web.Request, response: web.StreamResponse) -> None:
        response.headers["X-Replica"] = self.name

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        raw = await request.read() if request.can_read_body else b""
        try:
            parsed: Any = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            parsed = _NOT_JSON
        self.calls[f"{request.method} {request.path}"] += 1
        self.received.append(
            {
                "method": request.method,
                "path": request.path,
                "headers": CIMultiDictProxy(CIMultiDict(request.headers)),
                "json": None if parsed is _NOT_JSON else parsed,
            }
        )
        try:
            if request.path == "/v1" or request.path.startswith("/v1/"):
                if self.api_key is not None and request.headers.get("Authorization") != f"Bearer {self.api_key}":
                    raise RequestError(401, "Unauthorized: a valid 'Authorization: Bearer' key is required.")
                if request.method == "POST" and self._failures:
                    status, retry_after, body = self._failures.popleft()
                    headers = {"Retry-After": f"{retry_after:g}"} if retry_after is not None else None
                    message = f"{self.name}: simulated failure ({status})"
                    return _json(status, body if body is not None else error_body(status, message), headers)
            return await handler(request)
        except RequestError as exc:
            return _json(exc.status, exc.body())
        except web.HTTPException as exc:  # unknown path or method: FastAPI's shape, as vLLM answers
            if exc.status < 400:
                raise
            return _json(exc.status, {"detail": exc.reason}, {k: v for k, v in exc.headers.items() if k == "Allow"})
        except _Dropped:
            raise asyncio.CancelledError from None

    @staticmethod
    async def _body(request: web.Request) -> dict[str, Any]:
        try:
            data = orjson.loads(await request.read())  # read once already: aiohttp keeps it
        except orjson.JSONDecodeError:
            data = None
        if not isinstance(data, dict):
            raise RequestError(400, "The request body must be a JSON object.")
        return data

    @staticmethod
    def _drop(request: web.Request) -> None:
        if request.transport is not None:
            request.transport.abort()
        raise _Dropped

    # ---------------------------------------------------------------------------------------------- routes

    async def _health(self, request: web.Request) -> web.Response:
        return _json(200, {}) if self.healthy else _json(503, error_body(503, f"{self.name} is not healthy"))

    def _card(self, model: str) -> dict[str, Any]:
        return {"id": model, "object": "model", "created": self._created, "owned_by": "vllm", "root": model}

    async def _models(self, request: web.Request) -> web.Response:
        return _json(200, {"object": "list", "data": [self._card(m) for m in self.models]})

    async def _model(self, request: web.Request) -> web.Response:
        model = request.match_info["model"]
        if model not in self.models:
            raise RequestError(404, f"The model `{model}` does not exist.", "model")
        return _json(200, self._card(model))

    async def _embeddings(self, request: web.Request) -> web.Response:
        data = await self._body(request)
        model = check_model(data, self.models)
        inputs = check_inputs(data)
        fmt = data.get("encoding_format") or "float"
        if fmt not in ("float", "base64"):
            raise RequestError(400, "'encoding_format' must be 'float' or 'base64'.", "encoding_format")
        size = data.get("dimensions") or 8
        if not isinstance(size, int) or not 1 <= size <= 4096:
            raise RequestError(400, "'dimensions' must be an integer from 1 to 4096.", "dimensions")
        items = [
            {"object": "embedding", "index": i, "embedding": encode_embedding(embedding(text, size), fmt)}
            for i, text in enumerate(inputs)
        ]
        tokens = prompt_tokens(inputs)
        return _json(200, {"object": "list", "data": items, "model": model, "usage": usage(tokens, 0)})

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        data = await self._body(request)
        model = check_model(data, self.models)
        messages = check_messages(data)
        stream, limit, stops, include_usage = check_common(data, chat=True)
        said = last_user_text(messages)
        result = make_answer(self.name, said, limit, stops)
        prompt = prompt_tokens([message_text(m.get("content")) for m in messages])
        head = {
            "id": "chatcmpl-" + request_id(),
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
        }
        if stream:
            return await self._chat_stream(request, head, said, result, prompt, include_usage)
        await self._before_answer(request, said)
        message: dict[str, Any] = {"role": "assistant", "content": result.text}
        if result.tool_calls:
            message["tool_calls"] = [call.as_json() for call in result.tool_calls]
        choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": result.finish_reason}
        return _json(200, {**head, "choices": [choice], "usage": usage(prompt, result.completion_tokens)})

    async def _before_answer(self, request: web.Request, said: str) -> None:
        directives = parse_directives(said)
        if directives.delay_ms:
            await asyncio.sleep(directives.delay_ms / 1000)
        if directives.cut_after is not None:
            self._drop(request)
        if directives.error_after is not None:
            raise RequestError(500, SIMULATED_FAILURE)

    async def _open_stream(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8"})
        response.headers["Cache-Control"] = "no-cache"
        await response.prepare(request)
        return response

    async def _chat_stream(
        self,
        request: web.Request,
        head: dict[str, Any],
        said: str,
        result: Answer,
        prompt: int,
        include_usage: bool,
    ) -> web.StreamResponse:
        chunk_head = {**head, "object": "chat.completion.chunk"}
        extra = {"usage": None} if include_usage else {}

        def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            return _event({**chunk_head, "choices": [choice], **extra})

        deltas: list[dict[str, Any]] = [{"content": piece} for piece in result.chunks]
        for index, call in enumerate(result.tool_calls):
            function = {"name": call.name, "arguments": ""}
            deltas.append({"tool_calls": [{"index": index, "id": call.id, "type": "function", "function": function}]})
            deltas += [
                {"tool_calls": [{"index": index, "function": {"arguments": piece}}]}
                for piece in argument_pieces(call.arguments)
            ]
        response = await self._open_stream(request)
        await response.write(chunk({"role": "assistant", "content": ""}))
        if not await self._stream_deltas(request, response, said, [chunk(d) for d in deltas]):
            return response
        await response.write(chunk({}, result.finish_reason))
        if include_usage:
            await response.write(
                _event({**chunk_head, "choices": [], "usage": usage(prompt, result.completion_tokens)})
            )
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    async def _stream_deltas(
        self, request: web.Request, response: web.StreamResponse, said: str, events: list[bytes]
    ) -> bool:
        """Writes the content events with the directives' delay, error and cut; False when the stream failed."""
        directives = parse_directives(said)
        for i, event in enumerate([*events, b""]):
            if directives.cut_after is not None and i == min(directives.cut_after, len(events)):
                self._drop(request)
            if directives.error_after is not None and i == min(directives.error_after, len(events)):
                await response.write(_event(error_body(500, SIMULATED_FAILURE)))
                await response.write_eof()
                return False
            if event:
                if directives.delay_ms:
                    await asyncio.sleep(directives.delay_ms / 1000)
                await response.write(event)
        return True

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        data = await self._body(request)
        model = check_model(data, self.models)
        prompts = check_prompts(data)
        stream, limit, stops, include_usage = check_common(data, chat=False)
        results = [make_answer(self.name, p, limit, stops) for p in prompts]
        prompt = prompt_tokens(prompts)
        completion = sum(r.completion_tokens for r in results)
        head = {"id": "cmpl-" + request_id(), "object": "text_completion", "created": int(time.time()), "model": model}
        if not stream:
            await self._before_answer(request, prompts[0])
            choices = [
                {"index": i, "text": r.text or "", "logprobs": None, "finish_reason": r.finish_reason}
                for i, r in enumerate(results)
            ]
            return _json(200, {**head, "choices": choices, "usage": usage(prompt, completion)})
        extra = {"usage": None} if include_usage else {}

        def chunk(index: int, text: str, finish: str | None = None) -> bytes:
            choice = {"index": index, "text": text, "logprobs": None, "finish_reason": finish}
            return _event({**head, "choices": [choice], **extra})

        response = await self._open_stream(request)
        for index, (said, result) in enumerate(zip(prompts, results, strict=True)):
            if not await self._stream_deltas(request, response, said, [chunk(index, p) for p in result.chunks]):
                return response
            await response.write(chunk(index, "", result.finish_reason))
        if include_usage:
            await response.write(_event({**head, "choices": [], "usage": usage(prompt, completion)}))
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response


def request_id() -> str:
    return secrets.token_hex(12)
