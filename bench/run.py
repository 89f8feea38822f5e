"""Benchmark the gateway against the upstream it fronts, with both measured in the same run.

``python bench/run.py [--duration 5] [--connections 32] [--quick]`` starts the fake TGI upstream
(``bench/upstream.py``) and the gateway as subprocesses, checks that answers are correct, then for each scenario
(``passthrough``, ``chat``, ``stream``) measures the direct upstream call and the call through the gateway:

* throughput at N connections (wrk when it is on PATH, else the built-in aiohttp load generator), with the
  gateway's CPU time per request read from ``/proc/<pid>/stat`` over the measured window;
* latency at one connection (built-in generator): the gateway's p50/p99 minus the direct ones is the added
  latency; for streams also the time to the first chunk.

The gateway runs alone on the first CPU; the upstream and the load generator share the second. Foreign load
(CPU time used by anything but the processes of this benchmark) is measured during every run; a run polluted by
more than 20 % of a core is re-run once when time allows. Results: a Markdown table on stdout and the raw figures
in ``bench/results/latest.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import math
import os
import platform
import re
import resource
import secrets
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import yaml

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
DEFAULT_OUTPUT = BENCH_DIR / "results" / "latest.json"

ANSWER_TEXT = " Paris is the capital."
STREAM_EVENTS = 50
STREAM_TOKEN = " tok"
#: the upstream's pause before each event in the paced stream runs (a 50-event stream then lasts about 250 ms)
PACED_DELAY_MS = 5.0
TARGETS_US = {"passthrough": 400.0, "chat": 500.0}
FOREIGN_LIMIT_PCT = 20.0
#: seconds one load run takes beyond its duration (starting the load generator, CPU snapshots)
RUN_OVERHEAD_S = 0.7
CLK_TCK = os.sysconf("SC_CLK_TCK")

SYSTEM_PROMPT = (
    "You are a helpful assistant. Answer in plain English, cite no sources, and keep every answer short enough "
    "to read in under a minute."
)
USER_PROMPT = (
    "Summarise the trade-offs between running an LLM gateway in Python and writing it in C, in three bullet points "
    "please."
)
#: a realistic OpenAI chat request (about 500 bytes)
CHAT_REQUEST: dict[str, Any] = {
    "model": "gpt-4o-mini",
    "messages": [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": USER_PROMPT}],
    "temperature": 0.7,
    "top_p": 0.95,
    "max_tokens": 256,
    "stream": False,
    "user": "bench-user-0001",
    "metadata": {"team": "search", "trace_id": "0af7651916cd43dd8448eb211c80319c"},
}
#: what the gateway sends the upstream for it (a ChatML prompt): the direct call of every scenario
TGI_REQUEST: dict[str, Any] = {
    "inputs": f"<|im_start|>system\n{SYSTEM_PROMPT}<|im_end|>\n<|im_start|>user\n{USER_PROMPT}<|im_end|>\n"
    "<|im_start|>assistant\n",
    "parameters": {
        "max_new_tokens": 256,
        "temperature": 0.7,
        "top_p": 0.95,
        "stop": ["<|im_end|>"],
        "details": True,
    },
}


@dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    direct_path: str
    direct_body: bytes
    direct_expect: bytes
    gateway_path: str
    gateway_body: bytes
    gateway_expect: bytes
    stream: bool = False


SCENARIOS = (
    Scenario(
        "passthrough",
        "POST /generate, JSON pass-through",
        "/generate",
        orjson.dumps(TGI_REQUEST),
        b'"generated_text":" Paris is the capital."',
        "/generate",
        orjson.dumps(TGI_REQUEST),
        b'"generated_text":" Paris is the capital."',
    ),
    Scenario(
        "chat",
        "POST /v1/chat/completions, translated to TGI /generate",
        "/generate",
        orjson.dumps(TGI_REQUEST),
        b'"generated_text":" Paris is the capital."',
        "/v1/chat/completions",
        orjson.dumps(CHAT_REQUEST),
        b"Paris is the capital.",
    ),
    Scenario(
        "stream",
        f"POST /v1/chat/completions stream=true, translated to TGI /generate_stream ({STREAM_EVENTS} events)",
        "/generate_stream",
        orjson.dumps(TGI_REQUEST),
        b'"input_length":12',
        "/v1/chat/completions",
        orjson.dumps({**CHAT_REQUEST, "stream": True}),
        b"data: [DONE]",
        stream=True,
    ),
)


class BenchError(RuntimeError):
    """The benchmark cannot go on (a process did not start, a tool failed)."""


# --- CPU accounting -------------------------------------------------------------------------------------------


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


# --- processes ------------------------------------------------------------------------------------------------


def _prctl() -> Callable[[], None]:
    """Ask the kernel to SIGTERM a child if this process dies (so nothing outlives a killed benchmark)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):  # not Linux
        return lambda: None

    def set_death_signal() -> None:
        prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG

    return set_death_signal


_SET_DEATH_SIGNAL = _prctl()


def child_setup(cpus: set[int] | None) -> Callable[[], None]:
    def setup() -> None:
        _SET_DEATH_SIGNAL()
        if cpus:
            os.sched_setaffinity(0, cpus)

    return setup


class Processes:
    """Every subprocess started here, ended (TERM, then KILL) by ``close`` whatever happens."""

    def __init__(self) -> None:
        self.running: list[subprocess.Popen[bytes]] = []
        self.logs: list[Any] = []

    def log(self, path: Path) -> Any:
        handle = open(path, "wb")  # closed by close(), after the processes writing to it
        self.logs.append(handle)
        return handle

    def start(self, argv: list[str], cpus: set[int] | None, **kwargs: Any) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(argv, preexec_fn=child_setup(cpus), start_new_session=True, **kwargs)
        self.running.append(proc)
        return proc

    def run(self, argv: list[str], cpus: set[int] | None, timeout: float) -> tuple[int, bytes, bytes]:
        """Run a command to completion (killed after ``timeout`` seconds); return code, stdout, stderr."""
        proc = self.start(argv, cpus, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            raise BenchError(f"{Path(argv[0]).name} did not finish within {timeout:.0f} s") from None
        finally:
            self.forget(proc)
        return proc.returncode, out, err

    def forget(self, proc: subprocess.Popen[bytes]) -> None:
        if proc in self.running:
            self.running.remove(proc)

    def stop(self, proc: subprocess.Popen[bytes], grace: float = 3.0) -> None:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                proc.wait(grace)
        self.forget(proc)

    def close(self) -> None:
        for proc in reversed(list(self.running)):
            self.stop(proc)
        for handle in self.logs:
            handle.close()
        self.logs.clear()


def read_line(proc: subprocess.Popen[bytes], timeout: float, what: str) -> str:
    """The first line a process prints on stdout (it announces where it listens)."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    data = b""
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ)
        while b"\n" not in data:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BenchError(f"{what} did not start within {timeout:.0f} s")
            if not selector.select(min(left, 0.2)):
                if proc.poll() is not None:
                    raise BenchError(f"{what} exited with status {proc.returncode} before it was ready")
                continue
            chunk = os.read(proc.stdout.fileno(), 4096)
            if not chunk:
                raise BenchError(f"{what} closed its output before it was ready (status {proc.wait()})")
            data += chunk
    return data.split(b"\n", 1)[0].decode(errors="replace")


def wait_healthy(url: str, timeout: float) -> None:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never through a proxy
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        try:
            with opener.open(url, timeout=2) as resp:
                if resp.status == 200:
                    return
                last = f"status {resp.status}"
        except OSError as exc:
            last = str(exc)
        time.sleep(0.05)
    raise BenchError(f"{url} is not healthy after {timeout:.0f} s: {last}")


def tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


# --- machine --------------------------------------------------------------------------------------------------


def machine_info(procs: Processes, cpu: set[int] | None, wrk: str | None) -> dict[str, Any]:
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


# --- load -----------------------------------------------------------------------------------------------------

WRK_SCRIPT = """\
wrk.method = "POST"
wrk.body = [==[{body}]==]
wrk.headers["Content-Type"] = "application/json"
{auth}
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_RESULT {{"requests":%d,"duration_us":%d,"bytes":%d,"connect":%d,"read":%d,"write":%d,' ..
    '"status":%d,"timeout":%d,"p50":%.1f,"p90":%.1f,"p99":%.1f,"p99_9":%.1f,"max":%.1f,"mean":%.1f}}\\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency:percentile(99.9),
    latency.max, latency.mean))
end
"""


@dataclass
class Load:
    """One load to apply: where, what, how hard, for how long."""

    url: str
    body: bytes
    expect: bytes
    headers: dict[str, str]
    connections: int
    duration: float
    stream: bool
    tool: str  # "wrk" or "builtin"


@dataclass
class Bench:
    args: argparse.Namespace
    procs: Processes = field(default_factory=Processes)
    tmp: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="mooltiproxy-bench-")))
    gateway_cpus: set[int] | None = None
    load_cpus: set[int] | None = None
    wrk: str | None = None
    key: str = field(default_factory=lambda: "bench-" + secrets.token_hex(16))
    upstream_proc: subprocess.Popen[bytes] | None = None
    gateway_proc: subprocess.Popen[bytes] | None = None
    upstream_url: str = ""
    gateway_url: str = ""
    started: float = field(default_factory=time.monotonic)
    retries: int = 0
    #: the whole run's time limit; re-runs and waits for a quiet machine only use what the planned runs leave
    budget_s: float = 170.0
    #: seconds the runs not done yet will take
    planned_s: float = 0.0

    @property
    def gateway_log(self) -> Path:
        return self.tmp / "gateway.log"

    # --- set-up ---

    def plan_cpus(self) -> str:
        allowed = sorted(os.sched_getaffinity(0))
        if len(allowed) >= 2 and not self.args.no_pin:
            self.gateway_cpus, self.load_cpus = {allowed[0]}, {allowed[1]}
            return f"gateway on CPU {allowed[0]}; upstream and load generator on CPU {allowed[1]}"
        return "no pinning (" + ("--no-pin" if self.args.no_pin else "a single CPU") + "): ratios are less reliable"

    def start_upstream(self) -> None:
        log = self.procs.log(self.tmp / "upstream.log")
        proc = self.procs.start(
            [sys.executable, str(BENCH_DIR / "upstream.py"), "--host", "127.0.0.1", "--port", "0"],
            self.load_cpus,
            stdout=subprocess.PIPE,
            stderr=log,
        )
        self.upstream_proc = proc
        line = read_line(proc, 15, "the upstream")
        port = int(line.rsplit(":", 1)[1])
        self.upstream_url = f"http://127.0.0.1:{port}"
        wait_healthy(self.upstream_url + "/health", 10)

    def start_gateway(self) -> None:
        mapping: dict[str, Any] = {"/generate": None}
        if {"chat", "stream"} & set(self.args.scenarios):
            mapping["/chat/completions"] = {
                "path": "/generate",
                "in": "chatReqOpenAItoTGI",
                "out": "chatAnsTGItoOpenAI",
                "template": "chatml",
            }
        config = {
            "system": {"host": "127.0.0.1", "port": 0},
            "targets": {"default": "up", "up": {"url": self.upstream_url, "mapping": mapping}},
        }
        path = self.tmp / "gateway.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        env = {k: v for k, v in os.environ.items() if not k.startswith("MOOLTIPROXY_")}
        env["MOOLTIPROXY_KEY"] = self.key
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_DIR), env.get("PYTHONPATH", "")) if p)
        log = self.procs.log(self.gateway_log)
        proc = self.procs.start(
            [sys.executable, "-m", "mooltiproxy", "serve", "--config", str(path), "--host", "127.0.0.1", "--port", "0"],
            self.gateway_cpus,
            stdout=subprocess.PIPE,
            stderr=log,
            cwd=str(self.tmp),
            env=env,
        )
        self.gateway_proc = proc
        try:
            line = read_line(proc, 30, "the gateway")
        except BenchError as exc:
            raise BenchError(f"{exc}\n--- gateway log ---\n{tail(self.gateway_log)}") from None
        match = re.search(r"https?://[^\s,]+", line)
        if not match:
            raise BenchError(f"cannot read the gateway's address from: {line!r}")
        self.gateway_url = match.group(0)
        wait_healthy(self.gateway_url + "/-/health", 10)

    # --- load runs ---

    def headers(self, via_gateway: bool) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if via_gateway:
            headers["Authorization"] = f"Bearer {self.key}"
        return headers

    def load_for(
        self, scenario: Scenario, via_gateway: bool, connections: int, duration: float, tool: str, query: str = ""
    ) -> Load:
        if via_gateway:
            url, body, expect = self.gateway_url + scenario.gateway_path, scenario.gateway_body, scenario.gateway_expect
        else:
            url, body, expect = self.upstream_url + scenario.direct_path, scenario.direct_body, scenario.direct_expect
        url += query
        return Load(url, body, expect, self.headers(via_gateway), connections, duration, scenario.stream, tool)

    def apply(self, load: Load) -> dict[str, Any]:
        """Run one load and return what the load generator measured (latencies in ms)."""
        if load.tool == "wrk":
            return self.apply_wrk(load)
        return self.apply_builtin(load)

    def apply_wrk(self, load: Load) -> dict[str, Any]:
        assert self.wrk is not None
        auth = "".join(f'wrk.headers["{k}"] = "{v}"\n' for k, v in load.headers.items() if k != "Content-Type")
        script = self.tmp / f"load-{secrets.token_hex(4)}.lua"
        script.write_text(WRK_SCRIPT.format(body=load.body.decode(), auth=auth))
        seconds = max(1, math.ceil(load.duration))
        argv = [self.wrk, "-t1", f"-c{load.connections}", f"-d{seconds}s", "--timeout", "10s", "-s", str(script)]
        code, out, err = self.procs.run([*argv, load.url], self.load_cpus, timeout=seconds + 30)
        text = out.decode(errors="replace")
        found = re.search(r"^WRK_RESULT (\{.*\})$", text, re.MULTILINE)
        if code != 0 or not found:
            raise BenchError(f"wrk failed (status {code}): {err.decode(errors='replace')[-500:]}{text[-500:]}")
        raw = orjson.loads(found.group(1))
        errors = sum(raw[k] for k in ("connect", "read", "write", "status", "timeout"))
        return {
            "tool": "wrk",
            "requests": raw["requests"],
            "seconds": raw["duration_us"] / 1e6,
            "errors": errors,
            "error_detail": {k: raw[k] for k in ("connect", "read", "write", "status", "timeout")},
            "latency_ms": {k: raw[k] / 1000 for k in ("p50", "p90", "p99", "p99_9", "max", "mean")},
            "bytes": raw["bytes"],
        }

    def apply_builtin(self, load: Load) -> dict[str, Any]:
        body_file = self.tmp / f"body-{secrets.token_hex(4)}.json"
        body_file.write_bytes(load.body)
        argv = [
            sys.executable,
            str(BENCH_DIR / "loadgen.py"),
            "--url",
            load.url,
            "--body-file",
            str(body_file),
            "--connections",
            str(load.connections),
            "--duration",
            f"{load.duration:g}",
            "--expect",
            load.expect.decode(),
        ]
        for name, value in load.headers.items():
            argv += ["--header", f"{name}: {value}"]
        if load.stream:
            argv.append("--stream")
        code, out, err = self.procs.run(argv, self.load_cpus, timeout=load.duration + 60)
        if code != 0:
            raise BenchError(f"the load generator failed (status {code}): {err.decode(errors='replace')[-1000:]}")
        raw: dict[str, Any] = orjson.loads(out)
        raw["tool"] = "builtin"
        return raw

    def snapshot(self) -> Snapshot:
        assert self.gateway_proc is not None and self.upstream_proc is not None
        return Snapshot.take(self.gateway_proc.pid, self.upstream_proc.pid)

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

    def measure(self, load: Load, max_wait: float) -> dict[str, Any]:
        """Apply a load while accounting CPU; re-run once when foreign load polluted it and time allows."""
        best: dict[str, Any] | None = None
        for attempt in (1, 2):
            waited = self.wait_quiet(max_wait)
            before = self.snapshot()
            result = self.apply(load)
            after = self.snapshot()
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

    def check_gateway(self) -> None:
        if self.gateway_proc is not None and self.gateway_proc.poll() is not None:
            raise BenchError(f"the gateway exited (status {self.gateway_proc.returncode})\n{tail(self.gateway_log)}")


# --- correctness ----------------------------------------------------------------------------------------------


def sse_data(body: bytes) -> list[str]:
    """The ``data`` payloads of an event stream (one data line per event, as both sides send)."""
    return [line[5:].strip() for line in body.decode(errors="replace").splitlines() if line.startswith("data:")]


@dataclass
class Checks:
    results: list[dict[str, Any]] = field(default_factory=list)

    def add(self, scenario: str, name: str, ok: bool, detail: str = "") -> None:
        self.results.append({"scenario": scenario, "check": name, "ok": bool(ok), "detail": detail[:400]})

    def failures(self, scenario: str) -> int:
        return sum(1 for r in self.results if r["scenario"] == scenario and not r["ok"])


async def verify(bench: Bench) -> Checks:
    """Check a sample of answers through the gateway (and that streams are relayed as they come)."""
    checks = Checks()
    gw, up = bench.gateway_url, bench.upstream_url
    auth = bench.headers(True)
    timeout = aiohttp.ClientTimeout(total=20)
    async with aiohttp.ClientSession(timeout=timeout) as session:

        async def post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes, dict[str, str]]:
            async with session.post(url, data=body, headers=headers) as resp:
                return resp.status, await resp.read(), dict(resp.headers)

        async def attempt(scenario: str, name: str, step: Any) -> None:
            try:
                await step()
            except Exception as exc:  # a failed check, whatever went wrong
                checks.add(scenario, name, False, f"{type(exc).__name__}: {exc}")

        async def passthrough() -> None:
            _, direct, _ = await post(up + "/generate", SCENARIOS[0].direct_body, bench.headers(False))
            status, body, headers = await post(gw + "/generate", SCENARIOS[0].gateway_body, auth)
            checks.add("passthrough", "status 200", status == 200, f"status {status}: {body[:200]!r}")
            checks.add("passthrough", "body relayed unchanged", body == direct, repr(body[:200]))
            prompt_tokens = headers.get("x-prompt-tokens") or headers.get("X-Prompt-Tokens")
            checks.add("passthrough", "x-prompt-tokens relayed", prompt_tokens == "12", repr(prompt_tokens))

        async def chat() -> None:
            status, body, _ = await post(gw + "/v1/chat/completions", SCENARIOS[1].gateway_body, auth)
            checks.add("chat", "status 200", status == 200, f"status {status}: {body[:300]!r}")
            data = orjson.loads(body)
            choice = data["choices"][0]
            content = choice["message"]["content"]
            checks.add("chat", "content", content == ANSWER_TEXT, repr(content))
            checks.add(
                "chat", "object chat.completion", data.get("object") == "chat.completion", repr(data.get("object"))
            )
            checks.add(
                "chat", "finish_reason stop", choice.get("finish_reason") == "stop", repr(choice.get("finish_reason"))
            )

        async def stream() -> None:
            status, body, headers = await post(gw + "/v1/chat/completions", SCENARIOS[2].gateway_body, auth)
            checks.add("stream", "status 200", status == 200, f"status {status}: {body[:300]!r}")
            content_type = headers.get("Content-Type", "")
            checks.add("stream", "text/event-stream", content_type.startswith("text/event-stream"), content_type)
            events = sse_data(body)
            checks.add("stream", "ends with [DONE]", bool(events) and events[-1] == "[DONE]", repr(events[-1:]))
            chunks = [orjson.loads(e) for e in events if e != "[DONE]"]
            deltas = [c["choices"][0].get("delta", {}).get("content") for c in chunks if c.get("choices")]
            text = "".join(d for d in deltas if d)
            checks.add(
                "stream", f"{STREAM_EVENTS} tokens relayed", text == STREAM_TOKEN * STREAM_EVENTS, repr(text[:80])
            )
            kinds = {c.get("object") for c in chunks}
            checks.add("stream", "chat.completion.chunk objects", kinds == {"chat.completion.chunk"}, repr(kinds))
            reasons = [c["choices"][0].get("finish_reason") for c in chunks if c.get("choices")]
            checks.add("stream", "finish_reason length", "length" in reasons, repr([r for r in reasons if r]))

        async def paced() -> None:
            # the upstream waits 10 ms before each event: the first one must arrive long before the last
            started = time.perf_counter()
            async with session.post(
                gw + "/v1/chat/completions?delay_ms=10", data=SCENARIOS[2].gateway_body, headers=auth
            ) as resp:
                await resp.content.readany()
                first = time.perf_counter() - started
                await resp.read()
                total = time.perf_counter() - started
            ok = first < 0.25 * total and total >= 0.4
            detail = f"first chunk after {first * 1000:.0f} ms, last after {total * 1000:.0f} ms"
            checks.add("stream", "relayed as it comes (paced upstream)", ok, detail)

        wanted = set(bench.args.scenarios)
        if "passthrough" in wanted:
            await attempt("passthrough", "answer", passthrough)
        if "chat" in wanted:
            await attempt("chat", "answer", chat)
        if "stream" in wanted:
            await attempt("stream", "answer", stream)
            await attempt("stream", "paced relay", paced)
    return checks


# --- the run --------------------------------------------------------------------------------------------------


def diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def summarise(name: str, runs: dict[str, dict[str, Any]], failed_checks: int) -> dict[str, Any]:
    gw, direct = runs["gateway"], runs["direct"]
    gw1, direct1 = runs["gateway_c1"], runs["direct_c1"]
    lat_gw, lat_d = gw1.get("latency_ms", {}), direct1.get("latency_ms", {})
    summary: dict[str, Any] = {
        "rps_gateway": gw["rps"],
        "rps_direct": direct["rps"],
        "rps_ratio": gw["rps"] / direct["rps"] if direct["rps"] else None,
        "gateway_cpu_us_per_req": gw["gateway_cpu_us_per_req"],
        "gateway_cpu_us_per_req_c1": gw1["gateway_cpu_us_per_req"],
        "gateway_cpu_pct": gw["gateway_cpu_pct"],
        "added_p50_ms_c1": diff(lat_gw.get("p50"), lat_d.get("p50")),
        "added_p99_ms_c1": diff(lat_gw.get("p99"), lat_d.get("p99")),
        "p50_ms_c1": {"gateway": lat_gw.get("p50"), "direct": lat_d.get("p50")},
        "p99_ms_c1": {"gateway": lat_gw.get("p99"), "direct": lat_d.get("p99")},
        "errors": sum(r["errors"] for r in runs.values()) + failed_checks,
        "failed_checks": failed_checks,
    }
    if name == "stream":
        cpu = gw["gateway_cpu_us_per_req"]
        ttfc_gw, ttfc_d = gw1.get("first_chunk_ms", {}), direct1.get("first_chunk_ms", {})
        added = summary["added_p50_ms_c1"]
        summary.update(
            {
                "events_per_s_gateway": gw["rps"] * STREAM_EVENTS,
                "gateway_cpu_us_per_event": cpu / STREAM_EVENTS if cpu is not None else None,
                "first_chunk_p50_ms_c1": {"gateway": ttfc_gw.get("p50"), "direct": ttfc_d.get("p50")},
                "added_first_chunk_p50_ms_c1": diff(ttfc_gw.get("p50"), ttfc_d.get("p50")),
                "added_us_per_chunk_c1": added * 1000 / STREAM_EVENTS if added is not None else None,
            }
        )
        paced_gw, paced_d = runs.get("gateway_paced"), runs.get("direct_paced")
        if paced_gw and paced_d:
            cpu = paced_gw["gateway_cpu_us_per_req"]
            summary["paced"] = {
                "delay_ms": PACED_DELAY_MS,
                "rps_gateway": paced_gw["rps"],
                "rps_direct": paced_d["rps"],
                "events_per_s_gateway": paced_gw["rps"] * STREAM_EVENTS,
                "gateway_cpu_pct": paced_gw["gateway_cpu_pct"],
                "gateway_cpu_us_per_req": cpu,
                "gateway_cpu_us_per_event": cpu / STREAM_EVENTS if cpu is not None else None,
                "added_p50_ms": diff(paced_gw["latency_ms"].get("p50"), paced_d["latency_ms"].get("p50")),
                "added_p99_ms": diff(paced_gw["latency_ms"].get("p99"), paced_d["latency_ms"].get("p99")),
            }
    if name in TARGETS_US:
        summary["target_cpu_us_per_req"] = TARGETS_US[name]
        cpu = summary["gateway_cpu_us_per_req"]
        summary["meets_target"] = cpu is not None and cpu <= TARGETS_US[name]
    return summary


def fmt(value: float | None, digits: int = 0, signed: bool = False) -> str:
    if value is None:
        return "n/a"
    return f"{value:+,.{digits}f}" if signed else f"{value:,.{digits}f}"


def tables(results: dict[str, Any]) -> str:
    out = [
        "| scenario | req/s via gateway | req/s direct | gateway ÷ direct | gateway CPU µs/req | "
        "added p50 ms (c=1) | added p99 ms (c=1) | errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, data in results["scenarios"].items():
        s = data["summary"]
        ratio = f"{s['rps_ratio']:.2f}" if s["rps_ratio"] is not None else "n/a"
        out.append(
            f"| {name} | {fmt(s['rps_gateway'])} | {fmt(s['rps_direct'])} | {ratio} | "
            f"{fmt(s['gateway_cpu_us_per_req'])} | {fmt(s['added_p50_ms_c1'], 2, True)} | "
            f"{fmt(s['added_p99_ms_c1'], 2, True)} | {s['errors']} |"
        )
    stream = results["scenarios"].get("stream")
    if stream:
        s = stream["summary"]
        connections = results["settings"]["connections"]
        rows = [(f"burst (no delay), c={connections}", s, s["added_p50_ms_c1"], "c=1")]
        if "paced" in s:
            p = s["paced"]
            rows.append((f"paced ({p['delay_ms']:g} ms between events), c={connections}", p, p["added_p50_ms"], ""))
        out += [
            "",
            f"Stream ({STREAM_EVENTS} events per stream; latency = time to the last byte):",
            "",
            "| load | streams/s via gateway | streams/s direct | events/s via gateway | gateway CPU % of a core | "
            "CPU µs/stream | CPU µs/event | added p50 ms |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for label, row, added, note in rows:
            out.append(
                f"| {label} | {fmt(row['rps_gateway'])} | {fmt(row['rps_direct'])} | "
                f"{fmt(row['events_per_s_gateway'])} | {fmt(row['gateway_cpu_pct'])} | "
                f"{fmt(row['gateway_cpu_us_per_req'])} | {fmt(row['gateway_cpu_us_per_event'], 1)} | "
                f"{fmt(added, 2, True)}{' (' + note + ')' if note else ''} |"
            )
        ttfc = s["first_chunk_p50_ms_c1"]
        out += [
            "",
            f"At c=1: first chunk p50 {fmt(ttfc['gateway'], 2)} ms via the gateway, {fmt(ttfc['direct'], 2)} ms direct "
            f"({fmt(s['added_first_chunk_p50_ms_c1'], 2, True)} ms); added time per chunk "
            f"{fmt(s['added_us_per_chunk_c1'], 1, True)} µs (added p50 ÷ {STREAM_EVENTS}).",
        ]
    return "\n".join(out)


def run(args: argparse.Namespace) -> int:
    wrk = shutil.which("wrk") if args.loadgen in ("auto", "wrk") else None
    if args.loadgen == "wrk" and wrk is None:
        raise BenchError("--loadgen wrk: wrk is not on PATH")
    bench = Bench(args, wrk=wrk)
    # the planned runs take about 35 s (--quick) or 75 s (default) with set-up; re-runs and waits for a quiet
    # machine use the rest, and longer runs get proportionally more
    base_duration, base_budget = (2.0, 38.0) if args.quick else (5.0, 170.0)
    bench.budget_s = base_budget + max(0.0, 14 * 1.5 * (args.duration - base_duration))
    tool = "wrk" if bench.wrk else "builtin"
    duration = args.duration
    c1_duration = max(1.0, duration / 2)
    warmup = 0.5 if args.quick else 1.0
    pinning = bench.plan_cpus()
    results: dict[str, Any] = {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    try:
        idle = quiet_load(0.5)
        if idle > FOREIGN_LIMIT_PCT:
            patience = 2 if args.quick else 10
            print(f"note: the machine is busy ({idle:.0f} % of a core); waiting up to {patience} s", flush=True)
            for _ in range(patience * 2):
                idle = quiet_load(0.5)
                if idle <= FOREIGN_LIMIT_PCT:
                    break
        machine = machine_info(bench.procs, bench.gateway_cpus, bench.wrk)
        machine["load_before_run_pct"] = round(idle, 1)
        print(
            f"machine: {machine['nproc']} CPU(s) ({machine['cpu_model'] or 'unknown'}), Linux {machine['kernel']}, "
            f'Python {machine["python"]}; python -m timeit "sum(range(1000))": '
            f"{fmt(machine['timeit_sum_range_1000_us'], 1)} µs per loop",
            flush=True,
        )
        print(f"pinning: {pinning}", flush=True)
        loadgen = f"{machine['versions'].get('wrk', 'wrk')}" if tool == "wrk" else "built-in aiohttp generator"
        print(f"load: {loadgen} for throughput at c={args.connections}, built-in generator at c=1", flush=True)
        bench.start_upstream()
        bench.start_gateway()
        print(f"upstream {bench.upstream_url}, gateway {bench.gateway_url}", flush=True)
        checks = asyncio.run(verify(bench))
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
        plans: dict[str, list[tuple[str, bool, int, float, str, str]]] = {}
        for scenario in SCENARIOS:
            if scenario.name not in args.scenarios:
                continue
            plan = [
                ("direct", False, args.connections, duration, tool, ""),
                ("gateway", True, args.connections, duration, tool, ""),
                ("direct_c1", False, 1, c1_duration, "builtin", ""),
                ("gateway_c1", True, 1, c1_duration, "builtin", ""),
            ]
            if scenario.stream:
                paced = f"?delay_ms={PACED_DELAY_MS:g}"
                plan.append(("direct_paced", False, args.connections, duration, tool, paced))
                plan.append(("gateway_paced", True, args.connections, duration, tool, paced))
            plans[scenario.name] = plan
        bench.planned_s = sum(warmup + sum(step[3] + RUN_OVERHEAD_S for step in plan) for plan in plans.values())
        for scenario in SCENARIOS:
            if scenario.name not in plans:
                continue
            bench.check_gateway()
            print(f"[{scenario.name}] {scenario.title}", flush=True)
            bench.apply(bench.load_for(scenario, True, args.connections, warmup, tool))  # warm-up
            bench.planned_s -= warmup
            runs: dict[str, dict[str, Any]] = {}
            for label, via, conns, seconds, how, query in plans[scenario.name]:
                load = bench.load_for(scenario, via, conns, seconds, how, query)
                runs[label] = bench.measure(load, max_wait=2.0 if args.quick else 8.0)
                r = runs[label]
                cpu = f", gateway CPU {fmt(r['gateway_cpu_us_per_req'])} µs/req" if via else ""
                print(
                    f"  {label:<11} {fmt(r['rps']):>7} req/s, p50 {fmt(r['latency_ms'].get('p50'), 2)} ms, "
                    f"p99 {fmt(r['latency_ms'].get('p99'), 2)} ms, errors {r['errors']}{cpu}, "
                    f"foreign load {r['foreign_pct']:.0f} %",
                    flush=True,
                )
                bench.check_gateway()
            summary = summarise(scenario.name, runs, checks.failures(scenario.name))
            results["scenarios"][scenario.name] = {"title": scenario.title, "runs": runs, "summary": summary}
        assert bench.gateway_proc is not None
        results["gateway_rss_mb"] = round(process_rss_mb(bench.gateway_proc.pid), 1)
    finally:
        bench.procs.close()
        shutil.rmtree(bench.tmp, ignore_errors=True)
    all_runs = [r for s in results["scenarios"].values() for r in s["runs"].values()]
    results["hygiene"] = {
        "runs": len(all_runs),
        "re_runs_for_foreign_load": bench.retries,
        "max_foreign_pct": round(max(r["foreign_pct"] for r in all_runs), 1),
        "median_foreign_pct": round(sorted(r["foreign_pct"] for r in all_runs)[len(all_runs) // 2], 1),
        "polluted_runs_kept": sum(1 for r in all_runs if r["foreign_pct"] > FOREIGN_LIMIT_PCT),
    }
    results["elapsed_s"] = round(time.monotonic() - bench.started, 1)
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2) + b"\n")

    print()
    print(tables(results))
    print()
    if bench.load_cpus:
        load_cpu = f"cpu{min(bench.load_cpus)}"
        capped = [
            name
            for name, data in results["scenarios"].items()
            if data["runs"]["direct"]["cpu_busy_pct"].get(load_cpu, 0) >= 95
        ]
        if capped:
            print(
                f"note: in the direct runs of {', '.join(capped)} the load CPU ({load_cpu}: upstream + load generator) "
                "was saturated, so those direct figures are lower bounds of what the upstream can do."
            )
    for name, limit in TARGETS_US.items():
        if name not in results["scenarios"]:
            continue
        s = results["scenarios"][name]["summary"]
        verdict = "meets" if s["meets_target"] else "OVER"
        print(f"target {name}: ≤ {limit:.0f} µs CPU/request, measured {fmt(s['gateway_cpu_us_per_req'])}: {verdict}")
    h = results["hygiene"]
    print(
        f"hygiene: {h['runs']} runs, {h['re_runs_for_foreign_load']} re-run(s) for foreign load, "
        f"foreign load median {h['median_foreign_pct']} % / max {h['max_foreign_pct']} % of a core, "
        f"{h['polluted_runs_kept']} polluted run(s) kept; gateway RSS {results.get('gateway_rss_mb')} MB; "
        f"{results['elapsed_s']} s in all"
    )
    print(f"raw results: {output}")
    errors = sum(s["summary"]["errors"] for s in results["scenarios"].values())
    return 1 if errors else 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Measure the gateway against its upstream, in the same run.")
    parser.add_argument("--duration", type=float, help="seconds per throughput run (default 5; 2 with --quick)")
    parser.add_argument("--connections", type=int, default=32, help="concurrent connections for throughput")
    parser.add_argument("--quick", action="store_true", help="short runs (under 40 s in all)")
    parser.add_argument(
        "--loadgen", choices=("auto", "wrk", "builtin"), default="auto", help="throughput load generator"
    )
    parser.add_argument(
        "--scenarios",
        type=lambda text: [name.strip() for name in text.split(",") if name.strip()],
        default=[s.name for s in SCENARIOS],
        help="comma-separated subset of: " + ", ".join(s.name for s in SCENARIOS),
    )
    parser.add_argument("--no-pin", action="store_true", help="do not pin processes to CPUs")
    parser.add_argument("--output", default=str(DEFAULT_OUTPUT), help="where to write the raw results (JSON)")
    args = parser.parse_args(argv)
    if args.duration is None:
        args.duration = 2.0 if args.quick else 5.0
    if args.duration <= 0 or args.duration > 600 or not 1 <= args.connections <= 10_000:
        parser.error("--duration must be in (0, 600] and --connections in [1, 10000]")
    unknown = set(args.scenarios) - {s.name for s in SCENARIOS}
    if unknown or not args.scenarios:
        parser.error(f"unknown or no scenarios: {', '.join(sorted(unknown))}")
    return args


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """SIGINT (also when a shell started us with it ignored), SIGTERM and SIGHUP end the run like Ctrl-C: through
    the ``finally`` blocks that stop every subprocess."""

    def raise_interrupt(_sig: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    wanted = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {sig: signal.signal(sig, raise_interrupt) for sig in wanted}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not sys.platform.startswith("linux"):
        print("bench/run.py reads /proc: it runs on Linux only", file=sys.stderr)
        return 2
    with terminate_as_interrupt():
        try:
            return run(args)
        except BenchError as exc:
            print(f"bench: {exc}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("bench: interrupted; every subprocess was stopped", file=sys.stderr)
            return 130


if __name__ == "__main__":
    sys.exit(main())
