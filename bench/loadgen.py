"""Built-in closed-loop load generator: one aiohttp session, N concurrent workers, a fixed duration.

It runs in its own process (``run.py`` pins it to the load core) and prints one JSON object on stdout::

    {"requests": int, "errors": int, "error_samples": [...], "seconds": float,
     "latency_ms": {"p50": …, "p90": …, "p99": …, "max": …, "mean": …},
     "first_chunk_ms": {…} (with --stream), "bytes": int}

A request counts as an error when it raises, answers a status other than 200, or (with ``--expect``) its body
lacks the expected bytes. Latency is the time to the last byte; with ``--stream`` the time to the first body
chunk is measured too, or with ``--first-marker TEXT`` the time until the body first contains TEXT (the first
content event of a stream that opens with other events).

Run: ``python bench/loadgen.py --url URL --body-file FILE [--header 'Name: value'] [--connections 32]
[--duration 5] [--expect TEXT] [--stream [--first-marker TEXT]]``
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from mooltiproxy.runner import run as run_loop  # uvloop where it is available, as the gateway runs

MAX_ERROR_SAMPLES = 5


def percentiles(values: list[float]) -> dict[str, float]:
    """p50/p90/p99/p99.9, max and mean of ``values`` (nearest rank), in the unit given."""
    if not values:
        return {}
    ordered = sorted(values)
    last = len(ordered) - 1

    def rank(p: float) -> float:
        return ordered[min(last, round(p / 100 * last))]

    return {
        "p50": rank(50),
        "p90": rank(90),
        "p99": rank(99),
        "p99_9": rank(99.9),
        "max": ordered[-1],
        "mean": sum(ordered) / len(ordered),
    }


class Load:
    """The shared counters of one run."""

    def __init__(self, expect: bytes | None, stream: bool, marker: bytes = b"") -> None:
        self.expect = expect
        self.stream = stream
        self.marker = marker
        self.latencies: list[float] = []
        self.first_chunks: list[float] = []
        self.errors = 0
        self.error_samples: list[str] = []
        self.bytes = 0

    def error(self, what: str) -> None:
        self.errors += 1
        if len(self.error_samples) < MAX_ERROR_SAMPLES:
            self.error_samples.append(what[:300])

    async def one(self, session: aiohttp.ClientSession, url: str, body: bytes, headers: dict[str, str]) -> None:
        started = time.perf_counter()
        try:
            async with session.post(url, data=body, headers=headers) as resp:
                if self.stream:
                    first = await self.first(resp.content)
                    self.first_chunks.append((time.perf_counter() - started) * 1000)
                    data = first + await resp.content.read()
                else:
                    data = await resp.read()
                status = resp.status
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            self.error(f"{type(exc).__name__}: {exc}")
            return
        self.latencies.append((time.perf_counter() - started) * 1000)
        self.bytes += len(data)
        if status != 200:
            self.error(f"status {status}: {data[:200]!r}")
        elif self.expect is not None and self.expect not in data:
            self.error(f"unexpected answer: {data[:200]!r}")

    async def first(self, content: aiohttp.StreamReader) -> bytes:
        """The body up to its first chunk, or up to the chunk that completes the marker (or the whole body)."""
        data = await content.readany()
        if not self.marker:
            return data
        while data and self.marker not in data:  # each turn reads more of the body; the loop ends with it
            more = await content.readany()
            if not more:
                break
            data += more
        return data


def load_session(connections: int) -> aiohttp.ClientSession:
    """The load generators' session: up to ``connections`` kept alive, no decompression, no User-Agent, 30 s per
    request."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=connections),
        timeout=aiohttp.ClientTimeout(total=30),
        auto_decompress=False,
        skip_auto_headers=("User-Agent",),
    )


async def run(url: str, body: bytes, headers: dict[str, str], connections: int, duration: float, load: Load) -> float:
    async with load_session(connections) as session:
        started = time.perf_counter()
        deadline = started + duration

        async def worker() -> None:
            while time.perf_counter() < deadline:  # bounded by the deadline
                await load.one(session, url, body, headers)

        await asyncio.gather(*(worker() for _ in range(connections)))
        return time.perf_counter() - started


def parse_header(text: str) -> tuple[str, str]:
    name, sep, value = text.partition(":")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"expected 'Name: value', got {text!r}")
    return name.strip(), value.strip()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Closed-loop HTTP POST load generator (aiohttp).")
    parser.add_argument("--url", required=True)
    parser.add_argument("--body-file", type=Path, required=True)
    parser.add_argument("--header", type=parse_header, action="append", default=[])
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--expect", help="bytes every answer must contain")
    parser.add_argument("--stream", action="store_true", help="also measure the time to the first body chunk")
    parser.add_argument("--first-marker", default="", help="with --stream: the first chunk is the one with TEXT")
    args = parser.parse_args(argv)
    body = args.body_file.read_bytes()
    headers = dict(args.header)
    load = Load(args.expect.encode() if args.expect else None, args.stream, args.first_marker.encode())
    seconds = run_loop(run(args.url, body, headers, max(1, args.connections), max(0.1, args.duration), load))
    result: dict[str, Any] = {
        "requests": len(load.latencies),
        "errors": load.errors,
        "error_samples": load.error_samples,
        "seconds": seconds,
        "latency_ms": percentiles(load.latencies),
        "bytes": load.bytes,
    }
    if args.stream:
        result["first_chunk_ms"] = percentiles(load.first_chunks)
    sys.stdout.buffer.write(orjson.dumps(result) + b"\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
