"""``/generate_stream``: the event sequence and its framing.

Once the body parsed, the answer is always 200 ``text/event-stream``. Each event is ``data: <json>\\n\\n`` (or
``data:<json>`` as TGI ≤ 2.0 wrote it); a failure — S1/S2, overload, validation, generation — is one
``{"error", "error_type"}`` event, then the stream ends. There is no ``[DONE]``. Keep-alives are ``:\\n\\n``.
"""

from __future__ import annotations

import asyncio
import random
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

from . import model
from .settings import SimSettings
from .validation import TgiError, validate_parameters, validate_stream

if TYPE_CHECKING:
    from .server import Simulator

__all__ = ["EventWriter", "stream_events"]

_KEEPALIVE = b":\n\n"


class EventWriter:
    """Writes SSE events, one write per event or re-cut into fixed-size writes."""

    def __init__(self, response: web.StreamResponse, settings: SimSettings) -> None:
        self._response = response
        self._prefix = settings.data_prefix.encode()
        self._chunk = settings.chunk_size()
        self._keepalive = settings.keepalive
        self._pending = bytearray()

    async def event(self, obj: Any) -> None:
        await self._send(self._prefix + orjson.dumps(obj) + b"\n\n")

    async def error(self, err: TgiError) -> None:
        await self.event({"error": err.message, "error_type": err.error_type})

    async def wait(self, delay: float) -> None:
        """Sleeps ``delay`` seconds, sending a keep-alive comment for every ``keepalive`` seconds of silence."""
        if delay <= 0:
            return
        remaining = delay
        while self._keepalive > 0 and remaining > self._keepalive:
            await asyncio.sleep(self._keepalive)
            remaining -= self._keepalive
            await self._send(_KEEPALIVE)
        await asyncio.sleep(remaining)

    async def _send(self, data: bytes) -> None:
        if self._chunk is None:
            await self._response.write(data)
            return
        self._pending += data
        while len(self._pending) >= self._chunk:
            piece = bytes(self._pending[: self._chunk])
            del self._pending[: self._chunk]
            await self._response.write(piece)

    async def close(self) -> None:
        if self._pending:
            piece = bytes(self._pending)
            self._pending.clear()
            await self._response.write(piece)


async def stream_events(sim: Simulator, req: dict[str, Any], out: EventWriter) -> None:
    """S1/S2, the semaphore, rules 2–21, then one event per token (EOS included)."""
    limits = sim.settings.limits
    params = req["parameters"]
    directives = model.parse_directives(req["inputs"])
    try:
        validate_stream(req)
        if directives.overloaded or not sim.try_acquire(1):
            raise TgiError.overloaded()
    except TgiError as err:
        sim.failed(err)
        await out.error(err)
        return
    try:
        try:
            checked = validate_parameters(req, limits=limits)
        except TgiError as err:
            sim.failed(err)
            await out.error(err)
            return
        gen = model.generate(
            req,
            input_length=checked.input_length,
            max_total_tokens=limits.max_total_tokens,
            fallback_seed=random.getrandbits(64),
        )
        delay = sim.token_delay(directives)
        count = len(gen.tokens)
        for index, token in enumerate(gen.tokens, start=1):
            await out.wait(delay)
            last = index == count and gen.error is None
            event: dict[str, Any] = {"index": index, "token": token.as_json()}
            if gen.top_tokens:
                event["top_tokens"] = [t.as_json() for t in gen.top_tokens[index - 1]]
            event["generated_text"] = gen.generated_text if last else None
            event["details"] = None
            if last and params["details"]:
                event["details"] = {
                    "finish_reason": gen.finish_reason,
                    "generated_tokens": count,
                    "seed": gen.seed,
                    "input_length": gen.input_length,
                }
            await out.event(event)
        if gen.error is not None:
            await out.wait(delay)
            failure = TgiError.generation(gen.error)
            sim.failed(failure)
            await out.error(failure)
            return
        sim.succeeded()
    finally:
        sim.release(1)
