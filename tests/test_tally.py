"""The tallied metrics (``mooltiproxy.tally``): added in bulk, the same exposition as added after every request
(as the workers of a shared folder add them)."""

from __future__ import annotations

import asyncio

from prometheus_client.exposition import generate_latest

from mooltiproxy.metrics import Metrics

#: (target, route, status, upstream s, added s, tokens in, tokens out), bucket edges and zero included
SEEN = [
    ("tgi", "/v1/chat/completions", 200, 0.0012, 0.0003, 12, 5),
    ("tgi", "/v1/chat/completions", 200, 0.005, 0.0001, 7, 0),  # exactly on a bucket's upper bound
    ("tgi", "/v1/chat/completions", 502, None, None, None, None),
    ("tgi", "/generate", 200, 400.0, -0.001, None, None),  # above every bound; a negative added time counts as 0
    ("openai", "/v1/chat/completions", 200, 0.3, 0.0, 0, 9),
    ("openai", "unrouted", 401, None, None, None, None),
]


def exposition(metrics: Metrics) -> list[str]:
    """The scrape's lines, sums rounded (added at once, a float sum comes out a hair apart)."""
    lines = []
    for line in generate_latest(metrics.registry).decode().splitlines():
        if "_created" in line:  # creation times differ
            continue
        if "_sum{" in line:
            name, value = line.rsplit(" ", 1)
            line = f"{name} {float(value):.9f}"
        lines.append(line)
    return sorted(lines)


def test_tallied_observations_expose_as_observations_one_at_a_time() -> None:
    async def both() -> tuple[list[str], list[str]]:
        tallied, direct = Metrics({}), Metrics({})
        for seen in SEEN * 3:
            tallied.observe(*seen)
            direct.observe(*seen)
            direct.flush()  # after every request
        assert exposition(tallied) != exposition(direct)  # nothing added yet
        tallied.flush()
        first = exposition(tallied)
        tallied.flush()  # a second flush adds nothing
        assert exposition(tallied) == first
        return first, exposition(direct)

    tallied, direct = asyncio.run(both())
    assert tallied == direct
    assert any('mooltiproxy_upstream_seconds_bucket{le="+Inf",target="tgi"} 9.0' in line for line in tallied)


def test_a_scrape_sees_what_was_tallied_before_it() -> None:
    async def scrape() -> bytes:
        metrics = Metrics({})
        metrics.observe("tgi", "/generate", 200, 0.01, 0.001, 3, 4)
        return await metrics.exposition()

    text = asyncio.run(scrape()).decode()
    assert 'mooltiproxy_requests_total{route="/generate",status="200",target="tgi"} 1.0' in text
    assert 'mooltiproxy_tokens_out_total{target="tgi"} 4.0' in text
