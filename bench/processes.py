"""Subprocesses of the benchmark: started pinned to CPUs, read from, and always stopped.

Every subprocess gets SIGTERM from the kernel if the benchmark itself dies, and ``Processes.close`` ends whatever
is still running (TERM, then KILL). ``guarded`` runs a whole benchmark so that Ctrl-C, SIGTERM and SIGHUP end it
through the ``finally`` blocks that stop every subprocess.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import selectors
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent


class BenchError(RuntimeError):
    """The benchmark cannot go on (a process did not start, a tool failed)."""


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


def guarded(prog: str, body: Callable[[], int]) -> int:
    """Run ``body`` (which stops its subprocesses in ``finally`` blocks) to an exit status: its own, 2 when the
    benchmark could not run, 130 when it was interrupted (Ctrl-C, SIGTERM, SIGHUP)."""
    with terminate_as_interrupt():
        try:
            return body()
        except BenchError as exc:
            print(f"{prog}: {exc}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print(f"{prog}: interrupted; every subprocess was stopped", file=sys.stderr)
            return 130
