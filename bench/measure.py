"""CPU accounting from ``/proc`` around each load run, and the hygiene that keeps foreign load out of the figures.

The gateway's CPU time is its utime + stime (all its threads) over the measured window. Foreign load is the busy
CPU time of the whole machine minus that of the benchmark's own processes. Before each run the meter waits a
little for a quiet machine; a run with more than ``FOREIGN_LIMIT_PCT`` of a core of foreign load is re-run once.
Waits and re-runs only use the time the planned runs leave within the budget.
"""

from __future__ import annotations

import os
import resource
import time
from dataclasses import dataclass, field
from typing import Any

from load import Load, Loader
from servers import Servers

FOREIGN_LIMIT_PCT = 20.0
#: seconds one load run takes beyond its duration (starting the load generator, CPU snapshots)
RUN_OVERHEAD_S = 0.7
CLK_TCK = os.sysconf("SC_CLK_TCK")


def process_cpu_seconds(pid: int) -> float:
    """utime + stime of a whole process (all its threads), from ``/proc/<pid>/stat``."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        stat = f.read()
    fields = stat[stat.rindex(b")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def process_rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def system_cpu() -> dict[str, tuple[float, float, float]]:
    """Busy, total and interrupt seconds, for all CPUs (``cpu``) and each one (``cpu0``…), from ``/proc/stat``.

    Interrupt time (irq + softirq) is mostly the loopback network stack working for the benchmark's processes; with
    tick-based accounting it is also charged to the stime of the process it interrupted, so it is only reported.
    """
    result: dict[str, tuple[float, float, float]] = {}
    with open("/proc/stat") as f:
        for line in f:
            if not line.startswith("cpu"):
                break
            name, *values = line.split()
            ticks = [int(v) for v in values[:8]]  # user nice system idle iowait irq softirq steal
            total = sum(ticks)
            busy = total - ticks[3] - ticks[4]
            result[name] = (busy / CLK_TCK, total / CLK_TCK, (ticks[5] + ticks[6]) / CLK_TCK)
    return result


def own_cpu() -> tuple[float, float]:
    """CPU seconds of this process and of its reaped children."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime, kids.ru_utime + kids.ru_stime


@dataclass
class Snapshot:
    wall: float
    gateway: float
    upstream: float
    system: dict[str, tuple[float, float, float]]
    me: float
    children: float

    @classmethod
    def take(cls, gateway_pid: int, upstream_pid: int) -> Snapshot:
        me, children = own_cpu()
        return cls(
            time.perf_counter(),
            process_cpu_seconds(gateway_pid),
            process_cpu_seconds(upstream_pid),
            system_cpu(),
            me,
            children,
        )


def window(before: Snapshot, after: Snapshot) -> dict[str, Any]:
    """CPU use between two snapshots, as % of one core (and the gateway's CPU seconds)."""
    wall = max(after.wall - before.wall, 1e-9)
    gateway = after.gateway - before.gateway
    upstream = after.upstream - before.upstream
    load = after.children - before.children  # the load generator, reaped inside the window
    me = after.me - before.me
    busy_all = after.system["cpu"][0] - before.system["cpu"][0]
    interrupts = after.system["cpu"][2] - before.system["cpu"][2]
    foreign = max(0.0, busy_all - gateway - upstream - load - me)
    per_cpu = {
        name: round(100 * (after.system[name][0] - before.system[name][0]) / wall, 1)
        for name in after.system
        if name != "cpu" and name in before.system
    }
    return {
        "wall_s": wall,
        "gateway_cpu_s": gateway,
        "gateway_cpu_pct": 100 * gateway / wall,
        "upstream_cpu_pct": 100 * upstream / wall,
        "load_cpu_pct": 100 * load / wall,
        "harness_cpu_pct": 100 * me / wall,
        "interrupts_pct": 100 * interrupts / wall,
        "foreign_pct": 100 * foreign / wall,
        "cpu_busy_pct": per_cpu,
    }


def quiet_load(seconds: float) -> float:
    """Busy time of the whole machine over ``seconds``, as % of one core (before anything is started)."""
    before = system_cpu()["cpu"][0]
    time.sleep(seconds)
    return 100 * (system_cpu()["cpu"][0] - before) / seconds


def settle(patience: int) -> float:
    """The machine's load before anything is started, as % of one core; when it is busy, wait up to ``patience``
    seconds for it to calm down."""
    idle = quiet_load(0.5)
    if idle > FOREIGN_LIMIT_PCT:
        print(f"note: the machine is busy ({idle:.0f} % of a core); waiting up to {patience} s", flush=True)
        for _ in range(patience * 2):
            idle = quiet_load(0.5)
            if idle <= FOREIGN_LIMIT_PCT:
                break
    return idle


@dataclass
class Meter:
    """Measures load runs against the servers within the whole run's time budget."""

    servers: Servers
    loader: Loader
    #: the whole run's time limit; re-runs and waits for a quiet machine only use what the planned runs leave
    budget_s: float
    #: seconds the runs not done yet will take
    planned_s: float = 0.0
    started: float = field(default_factory=time.monotonic)
    retries: int = 0

    def snapshot(self, proxy_pid: int | None = None) -> Snapshot:
        """CPU times now; ``proxy_pid``: the process in the gateway's place (the nginx hop), default the gateway."""
        gateway, upstream = self.servers.gateway_proc, self.servers.upstream_proc
        assert gateway is not None and upstream is not None
        return Snapshot.take(proxy_pid or gateway.pid, upstream.pid)

    def wait_quiet(self, max_wait: float) -> float:
        """Wait (at most ``max_wait`` s, and only while time allows) until foreign load is low; seconds waited."""
        started = time.monotonic()
        if not self.time_left(1.0):
            return 0.0
        while True:  # bounded: every turn takes time, and the wait stops at max_wait
            before = self.snapshot()
            time.sleep(0.2)
            foreign = window(before, self.snapshot())["foreign_pct"]
            waited = time.monotonic() - started
            if foreign <= FOREIGN_LIMIT_PCT or waited >= max_wait or not self.time_left(0.5):
                return waited
            time.sleep(0.3)

    def measure(self, load: Load, max_wait: float, proxy_pid: int | None = None) -> dict[str, Any]:
        """Apply a load while accounting CPU; re-run once when foreign load polluted it and time allows.

        ``proxy_pid``: the process whose CPU goes in the ``gateway_*`` fields (the nginx hop's), default the
        gateway's."""
        best: dict[str, Any] | None = None
        for attempt in (1, 2):
            waited = self.wait_quiet(max_wait)
            before = self.snapshot(proxy_pid)
            result = self.loader.apply(load)
            after = self.snapshot(proxy_pid)
            result.update(window(before, after))
            result["waited_for_quiet_s"] = round(waited, 2)
            result["connections"] = load.connections
            requests = result["requests"]
            result["rps"] = requests / result["seconds"] if result["seconds"] > 0 else 0.0
            result["gateway_cpu_us_per_req"] = 1e6 * result["gateway_cpu_s"] / requests if requests else None
            result["attempt"] = attempt
            if best is None or result["foreign_pct"] < best["foreign_pct"]:
                best = result
            if attempt == 2 or result["foreign_pct"] <= FOREIGN_LIMIT_PCT or not self.time_left(load.duration + 1):
                break
            self.retries += 1
        assert best is not None
        self.planned_s -= load.duration + RUN_OVERHEAD_S
        return best

    def time_left(self, needed: float) -> bool:
        """Whether ``needed`` more seconds still leave time for every planned run within the budget."""
        return time.monotonic() - self.started + needed + max(0.0, self.planned_s) < self.budget_s

    def hygiene(self, runs: list[dict[str, Any]]) -> dict[str, Any]:
        """How clean the kept runs were: re-runs needed, foreign load, runs kept although polluted."""
        return {
            "runs": len(runs),
            "re_runs_for_foreign_load": self.retries,
            "max_foreign_pct": round(max(r["foreign_pct"] for r in runs), 1),
            "median_foreign_pct": round(sorted(r["foreign_pct"] for r in runs)[len(runs) // 2], 1),
            "polluted_runs_kept": sum(1 for r in runs if r["foreign_pct"] > FOREIGN_LIMIT_PCT),
        }
