"""Choosing a replica: the balancing policies and each replica's health, as plain state (no I/O).

A replica is *available* when its last health check passed (or none is configured) and it is not cooling down.
It cools down for ``cooldown.seconds`` after a refused connection, or after ``cooldown.failures`` failed answers
(429, 502, 503, 504) in a row; a ``Retry-After`` keeps it out at least that long. Once the time is up it is simply
tried again: a success makes it healthy, a failure sends it back.

Policies, over the available replicas:

* ``round_robin``: smooth weighted round robin (a replica of weight 2 gets two requests out of three, spread out);
* ``least_inflight``: the fewest requests in flight relative to the weight, ties taken in turn.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Sequence

from yarl import URL

from .config.model import Cooldown, ReplicaSpec

__all__ = ["Balancer", "Replica"]


class Replica:
    __slots__ = ("current", "down_until", "failures", "healthy", "inflight", "origin", "url", "weight")

    def __init__(self, spec: ReplicaSpec) -> None:
        self.url = spec.url
        #: scheme://host:port, where health checks go
        self.origin = str(URL(spec.url).origin())
        self.weight = spec.weight
        self.inflight = 0
        #: failed answers in a row
        self.failures = 0
        self.down_until = 0.0
        #: the last active health check passed (True when there are none)
        self.healthy = True
        self.current = 0  # smooth weighted round robin

    def available(self, now: float) -> bool:
        return self.healthy and now >= self.down_until

    def __repr__(self) -> str:
        return f"Replica({self.url!r})"


class Balancer:
    def __init__(
        self,
        specs: Sequence[ReplicaSpec],
        policy: str = "round_robin",
        cooldown: Cooldown | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.replicas = [Replica(s) for s in specs]
        self.policy = policy
        self.cooldown = cooldown or Cooldown()
        self.clock = clock
        self._turn = 0

    def pick(self, exclude: Collection[Replica] = ()) -> Replica | None:
        """The next available replica not in ``exclude``, by the policy; None when there is none."""
        now = self.clock()
        candidates = [r for r in self.replicas if r not in exclude and r.available(now)]
        if not candidates:
            return None
        if len(candidates) == 1:
            return candidates[0]
        if self.policy == "least_inflight":
            self._turn += 1
            start = self._turn % len(candidates)
            rotated = candidates[start:] + candidates[:start]
            return min(rotated, key=lambda r: r.inflight / r.weight)
        total = 0
        best = candidates[0]
        for replica in candidates:
            replica.current += replica.weight
            total += replica.weight
            if replica.current > best.current:
                best = replica
        best.current -= total
        return best

    def soonest(self, exclude: Collection[Replica] = ()) -> tuple[Replica | None, float]:
        """The unavailable replica that comes back first, and the seconds until then (0 when it is unhealthy)."""
        now = self.clock()
        waiting = [r for r in self.replicas if r not in exclude and not r.available(now)]
        if not waiting:
            return None, 0.0
        replica = min(waiting, key=lambda r: r.down_until)
        return replica, max(0.0, replica.down_until - now)

    def succeeded(self, replica: Replica) -> None:
        replica.failures = 0
        replica.down_until = 0.0

    def failed(self, replica: Replica, *, refused: bool = False, retry_after: float | None = None) -> None:
        """A failed attempt: a refused connection takes the replica out at once, failed answers after a few."""
        replica.failures += 1
        now = self.clock()
        if refused or replica.failures >= self.cooldown.failures:
            replica.down_until = max(replica.down_until, now + self.cooldown.seconds)
        if retry_after is not None and retry_after > 0:
            replica.down_until = max(replica.down_until, now + retry_after)

    def checked(self, replica: Replica, healthy: bool) -> None:
        """The result of an active health check."""
        replica.healthy = healthy
        if healthy:
            self.succeeded(replica)

    def available(self) -> int:
        now = self.clock()
        return sum(r.available(now) for r in self.replicas)
