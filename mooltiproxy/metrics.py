"""Prometheus metrics: what the gateway counts per request, and the text ``GET /-/metrics`` answers.

Every name starts with ``mooltiproxy_``. Requests are counted by target, route and status, where the route is the
target's mapped inbound path or a fixed word (``health``, ``metrics``, ``models``, ``preflight``, ``unrouted``),
never the raw path, so that no client can grow the number of series. Replica health is read from the balancers
when a scrape comes, not kept up to date on the request path.

Each ``Gateway`` has its own registry (several gateways may run in one process; the library's global registry is
never used). When ``PROMETHEUS_MULTIPROC_DIR`` is set, as it is for every worker of one ``serve``, the values are
kept in that folder's files and a scrape of any worker sums them all; gauges use the ``livesum`` mode, so a worker
that has gone no longer counts. Replica health is then the view of the worker that answers the scrape.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterable, Mapping
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from yarl import URL

from .inbound import Response
from .tally import Tally
from .upstream import Upstream

__all__ = ["CONTENT_TYPE", "MULTIPROC_ENV", "Metrics", "usage_counts"]

#: the folder shared by the worker processes (the library reads this variable itself, when it is imported)
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
CONTENT_TYPE = CONTENT_TYPE_LATEST

#: seconds: the target's time to answer, from tens of milliseconds (embeddings) to minutes (long generations)
_UPSTREAM_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
#: seconds: the gateway's own work, well under a millisecond when all is well
_ADDED_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1)
#: seconds at most between a request and its observations reaching the metrics (a scrape adds them at once)
FLUSH_SECONDS = 1.0


def usage_counts(answer: Any) -> tuple[int | None, int | None]:
    """Prompt and completion tokens of an answer's ``usage`` (OpenAI's, or Anthropic's input and output)."""
    usage = answer.get("usage") if isinstance(answer, dict) else None  # parsed JSON: a dict or nothing
    if not isinstance(usage, dict):
        return None, None
    prompt = usage.get("prompt_tokens", usage.get("input_tokens"))
    completion = usage.get("completion_tokens", usage.get("output_tokens"))
    # parsed JSON: an int is exactly an int (a bool is not one)
    return (prompt if type(prompt) is int else None, completion if type(completion) is int else None)


def _shown(url: str) -> str:
    """A replica's URL as a label: without credentials, should the URL carry any."""
    return str(URL(url).with_user(None)) if "@" in url else url


class _Replicas(Collector):
    """``mooltiproxy_replica_up``: 1 while a replica takes requests (healthy, not cooling down), else 0."""

    def __init__(self, upstreams: Mapping[str, Upstream]) -> None:
        self.upstreams = upstreams

    def collect(self) -> Iterable[Metric]:
        family = GaugeMetricFamily(
            "mooltiproxy_replica_up",
            "1 when the replica takes requests (its health check passes and it is not cooling down), else 0",
            labels=["target", "replica"],
        )
        for name, upstream in self.upstreams.items():
            balancer = upstream.balancer
            now = balancer.clock()
            for replica in balancer.replicas:
                family.add_metric([name, _shown(replica.url)], 1.0 if replica.available(now) else 0.0)
        yield family


class Level:
    """A gauge every request moves: an int in memory, set on the gauge at a flush (each scrape flushes first), or
    written through at once when workers share a folder, where another worker's scrape reads it."""

    __slots__ = ("gauge", "through", "value")

    def __init__(self, gauge: Gauge, *, through: bool) -> None:
        self.gauge = gauge
        self.through = through
        self.value = 0

    def inc(self) -> None:
        self.value += 1
        if self.through:
            self.gauge.inc()

    def dec(self) -> None:
        self.value -= 1
        if self.through:
            self.gauge.dec()

    def publish(self) -> None:
        if not self.through:
            self.gauge.set(self.value)


class Metrics:
    """The gateway's metrics, and the exposition of a scrape."""

    def __init__(self, upstreams: Mapping[str, Upstream]) -> None:
        # Read here as the library reads it (at its import, to choose where values live): both must agree.
        self.multiproc_dir = os.environ.get(MULTIPROC_ENV) or None
        # With the shared folder, the values live in its files: the metrics are not registered, the scrape reads
        # every worker's files instead (registering them too would export them twice).
        own = None if self.multiproc_dir else CollectorRegistry()
        self.requests = Counter(
            "mooltiproxy_requests",
            "Requests answered, by target, route and status",
            ["target", "route", "status"],
            registry=own,
        )
        self.upstream_seconds = Histogram(
            "mooltiproxy_upstream_seconds",
            "Seconds the target took to answer (to the first byte of a relayed or streamed answer)",
            ["target"],
            registry=own,
            buckets=_UPSTREAM_BUCKETS,
        )
        self.added_seconds = Histogram(
            "mooltiproxy_gateway_seconds",
            "Seconds the gateway added to a request (total minus the target's time; streams are left out)",
            ["target"],
            registry=own,
            buckets=_ADDED_BUCKETS,
        )
        self.in_flight = Level(
            Gauge("mooltiproxy_in_flight_requests", "Requests being served", registry=own, multiprocess_mode="livesum"),
            through=own is None,
        )
        self.in_flight_streams = Level(
            Gauge(
                "mooltiproxy_in_flight_streams",
                "Event-stream answers being sent",
                registry=own,
                multiprocess_mode="livesum",
            ),
            through=own is None,
        )
        self.tokens_in = Counter(
            "mooltiproxy_tokens_in", "Prompt tokens of the answers, by target", ["target"], registry=own
        )
        self.tokens_out = Counter(
            "mooltiproxy_tokens_out", "Completion tokens of the answers, by target", ["target"], registry=own
        )
        self.auth_failures = Counter(
            "mooltiproxy_auth_failures",
            "Requests refused with a 401, by reason (missing, invalid, revoked, expired)",
            ["reason"],
            registry=own,
        )
        self.bans = Counter("mooltiproxy_bans", "Addresses banned after too many failed attempts", registry=own)
        if own is None:
            self.registry = CollectorRegistry()
            MultiProcessCollector(self.registry, path=self.multiproc_dir)  # type: ignore[no-untyped-call]
        else:
            self.registry = own
        #: its ``upstreams`` are switched to the new gateway's when a reload carries these metrics over
        self.replicas = _Replicas(upstreams)
        self.registry.register(self.replicas)
        #: each request's observations, counted cheaply (see ``tally``); in memory they are added to the metrics in
        #: bulk, in a shared folder at once, so that every worker's scrape sees them
        self.tally = Tally(
            self.requests,
            self.upstream_seconds,
            self.added_seconds,
            self.tokens_in,
            self.tokens_out,
            _UPSTREAM_BUCKETS,
            _ADDED_BUCKETS,
        )
        self.shared = own is None
        self._flush_timer: asyncio.TimerHandle | None = None

    def observe(
        self,
        target: str,
        route: str,
        status: int,
        upstream: float | None,
        added: float | None,
        tokens_in: int | None,
        tokens_out: int | None,
    ) -> None:
        """One answered request. ``upstream``/``added``: seconds, None when not measured."""
        self.tally.add(target, route, status, upstream, added, tokens_in, tokens_out)
        if self.shared:
            self.tally.flush()
        elif self._flush_timer is None:
            self._flush_timer = asyncio.get_running_loop().call_later(FLUSH_SECONDS, self.flush)

    def flush(self) -> None:
        """Add the tallied observations to the metrics (at a scrape, and within ``FLUSH_SECONDS`` of one)."""
        self._flush_timer = None
        self.tally.flush()
        self.in_flight.publish()
        self.in_flight_streams.publish()

    def auth_failed(self, reason: str) -> None:
        self.auth_failures.labels(reason).inc()

    def banned(self) -> None:
        self.bans.inc()

    async def exposition(self) -> bytes:
        """The text of a scrape, built off the event loop (with several workers, it reads their files)."""
        self.flush()
        return await asyncio.to_thread(generate_latest, self.registry)

    async def answer(self) -> Response:
        return Response(body=await self.exposition(), content_type=CONTENT_TYPE)

    async def _answer(self, _request: web.Request) -> web.Response:  # the key-less listener's handler
        return web.Response(body=await self.exposition(), headers={"Content-Type": CONTENT_TYPE})

    async def listen(self, host: str, port: int, path: str) -> web.AppRunner:
        """Serve ``path`` without a key on a listener of its own; ``await runner.cleanup()`` stops it.

        Every worker of one ``serve`` listens on the same port (``SO_REUSEPORT``): any of them answers the sum."""
        app = web.Application()
        app.router.add_get(path, self._answer)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port, reuse_port=bool(self.multiproc_dir) or None).start()
        except BaseException:
            await runner.cleanup()
            raise
        return runner
