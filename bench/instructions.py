"""Instructions per request, the gateway's and the nginx hop's, counted by callgrind: a ratio that does not move
with the machine's load.

``python bench/instructions.py [--requests 300] [--scenarios passthrough,chat]`` starts the fake upstream, then
the gateway and nginx each under ``valgrind --tool=callgrind`` with counting switched off. For each scenario it
sends, one at a time on one keep-alive connection, a warm-up of 50 requests, then switches counting on
(``callgrind_control -i on``), sends ``--requests`` more, switches it off and dumps the count. The gateway gets the
scenario's request, nginx its direct call, as in ``run.py``. Each answer is checked for the scenario's expected
bytes.

Callgrind counts the instructions the process runs in user space, nothing else: not the kernel's work for its
sockets, not cache misses or stalls, not the time it waits. So the figures are not CPU time and the ratio is not
``run.py``'s; it is the part of the cost that is the program's own, measured the same way twice in a row whatever
else the machine does (the same code gives the same count within about 1 %). Use it to tell whether a change
made the gateway do less; use ``run.py`` for what a request costs. Needs valgrind (``apt-get install valgrind``),
installed here when missing and the benchmark runs as root. Raw figures: ``bench/results/instructions.json``.
"""

from __future__ import annotations

import argparse
import glob
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from machine import machine_info
from processes import BENCH_DIR, BenchError, guarded
from report import fmt, machine_line, write_json
from scenarios import SCENARIOS, Scenario, scenario_names
from servers import Servers

DEFAULT_OUTPUT = BENCH_DIR / "results" / "instructions.json"
WARMUP = 50
#: the streams are left out: one request there is a whole stream, with the upstream's pacing in it
SUPPORTED = ("passthrough", "chat", "openai", "anthropic", "anthropic_openai")
#: start-up under valgrind is about fifty times slower than without it
START_SECONDS = 240.0


def find_valgrind() -> str | None:
    found = shutil.which("valgrind")
    if found or not shutil.which("apt-get") or os.geteuid() != 0:
        return found
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "install", "-y", "-qq", "valgrind"], env=env, capture_output=True, timeout=600)
    return shutil.which("valgrind")


class Client:
    """One keep-alive connection, one request at a time, each answer read to its end (by its Content-Length)."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.sock = socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 80), timeout=60)

    def send(self, request: bytes) -> bytes:
        self.sock.sendall(request)
        data = b""
        while True:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise BenchError("the connection closed before the answer was complete")
            data += chunk
            head, sep, body = data.partition(b"\r\n\r\n")
            if sep:
                found = re.search(rb"(?im)^content-length:\s*(\d+)", head)
                if found is None:
                    raise BenchError(f"an answer without Content-Length: {head[:200]!r}")
                if len(body) >= int(found.group(1)):
                    return data

    def close(self) -> None:
        self.sock.close()


def request_bytes(path: str, body: bytes, headers: dict[str, str], extra: tuple[tuple[str, str], ...]) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: bench", f"Content-Length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in (*headers.items(), *extra)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def count(pid: int, out: str, name: str, send: Any, requests: int) -> float:
    """Instructions per request of process ``pid`` over ``requests`` calls of ``send``."""
    control = shutil.which("callgrind_control") or "callgrind_control"
    subprocess.run([control, "-z", str(pid)], capture_output=True, timeout=120, check=True)
    subprocess.run([control, "-i", "on", str(pid)], capture_output=True, timeout=120, check=True)
    for _ in range(requests):
        send()
    subprocess.run([control, "-i", "off", str(pid)], capture_output=True, timeout=120, check=True)
    before = set(glob.glob(out + "*"))
    subprocess.run([control, "--dump=" + name, str(pid)], capture_output=True, timeout=120, check=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for path in set(glob.glob(out + "*")) - before:
            text = Path(path).read_text(errors="replace")
            found = re.search(r"^totals: (\d+)", text, re.M)
            if found and name in text:  # the dump's trigger line names it
                return int(found.group(1)) / requests
        time.sleep(0.2)
    raise BenchError(f"callgrind wrote no dump for {name}")


def sender(url: str, scenario: Scenario, via_gateway: bool, servers: Servers) -> tuple[Client, Any]:
    """A connection, and a function that sends the scenario's request on it and checks the answer."""
    path = scenario.gateway_path if via_gateway else scenario.direct_path
    body = scenario.gateway_body if via_gateway else scenario.direct_body
    expect = scenario.gateway_expect if via_gateway else scenario.direct_expect
    extra = scenario.gateway_headers if via_gateway else ()
    request = request_bytes(path, body, servers.headers(via_gateway, scenario.x_api_key and via_gateway), extra)
    client = Client(url)

    def send() -> None:
        answer = client.send(request)
        if not answer.startswith(b"HTTP/1.1 200") or expect not in answer:
            raise BenchError(f"[{scenario.name}] unexpected answer: {answer[:300]!r}")

    return client, send


def gateway_count(servers: Servers, out: str, scenario: Scenario, n: int) -> float:
    """The gateway's instructions per request: counting switched on and off around ``n`` requests."""
    assert servers.gateway_proc is not None
    client, send = sender(servers.gateway_url, scenario, True, servers)
    try:
        for _ in range(WARMUP):
            send()
        return count(servers.gateway_proc.pid, out, f"{scenario.name}-gateway", send, n)
    finally:
        client.close()


def nginx_total(servers: Servers, out: str, scenario: Scenario, n: int) -> int:
    """The instructions of a whole nginx run (start, the warm-up, ``n`` requests, stop), counted from its start.

    An idle nginx sleeps in ``epoll_wait`` and would not see callgrind's commands, so it is counted whole: the
    difference between a run with ``n`` requests and one without is theirs."""
    if not servers.start_nginx():
        raise BenchError("nginx is needed as the reference (apt-get install nginx)")
    assert servers.nginx_proc is not None
    proc = servers.nginx_proc
    client, send = sender(servers.nginx_url, scenario, False, servers)
    try:
        for _ in range(WARMUP + n):
            send()
    finally:
        client.close()
    time.sleep(0.5)
    proc.send_signal(signal.SIGQUIT)  # a graceful stop, which nginx under valgrind always honours
    try:
        proc.wait(60)
    finally:
        servers.procs.stop(proc)
        servers.nginx_proc = None
    dump = Path(f"{out}.{proc.pid}")
    found = re.search(r"^totals: (\d+)", dump.read_text(errors="replace"), re.M) if dump.exists() else None
    if found is None:
        tail = dump.read_text(errors="replace")[-300:] if dump.exists() else ""
        raise BenchError(f"callgrind wrote no count for nginx (status {proc.returncode}, {dump}: {tail!r})")
    return int(found.group(1))


def run(args: argparse.Namespace) -> int:
    valgrind = find_valgrind()
    if valgrind is None:
        print("bench/instructions.py needs valgrind (apt-get install valgrind)", file=sys.stderr)
        return 2
    names = args.scenarios
    chosen = [s for s in SCENARIOS if s.name in names]
    servers = Servers()
    out = str(servers.tmp / "callgrind.out")
    wrapper = (valgrind, "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}.%p")
    nginx_wrapper = (valgrind, "--tool=callgrind", f"--callgrind-out-file={out}.%p")
    results: dict[str, Any] = {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "requests": args.requests}
    rows: list[dict[str, Any]] = []
    try:
        servers.plan_cpus(no_pin=False)
        machine = machine_info(servers.procs, servers.gateway_cpus, None)
        print(machine_line(machine), flush=True)
        servers.start_upstream()
        servers.wrapper, servers.start_seconds = wrapper, START_SECONDS
        print("starting the gateway and nginx under callgrind (about a minute)…", flush=True)
        servers.start_gateway(names)
        servers.wrapper = nginx_wrapper
        for scenario in chosen:
            gateway = gateway_count(servers, out, scenario, args.requests)
            total = nginx_total(servers, out, scenario, args.requests)
            nginx = (total - nginx_total(servers, out, scenario, 0)) / args.requests
            rows.append({"scenario": scenario.name, "gateway": round(gateway), "nginx": round(nginx)})
            print(
                f"[{scenario.name}] gateway {gateway / 1000:,.1f} k, nginx {nginx / 1000:,.1f} k instructions per "
                f"request: {gateway / nginx:.1f}×",
                flush=True,
            )
        results.update({"machine": machine, "scenarios": rows})
    finally:
        servers.close()
    print()
    print("| scenario | gateway instructions/request | nginx hop instructions/request | × nginx hop |")
    print("|---|---:|---:|---:|")
    for row in rows:
        print(
            f"| {row['scenario']} | {fmt(row['gateway'])} | {fmt(row['nginx'])} | {row['gateway'] / row['nginx']:.1f} |"
        )
    write_json(results, Path(args.output))
    print(f"\nraw results: {os.path.relpath(args.output)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Instructions per request (callgrind): the gateway and nginx.")
    parser.add_argument("--requests", type=int, default=300, help="requests counted per scenario (default 300)")
    parser.add_argument(
        "--scenarios", type=scenario_names, default=["passthrough", "chat"], help=f"any of {', '.join(SUPPORTED)}"
    )
    parser.add_argument("--output", default=str(DEFAULT_OUTPUT), help="where to write the raw figures (JSON)")
    args = parser.parse_args(argv)
    unknown = [n for n in args.scenarios if n not in SUPPORTED]
    if unknown:
        parser.error(f"not counted here: {', '.join(unknown)} (streams are left out; see the module's docstring)")
    if not 10 <= args.requests <= 100_000:
        parser.error("--requests must be in [10, 100000]")
    return guarded("instructions", lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
