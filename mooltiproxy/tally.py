"""Per-request observations counted as plain numbers, then added to the Prometheus metrics in bulk.

An increment of a ``prometheus_client`` value takes a lock, and a histogram's observation walks its buckets: about
9 µs of every request for the gateway's few metrics. Here a request costs a few dictionary and list updates; the
sums go to the metrics at the next scrape, or within a second (``Metrics`` schedules it). With a folder shared by
workers, ``Metrics`` flushes after every request instead, so that a scrape by any worker sees every other's. The
labelled children are looked up once: ``labels()`` costs more than the increment it leads to.

Buckets are counted as ``prometheus_client`` counts them (an observation goes to the first bucket whose upper
bound is at least its value), and added to the histogram's own bucket values, the one part of its state that has
no public bulk method.
"""

from __future__ import annotations

from bisect import bisect_left
from typing import Any

__all__ = ["Tally"]


class _Histogram:
    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one: above every bound (+Inf)
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value

    def add_to(self, child: Any) -> None:
        """Add the counts to a labelled ``prometheus_client`` histogram, then start again from zero."""
        buckets = child._buckets
        for i, count in enumerate(self.counts):
            if count:
                buckets[i].inc(count)
                self.counts[i] = 0
        child._sum.inc(self.total)
        self.total = 0.0


class _Target:
    __slots__ = ("added", "children", "tokens_in", "tokens_out", "upstream")

    def __init__(self, upstream_bounds: tuple[float, ...], added_bounds: tuple[float, ...]) -> None:
        self.upstream = _Histogram(upstream_bounds)
        self.added = _Histogram(added_bounds)
        self.tokens_in = 0
        self.tokens_out = 0
        #: the target's labelled upstream and added histograms, tokens in and out counters (at its first flush)
        self.children: tuple[Any, Any, Any, Any] | None = None


class Tally:
    """What ``Metrics.observe`` records, kept until ``flush`` adds it to the metrics given here."""

    def __init__(
        self,
        requests: Any,
        upstream_seconds: Any,
        added_seconds: Any,
        tokens_in: Any,
        tokens_out: Any,
        upstream_bounds: tuple[float, ...],
        added_bounds: tuple[float, ...],
    ) -> None:
        self.metrics = (requests, upstream_seconds, added_seconds, tokens_in, tokens_out)
        self.bounds = (upstream_bounds, added_bounds)
        self.requests: dict[tuple[str, str, int], int] = {}
        self.targets: dict[str, _Target] = {}
        self._counters: dict[tuple[str, str, int], Any] = {}

    def add(
        self,
        target: str,
        route: str,
        status: int,
        upstream: float | None,
        added: float | None,
        tokens_in: int | None,
        tokens_out: int | None,
    ) -> None:
        key = (target, route, status)
        self.requests[key] = self.requests.get(key, 0) + 1
        if upstream is None and added is None and not tokens_in and not tokens_out:
            return
        per = self.targets.get(target)
        if per is None:
            per = self.targets[target] = _Target(*self.bounds)
        if upstream is not None:
            per.upstream.observe(upstream)
        if added is not None:
            per.added.observe(max(0.0, added))
        if tokens_in:
            per.tokens_in += tokens_in
        if tokens_out:
            per.tokens_out += tokens_out

    def flush(self) -> None:
        """Add everything counted since the last flush to the metrics."""
        if not self.requests:  # every observation counts a request: nothing since the last flush
            return
        requests, upstream_seconds, added_seconds, tokens_in, tokens_out = self.metrics
        for key, count in self.requests.items():
            counter = self._counters.get(key)
            if counter is None:
                target, route, status = key
                counter = self._counters[key] = requests.labels(target, route, str(status))
            counter.inc(count)
        self.requests.clear()
        for target, per in self.targets.items():  # each of the four exposed from its target's first timed request
            if per.children is None:
                per.children = tuple(m.labels(target) for m in (upstream_seconds, added_seconds, tokens_in, tokens_out))
            upstream, added, given, made = per.children
            per.upstream.add_to(upstream)
            per.added.add_to(added)
            given.inc(per.tokens_in)
            made.inc(per.tokens_out)
            per.tokens_in = per.tokens_out = 0
