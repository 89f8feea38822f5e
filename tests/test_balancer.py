"""The balancing policies and replica cooldown, as plain state with a clock the test moves."""

from __future__ import annotations

from collections import Counter

from mooltiproxy.balancer import Balancer
from mooltiproxy.config.model import Cooldown, ReplicaSpec


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def balancer(*weights: int, policy: str = "round_robin", clock: Clock | None = None) -> Balancer:
    specs = [ReplicaSpec(f"http://127.0.0.1:{9000 + i}/v1", w) for i, w in enumerate(weights)]
    return Balancer(specs, policy, Cooldown(failures=3, seconds=10), clock or Clock())


def picks(b: Balancer, n: int) -> list[int]:
    out = []
    for _ in range(n):
        replica = b.pick()
        assert replica is not None
        out.append(b.replicas.index(replica))
    return out


def test_round_robin_takes_turns() -> None:
    assert picks(balancer(1, 1, 1), 6) == [0, 1, 2, 0, 1, 2]


def test_weights_are_spread_out_not_bunched() -> None:
    sequence = picks(balancer(3, 1), 8)
    assert Counter(sequence) == {0: 6, 1: 2}
    assert sequence[:4] in ([0, 0, 1, 0], [0, 1, 0, 0])  # smooth: the light replica is not left for last


def test_least_inflight_prefers_the_idle_replica_weighted() -> None:
    b = balancer(1, 1, policy="least_inflight")
    b.replicas[0].inflight = 2
    assert picks(b, 3) == [1, 1, 1]
    b.replicas[1].inflight = 2
    assert sorted(picks(b, 2)) == [0, 1]  # a tie is taken in turn
    weighted = balancer(4, 1, policy="least_inflight")
    weighted.replicas[0].inflight = 3  # 3/4 in flight per weight unit, against 1/1
    weighted.replicas[1].inflight = 1
    assert picks(weighted, 1) == [0]


def test_refused_connection_cools_down_at_once_then_comes_back() -> None:
    clock = Clock()
    b = balancer(1, 1, clock=clock)
    dead = b.replicas[0]
    b.failed(dead, refused=True)
    assert picks(b, 4) == [1, 1, 1, 1]
    assert b.soonest() == (dead, 10.0)
    clock.now += 10
    assert 0 in picks(b, 2)  # tried again once the cooldown is over


def test_failed_answers_cool_down_after_the_threshold_and_a_success_resets() -> None:
    clock = Clock()
    b = balancer(1, clock=clock)
    replica = b.replicas[0]
    b.failed(replica)
    b.failed(replica)
    assert b.pick() is replica
    b.succeeded(replica)
    b.failed(replica)
    b.failed(replica)
    assert b.pick() is replica  # the success reset the count
    b.failed(replica)
    assert b.pick() is None


def test_retry_after_keeps_a_replica_out_that_long() -> None:
    clock = Clock()
    b = balancer(1, clock=clock)
    b.failed(b.replicas[0], retry_after=2.5)
    assert b.pick() is None
    assert b.soonest() == (b.replicas[0], 2.5)
    clock.now += 2.5
    assert b.pick() is b.replicas[0]


def test_health_checks_take_a_replica_out_and_bring_it_back() -> None:
    b = balancer(1, 1)
    b.checked(b.replicas[1], False)
    assert picks(b, 3) == [0, 0, 0]
    b.failed(b.replicas[1], refused=True)
    b.checked(b.replicas[1], True)  # a passing check ends the cooldown too
    assert sorted(picks(b, 2)) == [0, 1]
