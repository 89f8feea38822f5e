"""The processes under test: the fake TGI and OpenAI upstream (``bench/upstream.py``) and the gateway in front of it.

With two or more CPUs, the gateway runs alone on the first one; the upstream and the load generator share the
second. The gateway gets a generated config and a random master key, and listens on loopback only.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from nginx import find_nginx, start_nginx
from processes import BENCH_DIR, REPO_DIR, BenchError, Processes, read_line, tail, wait_healthy
from scenarios import ANTHROPIC_OPENAI_TARGET, ANTHROPIC_TEMPLATE, OPENAI_TARGET


def openai_target(origin: str) -> dict[str, Any]:
    """An ``api: openai`` target in front of the upstream's OpenAI route, passed through unchanged."""
    return {"url": origin + "/v1", "api": "openai"}


def anthropic_openai_target(origin: str) -> dict[str, Any]:
    """A target serving Anthropic ``/v1/messages`` from the upstream's OpenAI ``/v1/chat/completions``."""
    route = {"path": "/chat/completions", "in": "messagesReqAnthropicToOpenAI", "out": "messagesAnsOpenAItoAnthropic"}
    return {"url": origin + "/v1", "mapping": {"/messages": route}}


@dataclass
class Servers:
    """The upstream and the gateway, their CPUs, addresses and scratch directory; ``close`` stops them."""

    procs: Processes = field(default_factory=Processes)
    tmp: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="mooltiproxy-bench-")))
    gateway_cpus: set[int] | None = None
    load_cpus: set[int] | None = None
    key: str = field(default_factory=lambda: "bench-" + secrets.token_hex(16))
    upstream_proc: subprocess.Popen[bytes] | None = None
    gateway_proc: subprocess.Popen[bytes] | None = None
    upstream_url: str = ""
    gateway_url: str = ""
    #: the reference hop (``nginx.py``): nginx ``proxy_pass`` in front of the same upstream, on the gateway's CPU
    nginx_proc: subprocess.Popen[bytes] | None = None
    nginx_url: str = ""
    #: a command the gateway and nginx run under (``instructions.py``: callgrind), and the start-up time it allows
    wrapper: tuple[str, ...] = ()
    start_seconds: float = 30.0

    @property
    def gateway_log(self) -> Path:
        return self.tmp / "gateway.log"

    def plan_cpus(self, no_pin: bool) -> str:
        allowed = sorted(os.sched_getaffinity(0))
        if len(allowed) >= 2 and not no_pin:
            self.gateway_cpus, self.load_cpus = {allowed[0]}, {allowed[1]}
            return f"gateway on CPU {allowed[0]}; upstream and load generator on CPU {allowed[1]}"
        return "no pinning (" + ("--no-pin" if no_pin else "a single CPU") + "): ratios are less reliable"

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

    def start_nginx(self) -> bool:
        """Start the nginx reference hop; False when nginx is not available."""
        binary = find_nginx()
        if binary is None:
            return False
        proc, url = start_nginx(
            self.procs, binary, self.tmp, self.upstream_url, self.gateway_cpus, self.wrapper, self.start_seconds
        )
        self.nginx_proc, self.nginx_url = proc, url
        return True

    def write_gateway_config(self, scenarios: Iterable[str]) -> Path:
        """The gateway's config: ``/generate`` passed through; the chat, Anthropic and OpenAI routes when needed."""
        mapping: dict[str, Any] = {"/generate": None}
        if {"chat", "stream"} & set(scenarios):
            mapping["/chat/completions"] = {
                "path": "/generate",
                "in": "chatReqOpenAItoTGI",
                "out": "chatAnsTGItoOpenAI",
                "template": "chatml",
            }
        if {"anthropic", "anthropic_stream"} & set(scenarios):
            mapping["/messages"] = {
                "path": "/generate",
                "in": "messagesReqAnthropicToTGI",
                "out": "messagesAnsTGItoAnthropic",
                "template": ANTHROPIC_TEMPLATE,
            }
        targets: dict[str, Any] = {"default": "up", "up": {"url": self.upstream_url, "mapping": mapping}}
        if {"openai", "openai_stream"} & set(scenarios):
            targets[OPENAI_TARGET] = openai_target(self.upstream_url)
        if "anthropic_openai" in scenarios:
            targets[ANTHROPIC_OPENAI_TARGET] = anthropic_openai_target(self.upstream_url)
        config = {"system": {"host": "127.0.0.1", "port": 0}, "targets": targets}
        path = self.tmp / "gateway.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        return path

    def start_gateway(self, scenarios: Iterable[str], workers: int | None = None) -> None:
        """Start the gateway; ``workers``: run it as ``serve --workers N`` (N processes sharing the port)."""
        path = self.write_gateway_config(scenarios)
        extra = ["--workers", str(workers)] if workers else []
        env = {k: v for k, v in os.environ.items() if not k.startswith("MOOLTIPROXY_")}
        env["MOOLTIPROXY_KEY"] = self.key
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_DIR), env.get("PYTHONPATH", "")) if p)
        log = self.procs.log(self.gateway_log)
        proc = self.procs.start(
            [
                *self.wrapper,
                sys.executable,
                "-m",
                "mooltiproxy",
                "serve",
                "--config",
                str(path),
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                *extra,
            ],
            self.gateway_cpus,
            stdout=subprocess.PIPE,
            stderr=log,
            cwd=str(self.tmp),
            env=env,
        )
        self.gateway_proc = proc
        try:
            line = read_line(proc, self.start_seconds, "the gateway")
        except BenchError as exc:
            raise BenchError(f"{exc}\n--- gateway log ---\n{tail(self.gateway_log)}") from None
        match = re.search(r"https?://[^\s,]+", line)
        if not match:
            raise BenchError(f"cannot read the gateway's address from: {line!r}")
        self.gateway_url = match.group(0)
        wait_healthy(self.gateway_url + "/-/health", self.start_seconds / 3)

    def headers(self, via_gateway: bool, x_api_key: bool = False) -> dict[str, str]:
        """The request headers; through the gateway, its key (``x-api-key``, or ``Authorization: Bearer``)."""
        headers = {"Content-Type": "application/json"}
        if via_gateway and x_api_key:
            headers["x-api-key"] = self.key
        elif via_gateway:
            headers["Authorization"] = f"Bearer {self.key}"
        return headers

    def check_gateway(self) -> None:
        if self.gateway_proc is not None and self.gateway_proc.poll() is not None:
            raise BenchError(f"the gateway exited (status {self.gateway_proc.returncode})\n{tail(self.gateway_log)}")

    def stop_gateway(self) -> None:
        """Stop the gateway (a supervisor stops its workers first), so that another one can be started."""
        if self.gateway_proc is not None:
            self.procs.stop(self.gateway_proc, grace=15.0)
            self.gateway_proc = None
            self.gateway_url = ""

    def close(self) -> None:
        """Stop every subprocess and remove the scratch directory."""
        self.procs.close()
        shutil.rmtree(self.tmp, ignore_errors=True)
