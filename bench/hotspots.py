"""Where the gateway spends its CPU under load: a py-spy profile per scenario, summarised as tables.

``python bench/hotspots.py [--duration 8] [--connections 32] [--scenarios passthrough,chat,stream]`` starts the
same upstream and gateway as ``run.py`` (same pinning), applies the throughput load of each scenario while
``py-spy record`` samples the gateway, then prints, per scenario:

* the lines where the CPU is spent (self time, ``file:line``);
* the functions that include the most time (inclusive, each function counted once per sample);
* self time by package (the gateway's own code, aiohttp, asyncio, logging…).

The collapsed stacks are written to ``bench/results/profile-<scenario>.txt`` (flamegraph input). Needs py-spy
(``pip install py-spy``) and the right to trace the gateway (root, or ``ptrace_scope`` 0). Timings taken while
profiling are not benchmark figures: use ``run.py`` for those.
"""

from __future__ import annotations

import argparse
import math
import shutil
import sys
import time
from collections import Counter
from pathlib import Path

from load import Loader
from measure import process_cpu_seconds
from processes import BENCH_DIR, REPO_DIR, guarded
from scenarios import SCENARIOS, scenario_names
from servers import Servers

TOP = 20
#: frames every sample starts with (start-up code): left out of the inclusive table
BOOTSTRAP = ("<frozen runpy>", "mooltiproxy/__main__.py", "mooltiproxy/cli.py", "mooltiproxy/runner.py")
#: the line where the event loop runs: samples that end here are uvloop's own C code (I/O, callbacks)
LOOP_LINE = "asyncio/runners.py"


def short_path(path: str) -> str:
    """``…/site-packages/aiohttp/web.py`` → ``aiohttp/web.py``; the gateway's files relative to the repository."""
    for marker in ("site-packages/", "dist-packages/"):
        if marker in path:
            return path.split(marker, 1)[1]
    repo = str(REPO_DIR) + "/"
    if path.startswith(repo):
        return path[len(repo) :]
    if "/lib/python3" in path:
        return path.split("/lib/python3", 1)[1].split("/", 1)[-1]
    return path


def parse_frame(frame: str) -> tuple[str, str, str]:
    """``name (path:line)`` → (name, short path, line)."""
    name, _, rest = frame.partition(" (")
    location = rest.rstrip(")")
    path, _, line = location.rpartition(":")
    if not path:
        path, line = location, ""
    return name, short_path(path), line


def package_of(path: str) -> str:
    if path.startswith("mooltiproxy/"):
        return "/".join(path.split("/")[:2])
    top = path.split("/", 1)[0]
    return top.removesuffix(".py") if "/" in path or path.endswith(".py") else path


def summarise(collapsed: str) -> dict[str, object]:
    """Self time by line, inclusive time by function and self time by package, in % of the samples."""
    self_lines: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    packages: Counter[str] = Counter()
    total = 0
    for row in collapsed.splitlines():
        stack, _, count_text = row.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [parse_frame(f) for f in stack.split(";") if " (" in f]
        if not frames:
            continue
        total += count
        name, path, line = frames[-1]
        if path == LOOP_LINE:
            self_lines["event loop: uvloop's C code (socket I/O, scheduling)"] += count
            packages["uvloop (event loop, C)"] += count
        else:
            self_lines[f"{path}:{line} {name}"] += count
            packages[package_of(path)] += count
        for fn in {f"{p} {n}" for n, p, _ in frames if not p.startswith(BOOTSTRAP) and p != LOOP_LINE}:
            inclusive[fn] += count

    def share(counter: Counter[str]) -> list[tuple[str, float]]:
        return [(key, 100 * value / total) for key, value in counter.most_common(TOP)] if total else []

    return {
        "samples": total,
        "self_lines": share(self_lines),
        "inclusive": share(inclusive),
        "packages": share(packages),
    }


def table(title: str, rows: list[tuple[str, float]]) -> str:
    lines = [f"| {title} | % of samples |", "|---|---:|"]
    lines += [f"| `{key}` | {pct:.1f} |" for key, pct in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Profile the gateway under load with py-spy.")
    parser.add_argument("--duration", type=float, default=8.0, help="seconds of load per scenario")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    parser.add_argument("--scenarios", type=scenario_names, default=[s.name for s in SCENARIOS])
    parser.add_argument("--output-dir", type=Path, default=BENCH_DIR / "results")
    args = parser.parse_args(argv)
    if not 0 < args.duration <= 120:
        parser.error("--duration must be in (0, 120]")
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(spy).exists():
        print("hotspots: py-spy is not installed (pip install py-spy)", file=sys.stderr)
        return 2
    args.output_dir.mkdir(parents=True, exist_ok=True)
    return guarded("hotspots", lambda: profile(args, spy))


def profile(args: argparse.Namespace, spy: str) -> int:
    """Apply each scenario's throughput load to the gateway while py-spy samples it; print the tables."""
    servers = Servers()
    loader = Loader(servers, shutil.which("wrk"))
    tool = "wrk" if loader.wrk else "builtin"
    try:
        print(f"pinning: {servers.plan_cpus(no_pin=False)}; load: {tool} at c={args.connections}", flush=True)
        servers.start_upstream()
        servers.start_gateway(args.scenarios)
        assert servers.gateway_proc is not None
        pid = servers.gateway_proc.pid
        for scenario in SCENARIOS:
            if scenario.name not in args.scenarios:
                continue
            loader.apply(loader.load_for(scenario, True, args.connections, 1.0, tool))  # warm-up
            raw = args.output_dir / f"profile-{scenario.name}.txt"
            record = [spy, "record", "--pid", str(pid), "--rate", str(args.rate), "--nonblocking"]
            record += ["--duration", str(math.ceil(args.duration) + 1), "--format", "raw", "--output", str(raw)]
            spy_proc = servers.procs.start(record, servers.load_cpus, stdout=sys.stderr.fileno(), stderr=sys.stderr)
            time.sleep(0.5)  # attached before the load starts
            cpu_before = process_cpu_seconds(pid)
            result = loader.apply(loader.load_for(scenario, True, args.connections, args.duration, tool))
            cpu = process_cpu_seconds(pid) - cpu_before
            spy_proc.wait(timeout=args.duration + 30)
            servers.procs.forget(spy_proc)
            servers.check_gateway()
            summary = summarise(raw.read_text() if raw.exists() else "")
            per_request = 1e6 * cpu / result["requests"] if result["requests"] else float("nan")
            print(
                f"\n## {scenario.name}: {scenario.title}\n\n{result['requests']} requests, {result['errors']} "
                f"errors, gateway CPU {per_request:,.0f} µs/request while profiled; {summary['samples']} samples "
                f"({raw})\n",
                flush=True,
            )
            for title, key in (
                ("self time: line", "self_lines"),
                ("inclusive time: function", "inclusive"),
                ("self time: package", "packages"),
            ):
                rows = summary[key]
                assert isinstance(rows, list)
                print(table(title, rows) + "\n", flush=True)
    finally:
        servers.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
