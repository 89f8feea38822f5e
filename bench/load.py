"""Applying load: wrk with a generated Lua script, or the built-in generator (``bench/loadgen.py``).

Both run as subprocesses pinned to the load CPU and report what they measured in the same shape: requests,
seconds, errors and latency percentiles in ms.
"""

from __future__ import annotations

import math
import re
import secrets
import sys
from dataclasses import dataclass
from typing import Any

import orjson
from processes import BENCH_DIR, BenchError
from scenarios import Scenario
from servers import Servers

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
    #: streams: the first chunk counts from when these bytes have arrived (empty: the first body chunk)
    first_marker: bytes = b""


@dataclass
class Loader:
    """Applies loads to the servers, from the load CPU; ``wrk`` is the path of wrk when it may be used."""

    servers: Servers
    wrk: str | None = None

    def load_for(
        self,
        scenario: Scenario,
        via_gateway: bool,
        connections: int,
        duration: float,
        tool: str,
        query: str = "",
        *,
        nginx: bool = False,
    ) -> Load:
        """The scenario's load through the gateway, or its direct call (through the nginx hop with ``nginx``)."""
        if via_gateway:
            url = self.servers.gateway_url + scenario.gateway_path
            body, expect = scenario.gateway_body, scenario.gateway_expect
        else:
            url = (self.servers.nginx_url if nginx else self.servers.upstream_url) + scenario.direct_path
            body, expect = scenario.direct_body, scenario.direct_expect
        url += query
        headers = self.servers.headers(via_gateway, scenario.x_api_key)
        marker = b""
        if via_gateway:
            headers.update(scenario.gateway_headers)
            marker = scenario.first_marker
        return Load(url, body, expect, headers, connections, duration, scenario.stream, tool, marker)

    def apply(self, load: Load) -> dict[str, Any]:
        """Run one load and return what the load generator measured (latencies in ms)."""
        if load.tool == "wrk":
            return self.apply_wrk(load)
        return self.apply_builtin(load)

    def apply_wrk(self, load: Load) -> dict[str, Any]:
        assert self.wrk is not None
        auth = "".join(f'wrk.headers["{k}"] = "{v}"\n' for k, v in load.headers.items() if k != "Content-Type")
        script = self.servers.tmp / f"load-{secrets.token_hex(4)}.lua"
        script.write_text(WRK_SCRIPT.format(body=load.body.decode(), auth=auth))
        seconds = max(1, math.ceil(load.duration))
        argv = [self.wrk, "-t1", f"-c{load.connections}", f"-d{seconds}s", "--timeout", "10s", "-s", str(script)]
        code, out, err = self.servers.procs.run([*argv, load.url], self.servers.load_cpus, timeout=seconds + 30)
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
        body_file = self.servers.tmp / f"body-{secrets.token_hex(4)}.json"
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
        if load.first_marker:
            argv += ["--first-marker", load.first_marker.decode()]
        code, out, err = self.servers.procs.run(argv, self.servers.load_cpus, timeout=load.duration + 60)
        if code != 0:
            raise BenchError(f"the load generator failed (status {code}): {err.decode(errors='replace')[-1000:]}")
        raw: dict[str, Any] = orjson.loads(out)
        raw["tool"] = "builtin"
        return raw
