"""Benchmark the gateway against the upstream it fronts, with both measured in the same run.

``python bench/run.py [--duration 5] [--connections 32] [--quick]`` starts the fake TGI and OpenAI upstream
(``bench/upstream.py``) and the gateway as subprocesses, checks that answers are correct, then for each scenario
(``passthrough``, ``chat``, ``stream``, ``openai``, ``openai_stream``, ``anthropic``, ``anthropic_stream``,
``anthropic_openai``) measures the direct upstream call and the call through the gateway:

* throughput at N connections (wrk when it is on PATH, else the built-in aiohttp load generator), with the
  gateway's CPU time per request read from ``/proc/<pid>/stat`` over the measured window;
* latency at one connection (built-in generator): the gateway's p50/p99 minus the direct ones is the added
  latency; for streams also the time to the first chunk (for Anthropic streams, to the first content event).

The gateway runs alone on the first CPU; the upstream and the load generator share the second. Foreign load
(CPU time used by anything but the processes of this benchmark) is measured during every run; a run polluted by
more than 20 % of a core is re-run once when time allows. Results: a Markdown table on stdout and the raw figures
in ``bench/results/latest.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from checks import verify
from load import Loader
from machine import machine_info
from measure import RUN_OVERHEAD_S, Meter, process_rss_mb, settle
from nginx import nginx_version
from processes import BENCH_DIR, BenchError, guarded
from report import fmt, machine_line, print_report, summarise, write_json
from scenarios import PACED_DELAY_MS, SCENARIOS, add_load_options, check_load_options
from servers import Servers

DEFAULT_OUTPUT = BENCH_DIR / "results" / "latest.json"

#: one planned run: label, where it goes (``direct``, ``gateway`` or ``nginx``), connections, seconds, load
#: generator, query string
Step = tuple[str, str, int, float, str, str]


def plan_runs(
    scenarios: list[str], connections: int, duration: float, c1_duration: float, tool: str, nginx: bool = True
) -> dict[str, list[Step]]:
    """The runs of each selected scenario, in order; ``nginx``: with the run through the nginx hop."""
    plans: dict[str, list[Step]] = {}
    for scenario in SCENARIOS:
        if scenario.name not in scenarios:
            continue
        steps: list[Step] = [
            ("direct", "direct", connections, duration, tool, ""),
            ("gateway", "gateway", connections, duration, tool, ""),
            ("direct_c1", "direct", 1, c1_duration, "builtin", ""),
            ("gateway_c1", "gateway", 1, c1_duration, "builtin", ""),
        ]
        if nginx:
            steps.insert(2, ("nginx", "nginx", connections, duration, tool, ""))
        if scenario.stream:
            paced = f"?delay_ms={PACED_DELAY_MS:g}"
            steps.append(("direct_paced", "direct", connections, duration, tool, paced))
            steps.append(("gateway_paced", "gateway", connections, duration, tool, paced))
        plans[scenario.name] = steps
    return plans


def run(args: argparse.Namespace) -> int:
    wrk = shutil.which("wrk") if args.loadgen in ("auto", "wrk") else None
    if args.loadgen == "wrk" and wrk is None:
        raise BenchError("--loadgen wrk: wrk is not on PATH")
    # the 17 planned runs of passthrough, chat and stream take about 40 s (--quick) or 90 s (default) with set-up;
    # re-runs and waits for a quiet machine use the rest; more runs and longer runs get proportionally more
    base_duration, base_budget = (2.0, 46.0) if args.quick else (5.0, 200.0)
    steps = sum(len(s) for s in plan_runs(args.scenarios, args.connections, args.duration, 1.0, "builtin").values())
    budget = base_budget * max(1.0, steps / 17) + max(0.0, steps * 1.5 * (args.duration - base_duration))
    servers = Servers()
    loader = Loader(servers, wrk)
    meter = Meter(servers, loader, budget)
    tool = "wrk" if loader.wrk else "builtin"
    duration = args.duration
    c1_duration = max(1.0, duration / 2)
    warmup = 0.5 if args.quick else 1.0
    pinning = servers.plan_cpus(args.no_pin)
    results: dict[str, Any] = {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    try:
        idle = settle(2 if args.quick else 10)
        machine = machine_info(servers.procs, servers.gateway_cpus, loader.wrk)
        machine["load_before_run_pct"] = round(idle, 1)
        print(machine_line(machine), flush=True)
        print(f"pinning: {pinning}", flush=True)
        loadgen = f"{machine['versions'].get('wrk', 'wrk')}" if tool == "wrk" else "built-in aiohttp generator"
        print(f"load: {loadgen} for throughput at c={args.connections}, built-in generator at c=1", flush=True)
        servers.start_upstream()
        servers.start_gateway(args.scenarios)
        nginx = not args.no_nginx and servers.start_nginx()
        hop = f", nginx hop {servers.nginx_url}" if nginx else " (no nginx hop: no ratios to it)"
        print(f"upstream {servers.upstream_url}, gateway {servers.gateway_url}{hop}", flush=True)
        if nginx:
            machine["versions"]["nginx"] = nginx_version()
        checks = asyncio.run(verify(servers, args.scenarios))
        for r in checks.results:
            if not r["ok"]:
                print(f"CHECK FAILED [{r['scenario']}] {r['check']}: {r['detail']}", flush=True)
        ok_count = sum(r["ok"] for r in checks.results)
        print(f"correctness: {ok_count}/{len(checks.results)} checks passed", flush=True)
        results.update(
            {
                "machine": machine,
                "settings": {
                    "duration_s": duration,
                    "c1_duration_s": c1_duration,
                    "connections": args.connections,
                    "throughput_tool": tool,
                    "pinning": pinning,
                    "quick": args.quick,
                },
                "checks": checks.results,
                "scenarios": {},
            }
        )
        plans = plan_runs(args.scenarios, args.connections, duration, c1_duration, tool, nginx)
        meter.planned_s = sum(warmup + sum(step[3] + RUN_OVERHEAD_S for step in steps) for steps in plans.values())
        for scenario in SCENARIOS:
            if scenario.name not in plans:
                continue
            servers.check_gateway()
            print(f"[{scenario.name}] {scenario.title}", flush=True)
            loader.apply(loader.load_for(scenario, True, args.connections, warmup, tool))  # warm-up
            meter.planned_s -= warmup
            runs: dict[str, dict[str, Any]] = {}
            for label, via, conns, seconds, how, query in plans[scenario.name]:
                load = loader.load_for(scenario, via == "gateway", conns, seconds, how, query, nginx=via == "nginx")
                proxy = servers.nginx_proc.pid if via == "nginx" and servers.nginx_proc else None
                runs[label] = meter.measure(load, max_wait=2.0 if args.quick else 8.0, proxy_pid=proxy)
                r = runs[label]
                cpu = f", {via} CPU {fmt(r['gateway_cpu_us_per_req'])} µs/req" if via != "direct" else ""
                print(
                    f"  {label:<11} {fmt(r['rps']):>7} req/s, p50 {fmt(r['latency_ms'].get('p50'), 2)} ms, "
                    f"p99 {fmt(r['latency_ms'].get('p99'), 2)} ms, errors {r['errors']}{cpu}, "
                    f"foreign load {r['foreign_pct']:.0f} %",
                    flush=True,
                )
                servers.check_gateway()
            summary = summarise(scenario.name, runs, checks.failures(scenario.name), scenario.stream)
            results["scenarios"][scenario.name] = {"title": scenario.title, "runs": runs, "summary": summary}
        assert servers.gateway_proc is not None
        results["gateway_rss_mb"] = round(process_rss_mb(servers.gateway_proc.pid), 1)
    finally:
        servers.close()
    all_runs = [r for s in results["scenarios"].values() for r in s["runs"].values()]
    results["hygiene"] = meter.hygiene(all_runs)
    results["elapsed_s"] = round(time.monotonic() - meter.started, 1)
    output = Path(args.output)
    write_json(results, output)
    print_report(results, servers.load_cpus, output)
    errors = sum(s["summary"]["errors"] for s in results["scenarios"].values())
    return 1 if errors else 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Measure the gateway against its upstream, in the same run.")
    add_load_options(parser, [s.name for s in SCENARIOS], "short runs (about 110 s with every scenario)")
    parser.add_argument("--no-pin", action="store_true", help="do not pin processes to CPUs")
    parser.add_argument("--no-nginx", action="store_true", help="leave out the nginx hop (and the ratios to it)")
    parser.add_argument("--output", default=str(DEFAULT_OUTPUT), help="where to write the raw results (JSON)")
    args = parser.parse_args(argv)
    check_load_options(parser, args)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not sys.platform.startswith("linux"):
        print("bench/run.py reads /proc: it runs on Linux only", file=sys.stderr)
        return 2
    return guarded("bench", lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
