"""Soak: mixed traffic through the gateway for minutes, and its memory and file descriptors over time.

``python bench/soak.py [--duration 600] [--interval 10] [--connections 32] [--quick]`` starts the fake upstream and
the gateway as the benchmark does (every scenario's route; ``cerbere.max_tries`` raised so that wrong keys never
ban the load generator), checks its answers, then runs the mix of ``bench/mix.py`` (successes, client and upstream
errors, clients that leave mid-request and mid-stream) from ``bench/mixgen.py`` in a subprocess on the load CPU.

Every ``--interval`` seconds it samples the gateway: RSS (``VmRSS``), open file descriptors (and how many are
sockets), threads, CPU over the interval, and the requests done and unexpected outcomes per kind. The verdict:
after the warm-up (the first 20 % of the samples, at least one), RSS must not grow by ``RSS_BOUND_MB`` or
``RSS_BOUND_SHARE`` of its value, whichever is larger, and the descriptors by more than ``FD_BOUND``; the RSS slope
over the samples after the warm-up is printed too. Exit status: 0 when flat with no unexpected outcome, 1 when not
flat or anything went wrong, 2 when the soak could not run. Raw samples: ``bench/results/soak.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import selectors
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import orjson
import yaml
from checks import verify
from load import Loader
from machine import machine_info
from measure import own_cpu, process_cpu_seconds, process_rss_mb, settle, system_cpu
from mix import mix
from processes import BENCH_DIR, BenchError, guarded
from report import machine_line, write_json
from scenarios import SCENARIOS
from servers import Servers
from soakreport import print_report, sample_line

DEFAULT_OUTPUT = BENCH_DIR / "results" / "soak.json"
#: the share of the samples that is warm-up (at least one sample)
WARMUP_SHARE = 0.2
#: RSS may grow after the warm-up by less than the larger of these
RSS_BOUND_MB = 5.0
RSS_BOUND_SHARE = 0.05
#: file descriptors may end at most this many above their value right after the warm-up
FD_BOUND = 16
#: failed keys before a ban: far more than the soak's wrong keys, so the load generator is never banned
MAX_TRIES = 1_000_000_000
#: seconds to wait, after the traffic, for the descriptors to come back to their count before it
DRAIN_S = 45.0


class SoakServers(Servers):
    """The benchmark's servers, with a gateway config whose ``cerbere.max_tries`` no soak reaches."""

    def write_gateway_config(self, scenarios: Iterable[str]) -> Path:
        path = super().write_gateway_config(scenarios)
        config = yaml.safe_load(path.read_text())
        config["cerbere"] = {"max_tries": MAX_TRIES}
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        return path


class Lines:
    """The JSON lines a subprocess prints, each within a time limit."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        self.proc = proc
        self.buffer = b""
        self.selector = selectors.DefaultSelector()
        self.selector.register(proc.stdout, selectors.EVENT_READ)

    def next(self, timeout: float) -> dict[str, Any]:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buffer:  # each turn reads more, or ends with an error
            left = deadline - time.monotonic()
            if left <= 0:
                raise BenchError(f"the traffic generator printed nothing for {timeout:.0f} s")
            if self.selector.select(min(left, 0.5)):
                chunk = os.read(self.proc.stdout.fileno(), 65536)
                if not chunk:
                    raise BenchError(f"the traffic generator exited (status {self.proc.wait()})")
                self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        result: dict[str, Any] = orjson.loads(line)
        return result


def descriptors(pid: int) -> tuple[int, int]:
    """Open file descriptors of a process, and how many of them are sockets."""
    fds = os.listdir(f"/proc/{pid}/fd")
    sockets = 0
    for fd in fds:
        try:
            sockets += os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:")
        except OSError:  # closed meanwhile
            continue
    return len(fds), sockets


class Sampler:
    """The gateway's memory, descriptors, threads and CPU, and the machine's foreign load, between two samples."""

    def __init__(self, gateway: int, others: list[int]) -> None:
        self.gateway = gateway
        self.others = others
        self.last = self.cpu()

    def forget(self, pid: int) -> None:
        """Stop counting a process that has ended (its CPU time now counts in this one's children)."""
        self.others.remove(pid)
        self.last = self.cpu()

    def cpu(self) -> tuple[float, float, float, float]:
        others = sum(process_cpu_seconds(pid) for pid in self.others) + own_cpu()[0]
        return time.perf_counter(), process_cpu_seconds(self.gateway), system_cpu()["cpu"][0], others

    def take(
        self, t: float, line: dict[str, Any] | None = None, previous: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        now = self.cpu()
        wall = max(now[0] - self.last[0], 1e-9)
        gateway = now[1] - self.last[1]
        foreign = max(0.0, now[2] - self.last[2] - gateway - (now[3] - self.last[3]))
        self.last = now
        fds, sockets = descriptors(self.gateway)
        sample: dict[str, Any] = {
            "t": round(t, 2),
            "rss_mb": round(process_rss_mb(self.gateway), 2),
            "fds": fds,
            "sockets": sockets,
            "threads": len(os.listdir(f"/proc/{self.gateway}/task")),
            "gateway_cpu_pct": round(100 * gateway / wall, 1),
            "foreign_pct": round(100 * foreign / wall, 1),
        }
        if line is not None:
            requests, unexpected = sum(line["requests"].values()), sum(line["unexpected"].values())
            before = previous["requests"] if previous else 0
            since = t - (previous["t"] if previous else 0.0)
            sample.update(
                {
                    "requests": requests,
                    "rps": round((requests - before) / since, 1) if since > 0 else None,
                    "unexpected": unexpected,
                    "p50_ms": line.get("p50_ms"),
                    "p99_ms": line.get("p99_ms"),
                    "requests_by_kind": line["requests"],
                    "unexpected_by_kind": {k: v for k, v in line["unexpected"].items() if v},
                }
            )
        return sample


def slope_per_minute(samples: list[dict[str, Any]], key: str) -> float | None:
    """The least-squares slope of ``key`` against time, per minute."""
    if len(samples) < 2:
        return None
    xs = [s["t"] / 60 for s in samples]
    ys = [float(s[key]) for s in samples]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    var = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var if var else None


def judge(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Flat after the warm-up: RSS and descriptors at the end against their values right after it."""
    warm = max(1, math.ceil(WARMUP_SHARE * len(samples) - 1e-9))
    ref, end = samples[warm - 1], samples[-1]
    after = samples[warm - 1 :]
    rss_bound = max(RSS_BOUND_MB, RSS_BOUND_SHARE * ref["rss_mb"])
    rss_growth, fd_growth = end["rss_mb"] - ref["rss_mb"], end["fds"] - ref["fds"]
    requests = end["requests"] - ref["requests"]
    return {
        "warmup_samples": warm,
        "warmup_end_s": ref["t"],
        "rss_mb": {
            "warmup_end": ref["rss_mb"],
            "end": end["rss_mb"],
            "max_after_warmup": max(s["rss_mb"] for s in after),
        },
        "rss_growth_mb": round(rss_growth, 2),
        "rss_bound_mb": round(rss_bound, 2),
        "rss_slope_mb_per_min": slope_per_minute(after, "rss_mb"),
        "fds": {"warmup_end": ref["fds"], "end": end["fds"], "max_after_warmup": max(s["fds"] for s in after)},
        "fd_growth": fd_growth,
        "fd_bound": FD_BOUND,
        "fd_slope_per_min": slope_per_minute(after, "fds"),
        "requests_after_warmup": requests,
        #: the smallest leak per request the RSS bound catches over this run
        "detectable_bytes_per_request": round(rss_bound * 2**20 / requests) if requests else None,
        "rss_flat": rss_growth < rss_bound,
        "fds_flat": fd_growth <= FD_BOUND,
    }


def in_flight(servers: Servers) -> dict[str, float]:
    """The gateway's in-flight gauges, from ``GET /-/metrics`` (which counts itself as one request in flight)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never through a proxy
    request = urllib.request.Request(servers.gateway_url + "/-/metrics", headers=servers.headers(True))
    with opener.open(request, timeout=10) as resp:
        text = resp.read().decode()
    gauges = {"mooltiproxy_in_flight_requests": "requests", "mooltiproxy_in_flight_streams": "streams"}
    found: dict[str, float] = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name in gauges:
            found[gauges[name]] = float(value)
    return found


def logged_errors(path: Path) -> tuple[int, list[str]]:
    """ERROR records in the gateway's log, and the first few of them, each with its exception's last line."""
    count, first = 0, []
    with open(path, errors="replace") as f:
        lines = f.read().splitlines()
    for i, line in enumerate(lines):
        if " ERROR " not in line:
            continue
        count += 1
        if len(first) < 5:
            follow = lines[i + 1 : i + 60]
            end = next((j for j, x in enumerate(follow) if x[:4].isdigit()), len(follow))  # the next record
            last = follow[end - 1].strip() if end else ""
            first.append(f"{line.strip()[:300]} | {last[:300]}")
    return count, first


def drain(sampler: Sampler, before: int) -> dict[str, Any]:
    """After the traffic: wait until the descriptors are back to ``before`` (the idle pools time out)."""
    started = time.monotonic()
    while True:  # bounded by DRAIN_S
        waited = time.monotonic() - started
        sample = sampler.take(waited)
        if sample["fds"] <= before or waited >= DRAIN_S:
            sample["drained"] = sample["fds"] <= before
            return sample
        time.sleep(1.0)


def run(args: argparse.Namespace) -> int:
    servers = SoakServers()
    loader = Loader(servers)
    names = [s.name for s in SCENARIOS]
    pinning = servers.plan_cpus(args.no_pin)
    results: dict[str, Any] = {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    output = Path(args.output)
    try:
        idle = settle(2 if args.quick else 10)
        machine = machine_info(servers.procs, servers.gateway_cpus, None)
        machine["load_before_run_pct"] = round(idle, 1)
        print(machine_line(machine), flush=True)
        print(f"pinning: {pinning}", flush=True)
        servers.start_upstream()
        servers.start_gateway(names)
        assert servers.gateway_proc is not None and servers.upstream_proc is not None
        gateway = servers.gateway_proc.pid
        started_fds = descriptors(gateway)[0]
        checks = asyncio.run(verify(servers, names))
        failed = [r for r in checks.results if not r["ok"]]
        for r in failed:
            print(f"CHECK FAILED [{r['scenario']}] {r['check']}: {r['detail']}", flush=True)
        print(f"correctness: {len(checks.results) - len(failed)}/{len(checks.results)} checks passed", flush=True)
        kinds = mix(loader, "wrong-" + servers.key)
        plan = servers.tmp / "kinds.json"
        plan.write_bytes(orjson.dumps({"kinds": [asdict(k) for k in kinds]}))
        results.update(
            {
                "machine": machine,
                "settings": {
                    "duration_s": args.duration,
                    "interval_s": args.interval,
                    "connections": args.connections,
                    "pinning": pinning,
                    "cerbere_max_tries": MAX_TRIES,
                    "quick": args.quick,
                },
                "checks": checks.results,
                "kinds": [{k: v for k, v in asdict(kind).items() if k not in ("headers", "body")} for kind in kinds],
            }
        )
        print(
            f"soak: {args.duration:g} s of mixed traffic ({len(kinds)} kinds, {sum(k.weight for k in kinds)} per turn)"
            f" at c={args.connections} to {servers.gateway_url}, a sample every {args.interval:g} s",
            flush=True,
        )
        proc = start_generator(servers, plan, args)
        sampler = Sampler(gateway, [servers.upstream_proc.pid, proc.pid])
        results["start"] = start = sampler.take(0.0)
        start["fds_at_start"] = started_fds
        print(sample_line(start), flush=True)
        lines, samples, previous = Lines(proc), [], None
        while True:  # one line per interval, then the final one
            line = lines.next(args.interval + 60)
            if line.get("final"):
                break
            servers.check_gateway()
            previous = sampler.take(line["t"], line, previous)
            samples.append(previous)
            print(sample_line(previous), flush=True)
        results["final"] = line
        results["samples"] = samples
        servers.procs.stop(proc, grace=10)
        sampler.forget(proc.pid)
        results["after"] = drain(sampler, start["fds"])
        results["in_flight_after"] = in_flight(servers)
        count, first = logged_errors(servers.gateway_log)
        results["log_errors"] = {"count": count, "first": first}
    finally:
        servers.close()
    verdict = results["verdict"] = judge(results["samples"])
    flight = results["in_flight_after"]
    stuck = int(flight.get("requests", 1) - 1 != 0) + int(flight.get("streams", 0) != 0)
    results["errors"] = sum(results["final"]["unexpected"].values()) + len(failed) + count + stuck
    verdict["flat"] = verdict["rss_flat"] and verdict["fds_flat"]
    write_json(results, output)
    print_report(results, output)
    return 0 if verdict["flat"] and results["errors"] == 0 else 1


def start_generator(servers: Servers, plan: Path, args: argparse.Namespace) -> subprocess.Popen[bytes]:
    argv = [sys.executable, str(BENCH_DIR / "mixgen.py"), "--kinds", str(plan), "--connections", str(args.connections)]
    argv += ["--duration", f"{args.duration:g}", "--interval", f"{args.interval:g}"]
    log = servers.procs.log(servers.tmp / "mixgen.log")
    return servers.procs.start(argv, servers.load_cpus, stdout=subprocess.PIPE, stderr=log)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Mixed traffic through the gateway; its RSS and fds over time.")
    parser.add_argument("--duration", type=float, help="seconds of traffic (default 600; 60 with --quick)")
    parser.add_argument("--interval", type=float, help="seconds between samples (default 10; 5 with --quick)")
    parser.add_argument("--connections", type=int, default=32, help="concurrent connections (closed loop)")
    parser.add_argument("--quick", action="store_true", help="60 s, a sample every 5 s")
    parser.add_argument("--no-pin", action="store_true", help="do not pin processes to CPUs")
    parser.add_argument("--output", default=str(DEFAULT_OUTPUT), help="where to write the raw samples (JSON)")
    args = parser.parse_args(argv)
    if args.duration is None:
        args.duration = 60.0 if args.quick else 600.0
    if args.interval is None:
        args.interval = 5.0 if args.quick else 10.0
    if args.interval <= 0 or args.duration < 5 * args.interval or args.duration > 86400:
        parser.error("--interval must be > 0 and --duration at least 5 intervals (and at most a day)")
    if not 1 <= args.connections <= 10_000:
        parser.error("--connections must be in [1, 10000]")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not sys.platform.startswith("linux"):
        print("bench/soak.py reads /proc: it runs on Linux only", file=sys.stderr)
        return 2
    return guarded("soak", lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
