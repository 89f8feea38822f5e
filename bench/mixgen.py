"""The soak's mixed-traffic generator: one aiohttp session, N closed-loop workers, the kinds of ``bench/mix.py``.

It runs in its own process (``soak.py`` pins it to the load core, as the benchmark's load generator) and reads the
kinds from a JSON file (``{"kinds": [Kind fields…]}``). The workers take the kinds in turn from one shuffled
schedule that holds each kind as many times as its weight, so the mix keeps its proportions at every moment. Each
outcome is checked cheaply (the status and a substring, or the way the request must break off); any other outcome,
and any exception, is unexpected.

Every ``--interval`` seconds it prints one JSON line of counts since the start::

    {"t": 10.0, "requests": {kind: n}, "unexpected": {kind: n}, "p50_ms": …, "p99_ms": …}

(the percentiles: of the whole answers read in that interval), then, once the workers have stopped, a last line
with ``"final": true``, the same counts and, per kind, up to 5 samples of unexpected outcomes and the latency
percentiles of its expected outcomes.

Run: ``python bench/mixgen.py --kinds FILE [--connections 32] [--duration 60] [--interval 5]``
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import random
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from loadgen import MAX_ERROR_SAMPLES, load_session, percentiles, run_loop
from mix import ABORT, BROKEN, DROP, PARTIAL, READ, Kind
from yarl import URL

#: one request's outcome: as expected or not, and what was seen
Outcome = tuple[bool, str]


def schedule(kinds: list[Kind], seed: int) -> Iterator[Kind]:
    """The kinds, each as many times as its weight, shuffled once, repeated for ever."""
    order = [kind for kind in kinds for _ in range(kind.weight)]
    random.Random(seed).shuffle(order)
    return itertools.cycle(order)


def answer(kind: Kind, status: int, data: bytes) -> Outcome:
    if status == kind.status and kind.expect.encode() in data:
        return True, ""
    return False, f"status {status}: {data[:200]!r}"


async def read(session: aiohttp.ClientSession, kind: Kind) -> Outcome:
    async with session.request(kind.method, kind.url, data=kind.body or None, headers=kind.headers) as resp:
        return answer(kind, resp.status, await resp.read())


async def broken(session: aiohttp.ClientSession, kind: Kind) -> Outcome:
    async with session.request(kind.method, kind.url, data=kind.body or None, headers=kind.headers) as resp:
        try:
            data = await resp.read()
        except aiohttp.ClientPayloadError:
            return resp.status == kind.status, f"status {resp.status}"
    return False, f"the body was complete: status {resp.status}: {data[:200]!r}"


async def drop(session: aiohttp.ClientSession, kind: Kind) -> Outcome:
    async with session.request(kind.method, kind.url, data=kind.body or None, headers=kind.headers) as resp:
        first = await resp.content.readany()
        resp.close()  # the connection, not just the response: the gateway sees the client leave mid-stream
    return answer(kind, resp.status, first)


async def abort(session: aiohttp.ClientSession, kind: Kind) -> Outcome:
    started = time.perf_counter()
    seen: list[tuple[int, bytes]] = []

    async def fetch() -> None:
        async with session.request(kind.method, kind.url, data=kind.body or None, headers=kind.headers) as resp:
            seen.append((resp.status, await resp.read()))

    try:
        await asyncio.wait_for(fetch(), kind.abort_ms / 1000)
    except asyncio.TimeoutError:
        return True, ""
    took = (time.perf_counter() - started) * 1000
    status, data = seen[0]
    if kind.answer_after_ms and took >= kind.answer_after_ms and status == 200:
        return True, ""  # the upstream's answer, read after its pause: this client's loop was late, not the gateway
    return False, f"answered within {kind.abort_ms:g} ms (after {took:.1f} ms): status {status}: {data[:160]!r}"


async def partial(_session: aiohttp.ClientSession, kind: Kind) -> Outcome:
    url = URL(kind.url)
    body = kind.body.encode()
    _, writer = await asyncio.open_connection(url.host, url.port)
    head = [f"{kind.method} {url.raw_path_qs} HTTP/1.1", f"Host: {url.host}:{url.port}"]
    head += [f"{name}: {value}" for name, value in kind.headers.items()]
    head.append(f"Content-Length: {len(body)}")
    try:
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + body[: len(body) // 2])
        await writer.drain()
        await asyncio.sleep(kind.abort_ms / 1000)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    return True, ""


ACTIONS: dict[str, Callable[[aiohttp.ClientSession, Kind], Awaitable[Outcome]]] = {
    READ: read,
    BROKEN: broken,
    DROP: drop,
    ABORT: abort,
    PARTIAL: partial,
}


class Counts:
    """What the workers did, per kind."""

    def __init__(self, kinds: list[Kind]) -> None:
        self.requests = {kind.name: 0 for kind in kinds}
        self.unexpected = {kind.name: 0 for kind in kinds}
        self.samples: dict[str, list[str]] = {kind.name: [] for kind in kinds}
        self.latencies: dict[str, list[float]] = {kind.name: [] for kind in kinds}
        #: the latencies of the whole answers read since the last line
        self.recent: list[float] = []

    async def one(self, session: aiohttp.ClientSession, kind: Kind) -> None:
        started = time.perf_counter()
        try:
            ok, detail = await ACTIONS[kind.action](session, kind)
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            ok, detail = False, f"{type(exc).__name__}: {exc}"
        self.requests[kind.name] += 1
        if not ok:
            self.unexpected[kind.name] += 1
            if len(self.samples[kind.name]) < MAX_ERROR_SAMPLES:
                self.samples[kind.name].append(detail[:300])
            return
        ms = (time.perf_counter() - started) * 1000
        self.latencies[kind.name].append(ms)
        if kind.action == READ:
            self.recent.append(ms)

    def line(self, elapsed: float, final: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {"t": round(elapsed, 3), "requests": self.requests, "unexpected": self.unexpected}
        if final:
            out["final"] = True
            out["samples"] = {k: v for k, v in self.samples.items() if v}
            out["latency_ms"] = {k: percentiles(v) for k, v in self.latencies.items()}
        else:
            recent = percentiles(self.recent)
            out["p50_ms"], out["p99_ms"] = recent.get("p50"), recent.get("p99")
            self.recent = []
        return out


def emit(line: dict[str, Any]) -> None:
    sys.stdout.buffer.write(orjson.dumps(line) + b"\n")
    sys.stdout.buffer.flush()


async def run(kinds: list[Kind], connections: int, duration: float, interval: float, seed: int) -> None:
    counts = Counts(kinds)
    turns = schedule(kinds, seed)
    async with load_session(connections) as session:
        started = time.perf_counter()
        deadline = started + duration

        async def worker() -> None:
            while time.perf_counter() < deadline:  # bounded by the deadline
                await counts.one(session, next(turns))

        async def report() -> None:
            for n in range(1, int(duration / interval + 1e-9) + 1):
                await asyncio.sleep(max(0.0, started + n * interval - time.perf_counter()))
                emit(counts.line(time.perf_counter() - started))

        await asyncio.gather(report(), *(worker() for _ in range(connections)))
        emit(counts.line(time.perf_counter() - started, final=True))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Mixed closed-loop traffic for the soak (aiohttp).")
    parser.add_argument("--kinds", type=Path, required=True, help='JSON file: {"kinds": [Kind fields…]}')
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--interval", type=float, default=5.0)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    kinds = [Kind(**k) for k in orjson.loads(args.kinds.read_bytes())["kinds"]]
    interval = max(0.1, args.interval)
    run_loop(run(kinds, max(1, args.connections), max(interval, args.duration), interval, args.seed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
