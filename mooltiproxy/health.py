"""Active health checks: every ``health.interval`` seconds, ``GET`` each replica's ``health.path``.

A check that fails (no answer within ``health.timeout``, or a status that is not 2xx) takes the replica out until
one passes again; a passing check also ends a cooldown early. Checks run in the background, off the request path.
"""

from __future__ import annotations

import asyncio
import logging

from .balancer import Replica
from .config.model import HealthCheck
from .upstream import Upstream

__all__ = ["probe", "watch"]

log = logging.getLogger("mooltiproxy")


async def probe(upstream: Upstream, replica: Replica, check: HealthCheck) -> bool:
    """One check of one replica; its result is recorded in the balancer and returned."""
    status = await upstream.probe(replica, check.path, check.timeout)
    ok = status is not None and 200 <= status < 300
    if ok != replica.healthy:
        state = "passes again" if ok else "fails"
        log.warning("target '%s': health check of %s %s", upstream.target.name, replica.url, state)
    upstream.balancer.checked(replica, ok)
    return ok


async def watch(upstream: Upstream, check: HealthCheck) -> None:
    """Check every replica of ``upstream`` forever (cancel the task to stop)."""
    while True:
        await asyncio.gather(*(probe(upstream, r, check) for r in upstream.balancer.replicas))
        await asyncio.sleep(check.interval)
