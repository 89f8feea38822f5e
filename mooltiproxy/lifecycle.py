"""One serving process's life: serve until SIGTERM or SIGINT, then drain; SIGHUP reloads the config file.

On SIGTERM (or SIGINT) the process stops accepting connections at once, gives the requests and streams in flight
``system.grace_seconds`` to finish (then cuts them), closes its upstream clients and exits. On SIGHUP it reads its
config file again (see ``live``). The process that owns the port, the only one or the supervisor of the workers,
writes its PID to ``system.pid_file``, which ``mooltiproxy reload`` reads, and removes it at exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path

from .config.model import Settings
from .live import reload
from .runner import start_gateway

__all__ = ["PidFile", "send_reload", "serve_process"]

log = logging.getLogger("mooltiproxy")

#: seconds between two looks at whether the supervisor of a worker is still there
PARENT_CHECK_SECONDS = 1.0


class PidFile:
    """The PID file of a running gateway: written once it listens, removed at exit if it is still ours."""

    def __init__(self, path: str | None) -> None:
        self.path = Path(path) if path else None
        self.pid = os.getpid()

    def write(self) -> None:
        if self.path is None:
            return
        try:
            partial = self.path.with_name(f".{self.path.name}.{self.pid}")
            partial.write_text(f"{self.pid}\n", encoding="ascii")
            partial.replace(self.path)  # whole or absent: a reader never sees half a number
        except OSError as exc:
            log.warning(
                "cannot write the PID file %s (mooltiproxy reload will not find this gateway): %s", self.path, exc
            )
            self.path = None

    def remove(self) -> None:
        if self.path is None:
            return
        with contextlib.suppress(OSError, ValueError):
            if int(self.path.read_text(encoding="ascii")) == self.pid:  # another gateway may have taken it over
                self.path.unlink()


async def serve_process(
    settings: Settings,
    config: Path,
    host: str | None,
    port: int | None,
    announce: Callable[[str], None],
    *,
    worker: bool = False,
    ready_fd: int | None = None,
    pid_file: str | None = None,
) -> None:
    """Serve until SIGTERM or SIGINT, then drain and return; reload ``config`` on SIGHUP.

    ``worker``: one of the processes of ``serve --workers N`` (the port shared with ``SO_REUSEPORT``; stops when its
    supervisor is gone; says it is ready on ``ready_fd``)."""
    runner, url = await start_gateway(settings, host, port, reuse_port=worker)
    live = runner.live
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    tasks: set[asyncio.Future[object]] = set()

    def keep(task: asyncio.Future[object]) -> None:
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    def on_hangup() -> None:
        log.info("SIGHUP: reloading %s", config)
        keep(asyncio.ensure_future(reload(live, config)))

    # A second SIGTERM or SIGINT during the drain changes nothing: the supervisor sends one after the terminal's.
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, on_hangup)
    pids = PidFile(None if worker else pid_file)
    try:
        if worker:
            keep(asyncio.ensure_future(_watch_parent(os.getppid(), stop)))
            log.info("worker listening on %s", url)
        else:
            pids.write()
            announce(url)
        if ready_fd is not None:
            with contextlib.suppress(OSError):
                os.write(ready_fd, b"1")
                os.close(ready_fd)
        await stop.wait()
        log.info(
            "stopping: no new connections; %d request(s) in flight get %g s to finish",
            live.in_flight,
            settings.grace_seconds,
        )
    finally:
        pids.remove()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await runner.cleanup()  # stops accepting, waits for the requests in flight, closes the upstream clients
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            loop.remove_signal_handler(sig)


async def _watch_parent(parent: int, stop: asyncio.Event) -> None:
    """A worker whose supervisor has died (even by SIGKILL) stops too, rather than serve on unsupervised."""
    while os.getppid() == parent:
        await asyncio.sleep(PARENT_CHECK_SECONDS)
    log.warning("the supervising process %d is gone: stopping", parent)
    stop.set()


def send_reload(settings: Settings, pid_file: Path | None) -> int:
    """``mooltiproxy reload``: SIGHUP to the gateway of the PID file (the config was checked by the caller)."""
    path = pid_file or (Path(settings.pid_file) if settings.pid_file else None)
    if path is None:
        print("mooltiproxy: no PID file: pass --pid-file", file=sys.stderr)
        return 1
    try:
        pid = int(path.read_text(encoding="ascii").strip())
    except (OSError, ValueError) as exc:
        print(f"mooltiproxy: cannot read the PID file {path} (is the gateway running?): {exc}", file=sys.stderr)
        return 1
    if not _is_gateway(pid):
        print(f"mooltiproxy: process {pid} of {path} is not a running mooltiproxy", file=sys.stderr)
        return 1
    try:
        os.kill(pid, signal.SIGHUP)
    except OSError as exc:
        print(f"mooltiproxy: cannot signal process {pid}: {exc}", file=sys.stderr)
        return 1
    print(f"{settings.source}: OK; sent SIGHUP to mooltiproxy (pid {pid}), which reloads its config file")
    return 0


def _is_gateway(pid: int) -> bool:
    """Whether ``pid`` runs mooltiproxy: a stale PID file must not make us signal another program (SIGHUP ends
    most of them)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's: the signal itself will be refused and reported
    cmdline = Path(f"/proc/{pid}/cmdline")
    try:
        return b"mooltiproxy" in cmdline.read_bytes()
    except OSError:
        return True  # no /proc (macOS, BSD): the process exists, trust the file
