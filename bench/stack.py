"""The options for the request path, measured side by side in one run: which HTTP client, which server, what the
access line costs. The figures behind the choices in bench/README.md ("Options, measured").

``python bench/stack.py [--requests 20000] [--seconds 4]``:

* **upstream client**: this process, pinned to the first CPU, sends ``--requests`` requests (32 at a time, keep-
  alive) to the fake upstream (``bench/upstream.py``, on the second CPU) with aiohttp's ``ClientSession`` (as the
  gateway did) and with ``mooltiproxy.client.Pool`` (as it does), twice each, interleaved. CPU per request is this
  process's CPU time over the requests.
* **server**: the same fixed JSON answer served by ``aiohttp.web`` (an ``Application`` with one catch-all route,
  as the gateway once ran), by aiohttp's low-level ``web.Server`` (no application, router or signals), by the
  gateway's own server (``mooltiproxy.inbound``, as the gateway runs now) and by a bare ``asyncio.Protocol`` over
  llhttp (``httptools``), each in a subprocess on the first CPU, loaded with wrk (or the built-in generator) from
  the second. CPU per request is the server's, from ``/proc``.
* **access line**: one line of the gateway's access log, text and JSON, written to a file.

Each figure is set against the others of the same run only; run it twice before drawing conclusions.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
import timeit
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import orjson
from measure import process_cpu_seconds
from processes import BENCH_DIR, Processes, guarded, read_line
from scenarios import TGI_REQUEST

from mooltiproxy import logs
from mooltiproxy.client import Origin, Pool

BODY = orjson.dumps(TGI_REQUEST)
ANSWER = b'{"generated_text":" Paris is the capital."}'
SERVERS = ("aiohttp.web", "aiohttp low-level", "mooltiproxy.inbound", "asyncio + llhttp")


async def with_aiohttp(port: int, requests: int, concurrency: int) -> None:
    connector = aiohttp.TCPConnector(limit=256)
    skip = ("User-Agent", "Accept-Encoding", "Content-Type")
    jar = aiohttp.DummyCookieJar()
    async with aiohttp.ClientSession(
        connector=connector, auto_decompress=False, skip_auto_headers=skip, cookie_jar=jar
    ) as session:
        url = f"http://127.0.0.1:{port}/generate"

        async def worker(count: int) -> None:
            for _ in range(count):
                async with session.post(url, data=BODY, headers={"Content-Type": "application/json"}) as r:
                    assert r.status == 200
                    await r.read()

        await asyncio.gather(*(worker(requests // concurrency) for _ in range(concurrency)))


async def with_pool(port: int, requests: int, concurrency: int) -> None:
    pool = Pool(limit=256, connect_timeout=3, read_timeout=30)
    origin = Origin("http", "127.0.0.1", port)
    headers = (("Content-Type", "application/json"),)

    async def worker(count: int) -> None:
        for _ in range(count):
            r = await pool.request(origin, "POST", "/generate", headers, BODY)
            assert r.status == 200
            await r.read()
            r.release()

    try:
        await asyncio.gather(*(worker(requests // concurrency) for _ in range(concurrency)))
    finally:
        await pool.close()


async def clients(port: int, requests: int) -> dict[str, float]:
    """CPU µs per request of each client (the better of two interleaved rounds)."""
    found: dict[str, float] = {}
    runs: list[tuple[str, Callable[[int, int, int], Awaitable[None]]]] = [
        ("aiohttp ClientSession", with_aiohttp),
        ("mooltiproxy.client.Pool", with_pool),
    ]
    for _round in range(2):
        for name, run in runs:
            await run(port, 500, 32)  # warm-up: connections open, code paths hot
            before = time.process_time()
            await run(port, requests, 32)
            cost = 1e6 * (time.process_time() - before) / requests
            found[name] = min(cost, found.get(name, cost))
    return found


def serve(kind: str, port: int) -> None:
    """Serve ANSWER on ``port`` with one of the server options, forever (run in a subprocess)."""
    import httptools
    import uvloop
    from aiohttp import web

    from mooltiproxy.inbound import Listener, Request, Response, json_response

    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(ANSWER)
    answer = head + ANSWER

    class Bare(asyncio.Protocol):
        def __init__(self) -> None:
            self.parser = httptools.HttpRequestParser(self)
            self.transport: asyncio.Transport | None = None

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport  # type: ignore[assignment]

        def data_received(self, data: bytes) -> None:
            self.parser.feed_data(data)

        def on_message_complete(self) -> None:
            assert self.transport is not None
            self.transport.write(answer)

    async def own(request: Request) -> Response:
        await request.read()
        return json_response(ANSWER)

    async def handler(request: web.BaseRequest) -> web.Response:
        await request.read()
        return web.Response(body=ANSWER, content_type="application/json")

    async def main() -> None:
        loop = asyncio.get_running_loop()
        if kind == "aiohttp.web":
            app = web.Application()
            app.router.add_route("*", "/{tail:.*}", handler)
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", port).start()
        elif kind == "aiohttp low-level":
            await loop.create_server(web.Server(handler, access_log=None), "127.0.0.1", port)
        elif kind == "mooltiproxy.inbound":
            hook = lambda _request, _response: None  # noqa: E731 - no headers of the gateway's to add
            listener = Listener(own, hook, limit=1024, body_limit=1 << 20, header_timeout=15)
            await listener.listen("127.0.0.1", port)
        else:
            await loop.create_server(Bare, "127.0.0.1", port)
        print("listening", flush=True)
        await asyncio.Event().wait()

    uvloop.run(main())


def servers(procs: Processes, cpus: tuple[set[int] | None, set[int] | None], seconds: float) -> dict[str, float]:
    """Server CPU µs per request of each option, under wrk (or the built-in generator) at 32 connections."""
    from nginx import free_port

    wrk = shutil.which("wrk")
    found: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "post.lua"
        script.write_text(f'wrk.method = "POST"\nwrk.body = [==[{BODY.decode()}]==]\n')
        body_file = Path(tmp) / "body.json"
        body_file.write_bytes(BODY)
        for kind in SERVERS:
            port = free_port()
            proc = procs.start([sys.executable, __file__, "--serve", kind, str(port)], cpus[0], stdout=subprocess.PIPE)
            read_line(proc, 20, kind)
            url = f"http://127.0.0.1:{port}/generate"
            if wrk:
                argv = [wrk, "-t1", "-c32", f"-d{max(1, round(seconds))}s", "-s", str(script), url]
            else:
                argv = [sys.executable, str(BENCH_DIR / "loadgen.py"), "--url", url, "--body-file", str(body_file)]
                argv += ["--connections", "32", "--duration", f"{seconds:g}", "--expect", "generated_text"]
            procs.run(argv, cpus[1], timeout=seconds + 30)  # warm-up run
            before = process_cpu_seconds(proc.pid)
            code, out, _err = procs.run(argv, cpus[1], timeout=seconds + 30)
            cpu = process_cpu_seconds(proc.pid) - before
            text = out.decode(errors="replace")
            if wrk:
                requests = int(text.split(" requests in ", 1)[0].split()[-1])
            else:
                requests = int(orjson.loads(out)["requests"])
            found[kind] = 1e6 * cpu / max(requests, 1)
            procs.stop(proc)
    return found


def access_line() -> dict[str, float]:
    """µs per access line, text and JSON, through the gateway's logging set-up, to a file."""
    fields = {
        "request_id": "0" * 32, "client": "127.0.0.1", "method": "POST", "path": "/v1/chat/completions",
        "target": "up", "route": "/chat/completions", "model": "gpt-4o-mini", "status": 200,
        "upstream_ms": 1.2, "total_ms": 2.3, "tokens_in": 12, "tokens_out": 6,
    }  # fmt: skip
    found: dict[str, float] = {}
    saved = sys.stderr
    with tempfile.TemporaryFile("w") as sink:
        sys.stderr = sink
        try:
            for fmt in ("text", "json"):
                logs.configure_logging(False, fmt)
                root = logging.getLogger()
                root.handlers[:] = root.handlers[-1:]
                line = functools.partial(logging.getLogger(logs.ACCESS_LOGGER).info, logs.ACCESS_TEXT, fields)
                n = 20000
                found[fmt] = 1e6 * timeit.timeit(line, number=n) / n
        finally:
            sys.stderr = saved
    return found


def run(args: argparse.Namespace) -> int:
    allowed = sorted(os.sched_getaffinity(0))
    cpus: tuple[set[int] | None, set[int] | None] = ({allowed[0]}, {allowed[1]}) if len(allowed) >= 2 else (None, None)
    procs = Processes()
    try:
        upstream = procs.start(
            [sys.executable, str(BENCH_DIR / "upstream.py"), "--host", "127.0.0.1", "--port", "0"],
            cpus[1],
            stdout=subprocess.PIPE,
        )
        port = int(read_line(upstream, 15, "the upstream").rsplit(":", 1)[1])
        if cpus[0]:
            os.sched_setaffinity(0, cpus[0])
        import uvloop

        client_costs = uvloop.run(clients(port, args.requests))
        if cpus[0]:
            os.sched_setaffinity(0, set(allowed))
        server_costs = servers(procs, cpus, args.seconds)
        line_costs = access_line()
    finally:
        procs.close()
    print(f"{time.strftime('%Y-%m-%d')}: CPU per request, side by side in this run\n")
    print("| part | option | CPU µs/request |\n|---|---|---:|")
    for name, cost in client_costs.items():
        print(f"| upstream client | {name} | {cost:.1f} |")
    for name, cost in server_costs.items():
        print(f"| server (fixed JSON answer) | {name} | {cost:.1f} |")
    for name, cost in line_costs.items():
        print(f"| access line | logging, {name} | {cost:.1f} |")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--serve"]:
        serve(argv[1], int(argv[2]))
        return 0
    parser = argparse.ArgumentParser(description="Measure the request path's options side by side, in one run.")
    parser.add_argument("--requests", type=int, default=20000, help="requests per client run (default 20000)")
    parser.add_argument("--seconds", type=float, default=4.0, help="seconds per server run (default 4)")
    return guarded("stack", lambda: run(parser.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
