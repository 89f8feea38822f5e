"""Throughput of ``serve --workers 2`` against ``serve --workers 1``, both measured in the same run.

``python bench/workers.py [--duration 5] [--connections 32] [--scenarios passthrough,chat]`` starts the fake
upstream (``bench/upstream.py``), then, for each worker count in turn, the gateway with ``--workers N``: it checks
its answers, then applies each scenario's throughput load (wrk when it is on PATH, else the built-in generator).
It prints req/s with one worker and with two, their ratio, and the CPU of all the gateway's processes (the
supervisor and its workers), of the upstream and of the load generator.

Nothing is pinned to a CPU: the workers must be free to use every core. With 2 cores, the upstream and the load
generator share those cores with the workers, so the ratio is bounded well below 2 by them, not by the gateway.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from checks import verify
from load import Load, Loader
from machine import machine_info
from measure import FOREIGN_LIMIT_PCT, own_cpu, process_cpu_seconds, settle, system_cpu
from processes import BENCH_DIR, BenchError, guarded
from report import fmt, machine_line, write_json
from scenarios import SCENARIOS, add_load_options, check_load_options
from servers import Servers

DEFAULT_OUTPUT = BENCH_DIR / "results" / "workers.json"
DEFAULT_SCENARIOS = ["passthrough", "chat"]
WORKER_COUNTS = (1, 2)


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (the supervisor and its workers), from ``/proc/<pid>/task/*/children``."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        try:
            tasks = os.listdir(f"/proc/{current}/task")
        except OSError:
            continue
        for task in tasks:
            try:
                with open(f"/proc/{current}/task/{task}/children") as f:
                    todo.extend(int(child) for child in f.read().split())
            except OSError:
                continue
    return found


def tree_cpu_seconds(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            total += process_cpu_seconds(pid)
        except OSError:  # a worker that exited: the run reports the gateway's status afterwards
            continue
    return total


def snapshot(gateway_pids: list[int], upstream_pid: int) -> dict[str, float]:
    busy, total, _ = system_cpu()["cpu"]
    return {
        "wall": time.perf_counter(),
        "gateway": tree_cpu_seconds(gateway_pids),
        "upstream": process_cpu_seconds(upstream_pid),
        "me": own_cpu()[0],
        "children": own_cpu()[1],  # the load generator, reaped inside the window
        "busy": busy,
        "total": total,
    }


def measure(loader: Loader, load: Load, gateway_pids: list[int], upstream_pid: int) -> dict[str, Any]:
    """Apply one load; re-run it once when foreign load polluted it, and keep the cleaner run."""
    first = measure_once(loader, load, gateway_pids, upstream_pid)
    if first["foreign_pct"] <= FOREIGN_LIMIT_PCT:
        return first
    second = measure_once(loader, load, gateway_pids, upstream_pid)
    second["re_run"] = True
    return min(first, second, key=lambda r: r["foreign_pct"])


def measure_once(loader: Loader, load: Load, gateway_pids: list[int], upstream_pid: int) -> dict[str, Any]:
    """Apply one load; requests per second and CPU use (as % of one core) over the run."""
    before = snapshot(gateway_pids, upstream_pid)
    result = loader.apply(load)
    after = snapshot(gateway_pids, upstream_pid)
    wall = max(after["wall"] - before["wall"], 1e-9)
    requests = result["requests"]
    gateway_s = after["gateway"] - before["gateway"]
    ours = sum(after[k] - before[k] for k in ("gateway", "upstream", "children", "me"))
    result.update(
        {
            "rps": requests / result["seconds"] if result["seconds"] > 0 else 0.0,
            "gateway_processes": len(gateway_pids),
            "gateway_cpu_pct": 100 * gateway_s / wall,
            "gateway_cpu_us_per_req": 1e6 * gateway_s / requests if requests else None,
            "upstream_cpu_pct": 100 * (after["upstream"] - before["upstream"]) / wall,
            "load_cpu_pct": 100 * (after["children"] - before["children"]) / wall,
            # share of all the machine's cores that was busy (anything running on it)
            "machine_busy_pct": 100 * (after["busy"] - before["busy"]) / max(after["total"] - before["total"], 1e-9),
            # busy CPU time of anything else on the machine, as % of one core
            "foreign_pct": max(0.0, 100 * (after["busy"] - before["busy"] - ours) / wall),
        }
    )
    return result


def run_gateway(
    servers: Servers, loader: Loader, args: argparse.Namespace, workers: int, tool: str
) -> tuple[dict[str, dict[str, Any]], int]:
    """Start the gateway with ``workers`` processes, check it, measure every scenario; the runs and failed checks."""
    servers.start_gateway(args.scenarios, workers=workers)
    try:
        assert servers.gateway_proc is not None and servers.upstream_proc is not None
        time.sleep(0.3)  # let every worker settle in before counting its processes
        pids = process_tree(servers.gateway_proc.pid)
        checks = asyncio.run(verify(servers, args.scenarios))
        failed = [r for r in checks.results if not r["ok"]]
        for r in failed:
            print(f"CHECK FAILED [{r['scenario']}] {r['check']}: {r['detail']}", flush=True)
        print(
            f"--workers {workers}: {servers.gateway_url}, {len(pids)} gateway process(es), "
            f"{len(checks.results) - len(failed)}/{len(checks.results)} checks passed",
            flush=True,
        )
        runs: dict[str, dict[str, Any]] = {}
        for scenario in SCENARIOS:
            if scenario.name not in args.scenarios:
                continue
            loader.apply(loader.load_for(scenario, True, args.connections, args.warmup, tool))
            load = loader.load_for(scenario, True, args.connections, args.duration, tool)
            r = measure(loader, load, pids, servers.upstream_proc.pid)
            servers.check_gateway()
            runs[scenario.name] = r
            print(
                f"  {scenario.name:<12} {fmt(r['rps']):>7} req/s, errors {r['errors']}, "
                f"gateway CPU {r['gateway_cpu_pct']:.0f} % of a core ({fmt(r['gateway_cpu_us_per_req'])} µs/req), "
                f"upstream {r['upstream_cpu_pct']:.0f} %, load generator {r['load_cpu_pct']:.0f} %, "
                f"machine {r['machine_busy_pct']:.0f} % busy, foreign load {r['foreign_pct']:.0f} %",
                flush=True,
            )
        return runs, len(failed)
    finally:
        servers.stop_gateway()


def print_table(results: dict[str, Any]) -> None:
    by_workers = results["workers"]
    one, two = by_workers["1"]["runs"], by_workers["2"]["runs"]
    print()
    print(
        "| scenario | req/s, 1 worker | req/s, 2 workers | 2 ÷ 1 | gateway CPU, 1 worker | gateway CPU, 2 workers "
        "| µs/req, 1 → 2 | load generator CPU, 1 → 2 | foreign load, 1 → 2 | errors |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, summary in results["summary"].items():
        a, b = one[name], two[name]
        print(
            f"| {name} | {fmt(a['rps'])} | {fmt(b['rps'])} | {fmt(summary['ratio'], 2)} "
            f"| {a['gateway_cpu_pct']:.0f} % | {b['gateway_cpu_pct']:.0f} % "
            f"| {fmt(a['gateway_cpu_us_per_req'])} → {fmt(b['gateway_cpu_us_per_req'])} "
            f"| {a['load_cpu_pct']:.0f} % → {b['load_cpu_pct']:.0f} % "
            f"| {a['foreign_pct']:.0f} % → {b['foreign_pct']:.0f} % | {a['errors'] + b['errors']} |"
        )
    nproc = results["machine"]["nproc"]
    runs = [r for w in by_workers.values() for r in w["runs"].values()]
    polluted = sum(r["foreign_pct"] > FOREIGN_LIMIT_PCT for r in runs)
    print()
    print(
        "CPU figures are % of one core over the measured window; the gateway's is the sum of all its processes "
        "(with 2 workers: the supervisor and both workers)."
    )
    if nproc <= 2:
        bound = (
            f"On {nproc} core(s) the ratio is bounded by the load generator and the upstream sharing the cores with "
            "the workers: expect well under 2."
        )
    else:
        bound = "The load generator and the upstream still share the cores: the ratio is a lower bound."
    print(f"Nothing is pinned. {bound}")
    if polluted:
        print(f"{polluted} run(s) kept with more than {FOREIGN_LIMIT_PCT:g} % of a core of foreign load: run it again.")
    print(f"raw results: {os.path.relpath(results['output'])}")


def run(args: argparse.Namespace) -> int:
    wrk = shutil.which("wrk") if args.loadgen in ("auto", "wrk") else None
    if args.loadgen == "wrk" and wrk is None:
        raise BenchError("--loadgen wrk: wrk is not on PATH")
    servers = Servers()  # no plan_cpus: nothing pinned, every process may use every core
    loader = Loader(servers, wrk)
    tool = "wrk" if loader.wrk else "builtin"
    results: dict[str, Any] = {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "workers": {}}
    failed_checks = 0
    try:
        idle = settle(2 if args.quick else 10)
        machine = machine_info(servers.procs, None, loader.wrk)
        machine["load_before_run_pct"] = round(idle, 1)
        results["machine"] = machine
        results["settings"] = {
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "connections": args.connections,
            "throughput_tool": tool,
            "pinning": "none",
            "scenarios": args.scenarios,
        }
        print(machine_line(machine), flush=True)
        loadgen = machine["versions"].get("wrk", "wrk") if tool == "wrk" else "built-in aiohttp generator"
        print(f"load: {loadgen} at c={args.connections}, {args.duration:g} s per run; nothing pinned", flush=True)
        servers.start_upstream()
        for workers in WORKER_COUNTS:
            runs, failed = run_gateway(servers, loader, args, workers, tool)
            failed_checks += failed
            results["workers"][str(workers)] = {"runs": runs, "failed_checks": failed}
    finally:
        servers.close()
    one, two = results["workers"]["1"]["runs"], results["workers"]["2"]["runs"]
    results["summary"] = {
        name: {
            "rps_1": one[name]["rps"],
            "rps_2": two[name]["rps"],
            "ratio": two[name]["rps"] / one[name]["rps"] if one[name]["rps"] else None,
        }
        for name in one
    }
    output = Path(args.output)
    results["output"] = str(output)
    write_json(results, output)
    print_table(results)
    errors = sum(r["errors"] for w in results["workers"].values() for r in w["runs"].values())
    return 1 if errors or failed_checks else 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Throughput of serve --workers 2 against --workers 1.")
    add_load_options(parser, DEFAULT_SCENARIOS, "short runs")
    parser.add_argument("--output", default=str(DEFAULT_OUTPUT), help="where to write the raw results (JSON)")
    args = parser.parse_args(argv)
    check_load_options(parser, args)
    args.warmup = 0.5 if args.quick else 1.0
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not sys.platform.startswith("linux"):
        print("bench/workers.py reads /proc: it runs on Linux only", file=sys.stderr)
        return 2
    return guarded("bench", lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
