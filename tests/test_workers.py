"""``serve --workers N``, graceful drain and reload, run as a user runs them: the real command, real signals, a TGI
simulator on loopback."""

from __future__ import annotations

import http.client
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson
import pytest

from mooltiproxy.keys import KeyStore

from .conftest import KEY
from .http import request
from .redisserver import RedisServer, redis_server
from .test_keys import fresh_window

__all__ = ["redis_server"]  # the fixture, imported for pytest

ROOT = Path(__file__).resolve().parent.parent
AUTH = {"Authorization": f"Bearer {KEY}"}


def config(tgi: str, mapping: dict[str, Any] | None = None, **system: Any) -> dict[str, Any]:
    return {
        "system": {"port": 0, "grace_seconds": 10, **system},
        "targets": {"default": "tgi", "tgi": {"url": tgi, "mapping": mapping or {"/generate_stream": None}}},
    }


def wait_for(check: Callable[[], Any], what: str, timeout: float = 20) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


class Served:
    """A ``mooltiproxy serve`` process, its output in a file, its address once it listens."""

    def __init__(self, folder: Path, settings: dict[str, Any], args: list[str]) -> None:
        self.folder = folder
        self.config = folder / "config.yaml"
        self.write(settings)
        self.log = folder / "serve.log"
        env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1", "MOOLTIPROXY_KEY": KEY}
        with self.log.open("w") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "mooltiproxy", "serve", "--config", str(self.config), *args],
                cwd=folder,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        found = wait_for(lambda: re.search(r"listening on (http://\S+),", self.output()), "the listening line")
        self.url = found.group(1)

    def write(self, settings: dict[str, Any]) -> None:
        self.config.write_bytes(orjson.dumps(settings))  # JSON is YAML

    def output(self) -> str:
        if self.proc.poll() is not None and "listening on" not in self.log.read_text():
            raise AssertionError(f"serve exited with {self.proc.returncode}:\n{self.log.read_text()}")
        return self.log.read_text()

    def pid(self) -> int:
        return int(request("GET", self.url + "/-/health").json()["pid"])

    def pid_or_none(self) -> int | None:
        try:
            return self.pid()
        except OSError:
            return None

    def signal(self, sig: signal.Signals) -> None:
        self.proc.send_signal(sig)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()  # a drain; the supervisor removes its metrics folder
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()  # the workers see their supervisor gone and stop by themselves
                self.proc.wait()


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[..., Served]]:
    started: list[Served] = []

    def start(settings: dict[str, Any], *args: str) -> Served:
        served = Served(tmp_path, settings, list(args))
        started.append(served)
        return served

    yield start
    for served in started:
        served.stop()


class Stream(threading.Thread):
    """A slow TGI stream through the gateway, read event by event in a thread."""

    def __init__(self, url: str, tokens: int, delay_ms: int) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.body = {"inputs": f"<<tokens:{tokens}>><<delay:{delay_ms}>>", "parameters": {"max_new_tokens": 64}}
        self.status = 0
        self.events: list[dict[str, Any]] = []
        self.error: BaseException | None = None
        self.started = threading.Event()
        self.start()
        assert self.started.wait(10), "the stream did not start"

    def run(self) -> None:
        parts = urlsplit(self.url)
        conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=30)
        try:
            headers = {**AUTH, "Content-Type": "application/json"}
            conn.request("POST", "/generate_stream", body=orjson.dumps(self.body), headers=headers)
            resp = conn.getresponse()
            self.status = resp.status
            for line in iter(resp.readline, b""):
                if line.startswith(b"data:"):
                    self.events.append(orjson.loads(line[5:]))
                    self.started.set()
        except BaseException as exc:
            self.error = exc
        finally:
            self.started.set()
            conn.close()

    def complete(self, tokens: int) -> bool:
        self.join(30)
        return (
            self.error is None
            and self.status == 200
            and len(self.events) == tokens + 1  # the filler tokens, then EOS with the generated text
            and self.events[-1].get("generated_text") is not None
        )


def refused(url: str) -> bool:
    parts = urlsplit(url)
    try:
        socket.create_connection((parts.hostname, parts.port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


def test_requests_spread_over_the_workers_and_a_dead_one_is_replaced(serve: Callable[..., Served], tgi: str) -> None:
    served = serve(config(tgi), "--workers", "2")
    pids = {served.pid() for _ in range(40)}  # a new connection each: the kernel spreads them
    assert len(pids) == 2 and served.proc.pid not in pids
    assert re.search(rf"INFO \[{min(pids)}\] mooltiproxy", served.output())  # workers log with their PID
    victim = min(pids)
    os.kill(victim, signal.SIGKILL)
    # The connections the kernel had queued on the killed worker's socket are reset; then the other one serves all.
    wait_for(lambda: served.pid_or_none() not in (*pids, None), "a new worker")
    time.sleep(0.5)
    replies = [request("GET", served.url + "/-/health") for _ in range(30)]
    assert [r.status for r in replies] == [200] * 30
    now = {r.json()["pid"] for r in replies}
    assert victim not in now and len(now) == 2
    assert f"worker {victim} exited (killed by SIGKILL): starting another in 0.5 s" in served.output()


def test_sigterm_lets_a_stream_finish_refuses_new_connections_and_exits_0(
    serve: Callable[..., Served], tgi: str
) -> None:
    served = serve(config(tgi), "--workers", "2")
    pid_file = served.folder / "mooltiproxy.pid"
    assert int(pid_file.read_text()) == served.proc.pid
    metrics_dir = wait_for(lambda: re.search(r"mooltiproxy-metrics-\w+", " ".join(_environs(served))), "metrics")
    stream = Stream(served.url, tokens=12, delay_ms=250)  # three seconds
    served.signal(signal.SIGTERM)
    wait_for(lambda: refused(served.url), "the port to refuse connections", timeout=2)
    assert stream.is_alive()  # refused while the stream still runs
    assert stream.complete(12)
    assert served.proc.wait(10) == 0
    assert not pid_file.exists()
    assert not (Path("/tmp") / metrics_dir.group(0)).exists()


def _environs(served: Served) -> list[str]:
    """The metrics folder the workers were given, read from their environment."""
    found = []
    for pid in os.listdir("/proc"):
        try:
            if pid.isdigit() and int(Path(f"/proc/{pid}/stat").read_text().split()[3]) == served.proc.pid:
                found.append(Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace"))
        except OSError:
            continue
    return found


def test_one_process_drains_too_and_the_grace_bounds_the_wait(serve: Callable[..., Served], tgi: str) -> None:
    served = serve(config(tgi, grace_seconds=1))
    assert served.pid() == served.proc.pid
    stream = Stream(served.url, tokens=40, delay_ms=250)  # ten seconds: longer than the grace
    began = time.monotonic()
    served.signal(signal.SIGTERM)
    wait_for(lambda: refused(served.url), "the port to refuse connections", timeout=2)
    assert served.proc.wait(10) == 0
    assert time.monotonic() - began < 5
    stream.join(5)
    assert not stream.complete(40)  # cut at the end of the grace


def test_sighup_switches_to_a_valid_config_without_dropping_a_stream(serve: Callable[..., Served], tgi: str) -> None:
    served = serve(config(tgi), "--workers", "2")
    generate = {"inputs": "<<say:hi>>", "parameters": {}}
    assert request("POST", served.url + "/generate", headers=AUTH, body=generate).status == 404
    stream = Stream(served.url, tokens=10, delay_ms=250)
    served.write(config(tgi, {"/generate_stream": None, "/generate": None}))
    served.signal(signal.SIGHUP)

    def every_worker_reloaded() -> bool:
        replies = [request("POST", served.url + "/generate", headers=AUTH, body=generate) for _ in range(10)]
        return all(r.status == 200 for r in replies)

    wait_for(every_worker_reloaded, "the new mapping on every worker")
    assert stream.is_alive()
    assert stream.complete(10)
    assert served.output().count("reloaded") == 2

    served.write(config(tgi, {"/generate_stream": None, "/generate": {"in": "noSuchMapper"}}))
    served.signal(signal.SIGHUP)
    wait_for(lambda: "reload refused" in served.output(), "the refusal")
    assert "targets.tgi.mapping./generate.in: unknown mapper 'noSuchMapper'" in served.output()
    time.sleep(0.3)
    assert request("POST", served.url + "/generate", headers=AUTH, body=generate).status == 200  # the old one stays
    assert served.output().count("reloaded") == 2


def reload_command(served: Served, *args: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "MOOLTIPROXY_KEY": KEY}
    return subprocess.run(
        [sys.executable, "-m", "mooltiproxy", "reload", "--config", str(served.config), *args],
        cwd=served.folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_reload_command_keeps_bans_and_refuses_an_invalid_config(serve: Callable[..., Served], tgi: str) -> None:
    served = serve({**config(tgi), "cerbere": {"max_tries": 2}})
    bad = {"Authorization": "Bearer wrong-key-123"}
    for _ in range(2):
        assert request("GET", served.url + "/generate", headers=bad).status == 401
    assert request("POST", served.url + "/generate", headers=AUTH, body={}).status == 403  # banned
    generate = {"inputs": "<<say:hi>>", "parameters": {}}

    served.write({**config(tgi, {"/generate": None}), "cerbere": {"max_tries": 2}})
    done = reload_command(served)
    assert done.returncode == 0, done.stderr
    assert f"sent SIGHUP to mooltiproxy (pid {served.proc.pid})" in done.stdout
    wait_for(lambda: "reloaded" in served.output(), "the reload")
    assert request("POST", served.url + "/generate", headers=AUTH, body=generate).status == 403  # still banned

    served.write({**config(tgi, {"/generate": None}), "cerbere": {"max_tries": 0}})
    refused_reload = reload_command(served)
    assert refused_reload.returncode == 3
    assert "cerbere.max_tries: Input should be greater than or equal to 1" in refused_reload.stderr
    assert served.output().count("SIGHUP") == 1  # the gateway was not signalled

    served.write(config(tgi))
    missing = reload_command(served, "--pid-file", str(served.folder / "nothing.pid"))
    assert missing.returncode == 1 and "cannot read the PID file" in missing.stderr


def test_workers_grace_and_pid_file_settings(tmp_path: Path) -> None:
    from mooltiproxy.config import build_settings
    from mooltiproxy.errors import ConfigError

    def settings(**system: Any) -> Any:
        raw = {**config("http://127.0.0.1:9"), "system": system}
        return build_settings(raw, {"MOOLTIPROXY_KEY": KEY}, base_dir=tmp_path, source="test")

    default = settings()
    assert (default.workers, default.grace_seconds, default.pid_file) == (1, 30, str(tmp_path / "mooltiproxy.pid"))
    assert settings(workers="auto").workers == os.cpu_count()
    assert settings(pid_file="run/gw.pid", grace_seconds=2.5).pid_file == str(tmp_path / "run/gw.pid")
    with pytest.raises(ConfigError) as refused_config:
        settings(workers=0, grace_seconds=-1)
    assert "system.workers: expected a number of processes (1 or more) or 'auto', not 0" in str(refused_config.value)
    assert "system.grace_seconds:" in str(refused_config.value)


def test_a_port_in_use_stops_the_workers_before_they_start(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        path = tmp_path / "config.yaml"
        path.write_bytes(orjson.dumps(config("http://127.0.0.1:9")))
        env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "MOOLTIPROXY_KEY": KEY}
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "mooltiproxy",
                "serve",
                "--config",
                str(path),
                "--port",
                str(port),
                "--workers",
                "2",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert done.returncode == 3
    assert "mooltiproxy: cannot listen:" in done.stderr


def test_two_workers_share_one_key_limit_through_redis(
    serve: Callable[..., Served], tgi: str, tmp_path: Path, redis_server: RedisServer
) -> None:
    key = KeyStore(tmp_path / "keys.db").add("team", rpm=5)
    settings = config(tgi, {"/info": {"methods": ["GET"]}}, redis=redis_server.url, keys_db="keys.db")
    served = serve(settings, "--workers", "2")
    assert len({served.pid() for _ in range(40)}) == 2  # both workers take connections
    fresh_window()
    codes = [request("GET", served.url + "/info", headers={"Authorization": f"Bearer {key}"}).status for _ in range(12)]
    assert codes.count(200) == 5 and codes.count(429) == 7  # the sum over the workers, not 5 each
