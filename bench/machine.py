"""The machine the benchmark ran on: CPUs, kernel, Python, library versions, commit, and how fast one core is
(the ``python -m timeit "sum(range(1000))"`` figure, to compare machines)."""

from __future__ import annotations

import contextlib
import os
import platform
import re
import subprocess
import sys
from typing import Any

from processes import REPO_DIR, Processes


def machine_info(procs: Processes, cpu: set[int] | None, wrk: str | None) -> dict[str, Any]:
    """The machine's description; the timeit figure is taken on ``cpu`` (the gateway's CPU when pinned)."""
    model = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    code, out, _ = procs.run([sys.executable, "-m", "timeit", "sum(range(1000))"], cpu, timeout=60)
    text = out.decode(errors="replace").strip()
    match = re.search(r"([\d.]+) (nsec|usec|msec|sec) per loop", text)
    timeit_us = None
    if code == 0 and match:
        timeit_us = float(match.group(1)) * {"nsec": 1e-3, "usec": 1.0, "msec": 1e3, "sec": 1e6}[match.group(2)]
    versions: dict[str, str] = {}
    for name in ("aiohttp", "uvloop", "orjson", "yarl", "multidict"):
        with contextlib.suppress(Exception):
            from importlib.metadata import version

            versions[name] = version(name)
    if wrk:
        _, wout, werr = procs.run([wrk, "-v"], None, timeout=10)
        first = (wout or werr).decode(errors="replace").splitlines()
        versions["wrk"] = first[0].split(" [", 1)[0].strip() if first else "?"
    commit = ""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        git = subprocess.run(
            ["git", "-C", str(REPO_DIR), "rev-parse", "--short", "HEAD"], capture_output=True, timeout=5, check=False
        )
        commit = git.stdout.decode().strip()
    return {
        "nproc": os.cpu_count(),
        "cpus_allowed": sorted(os.sched_getaffinity(0)),
        "cpu_model": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "timeit_sum_range_1000_us": timeit_us,
        "timeit_output": text,
        "versions": versions,
        "commit": commit,
    }
