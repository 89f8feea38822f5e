"""``serve --workers N``: N worker processes serving one port, and the supervisor that keeps them running.

Each worker is the ``mooltiproxy serve`` command run again in a fresh interpreter (nothing is forked from a process
that runs an event loop), and listens on the port with ``SO_REUSEPORT``: the kernel spreads the new connections
over the workers' sockets, and a worker stops or is replaced without touching the others' sockets. The supervisor
binds the port first, without listening on it: a port in use is reported before any worker starts, port 0 is
chosen once for all, and the port stays reserved while a worker is replaced.

The supervisor replaces a worker that dies (after ``MIN_BACKOFF`` seconds, doubling up to ``MAX_BACKOFF`` while
it keeps dying within ``STABLE_SECONDS``), passes SIGHUP on to every worker once the config file is checked, and on
SIGTERM or SIGINT sends SIGTERM to every worker (each drains within ``system.grace_seconds``) and returns when all
have exited. The workers keep their metrics in a fresh folder (``PROMETHEUS_MULTIPROC_DIR``), removed at exit.
A replaced worker reads the config file as it is then.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from .config import load_config
from .config.model import Settings
from .errors import ConfigError
from .lifecycle import PidFile
from .metrics import MULTIPROC_ENV

__all__ = ["Supervisor", "reserve_port", "serve_workers"]

log = logging.getLogger("mooltiproxy")

MIN_BACKOFF = 0.5
MAX_BACKOFF = 10.0
#: a worker that ran this long before dying was not crash-looping: its replacement starts after MIN_BACKOFF
STABLE_SECONDS = 10.0
#: seconds beyond the grace a worker gets to exit on SIGTERM before it is killed
KILL_AFTER = 5.0


def reserve_port(host: str, port: int) -> socket.socket:
    """Bind ``host:port`` with ``SO_REUSEPORT`` without listening: the port is ours, and the workers' to share."""
    found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, kind, proto, _, address = found[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
    except BaseException:
        sock.close()
        raise
    return sock


def serve_workers(
    settings: Settings,
    config: Path,
    host: str,
    port: int,
    count: int,
    pid_file: str | None,
    announce: Callable[[str], None],
) -> int:
    """Run ``count`` workers on ``host:port`` until SIGTERM or SIGINT; the exit status."""
    try:
        reserved = reserve_port(host, port)
    except OSError as exc:
        print(f"mooltiproxy: cannot listen: {exc}", file=sys.stderr)
        return 3
    try:
        supervisor = Supervisor(settings, config, host, reserved.getsockname()[1], count, pid_file)
        return asyncio.run(supervisor.run(announce))
    finally:
        reserved.close()


class _Worker:
    __slots__ = ("backoff", "process", "ready", "slot", "started")

    def __init__(self, slot: int) -> None:
        self.slot = slot
        self.process: asyncio.subprocess.Process | None = None
        self.started = 0.0
        self.backoff = MIN_BACKOFF
        #: done once the worker listens (True), or exited before (False)
        self.ready: asyncio.Future[bool] | None = None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None


class Supervisor:
    """Runs ``count`` workers of ``serve --config config`` on ``host:port`` (see the module's docstring)."""

    def __init__(self, settings: Settings, config: Path, host: str, port: int, count: int, pid_file: str | None):
        self.settings = settings
        self.config = config.resolve()
        self.host = host
        self.port = port
        self.workers = [_Worker(i) for i in range(count)]
        self.pid_file = pid_file
        self.metrics_dir = ""
        self.stopping = asyncio.Event()
        self._tasks: set[asyncio.Future[object]] = set()

    def command(self, ready_fd: int) -> list[str]:
        return [
            sys.executable,
            "-m",
            "mooltiproxy",
            "serve",
            "--config",
            str(self.config),
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--workers",
            "1",
            "--worker",
            "--ready-fd",
            str(ready_fd),
        ]

    async def run(self, announce: Callable[[str], None]) -> int:
        """Serve until SIGTERM or SIGINT; the exit status (3 when the workers cannot start)."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.stopping.set)
        loop.add_signal_handler(signal.SIGHUP, lambda: self._keep(self.reload()))
        self.metrics_dir = tempfile.mkdtemp(prefix="mooltiproxy-metrics-")
        pids = PidFile(self.pid_file)
        try:
            ready = await asyncio.gather(*(self.spawn(w) for w in self.workers))
            started = await self._first(ready)
            if started is None:  # stopped while starting
                return 0
            if not started:
                log.error("the workers could not start: stopping")
                return 3
            pids.write()
            announce(self.url)
            log.info(
                "%d workers: %s", len(self.workers), ", ".join(str(w.process.pid) for w in self.workers if w.process)
            )
            for worker in self.workers:
                self._keep(self.supervise(worker))
            await self.stopping.wait()
            return 0
        finally:
            pids.remove()
            self.stopping.set()
            await self.stop_all()
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            shutil.rmtree(self.metrics_dir, ignore_errors=True)
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                loop.remove_signal_handler(sig)

    @property
    def url(self) -> str:
        shown = f"[{self.host}]" if ":" in self.host else self.host
        scheme = "https" if self.settings.ssl_certfile else "http"
        return f"{scheme}://{shown}:{self.port}"

    def _keep(self, coro: Coroutine[Any, Any, object]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _first(self, ready: list[asyncio.Future[bool]]) -> bool | None:
        """Whether every worker of the first start is ready; None when a signal to stop came first."""
        everyone = asyncio.ensure_future(asyncio.gather(*ready))
        stop = asyncio.ensure_future(self.stopping.wait())
        await asyncio.wait((everyone, stop), return_when=asyncio.FIRST_COMPLETED)
        stop.cancel()
        if not everyone.done():
            everyone.cancel()
            return None
        return all(everyone.result())

    async def spawn(self, worker: _Worker) -> asyncio.Future[bool]:
        """Start ``worker``; the future tells whether it became ready (False: it exited first)."""
        read, write = os.pipe()
        try:
            worker.process = await asyncio.create_subprocess_exec(
                *self.command(write), pass_fds=(write,), env={**os.environ, MULTIPROC_ENV: self.metrics_dir}
            )
        except BaseException:
            os.close(read)
            raise
        finally:
            os.close(write)
        loop = asyncio.get_running_loop()
        worker.started = loop.time()
        worker.ready = loop.run_in_executor(None, _wait_ready, read)
        return worker.ready

    async def supervise(self, worker: _Worker) -> None:
        """Replace ``worker`` each time it dies, until the supervisor stops."""
        loop = asyncio.get_running_loop()
        while not self.stopping.is_set():
            assert worker.process is not None
            status = await worker.process.wait()
            if self.stopping.is_set():
                return
            _forget_metrics(worker.process.pid, self.metrics_dir)
            if loop.time() - worker.started >= STABLE_SECONDS:
                worker.backoff = MIN_BACKOFF
            log.warning(
                "worker %d exited (%s): starting another in %g s", worker.process.pid, _status(status), worker.backoff
            )
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), worker.backoff)
                return
            worker.backoff = min(worker.backoff * 2, MAX_BACKOFF)
            await self.spawn(worker)
            log.info("worker %d started", worker.process.pid)

    async def reload(self) -> None:
        """SIGHUP: check the config file, then pass the signal on; an invalid config goes no further."""
        try:
            await asyncio.to_thread(load_config, self.config, os.environ)
        except ConfigError as exc:
            log.error("reload refused, the workers keep their configuration: invalid configuration\n%s", exc)
            return
        log.info("SIGHUP: the workers reload %s", self.config)
        self._signal(signal.SIGHUP, ready_only=True)  # one still starting reads the file as it is, and would die

    def _signal(self, sig: signal.Signals, ready_only: bool = False) -> None:
        for worker in self.workers:
            if ready_only and not (worker.ready is not None and worker.ready.done() and worker.ready.result()):
                continue
            if worker.running and worker.process is not None:
                with contextlib.suppress(ProcessLookupError):
                    worker.process.send_signal(sig)

    async def stop_all(self) -> None:
        """SIGTERM to every worker; those still there after the grace (and a margin) are killed."""
        self._signal(signal.SIGTERM)
        waits = [w.process.wait() for w in self.workers if w.running and w.process is not None]
        if not waits:
            return
        try:
            await asyncio.wait_for(asyncio.gather(*waits), self.settings.grace_seconds + KILL_AFTER)
        except asyncio.TimeoutError:
            log.error(
                "workers still running %g s after SIGTERM: killing them", self.settings.grace_seconds + KILL_AFTER
            )
            self._signal(signal.SIGKILL)
            await asyncio.gather(*(w.process.wait() for w in self.workers if w.process is not None))


def _wait_ready(fd: int) -> bool:
    """Block (in a thread) until the worker writes its ready byte, or exits without (end of file)."""
    try:
        return os.read(fd, 1) == b"1"
    finally:
        os.close(fd)


def _forget_metrics(pid: int, folder: str) -> None:
    """A dead worker's in-flight gauges no longer count (its counters stay in the sums)."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid, folder)  # type: ignore[no-untyped-call]


def _status(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
    return f"status {code}"
