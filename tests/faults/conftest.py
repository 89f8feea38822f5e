"""The fault suite's fixtures: the faulty upstream, the gateway in front of it, and the leak check."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from typing import Any

import pytest

from ..conftest import BackgroundLoop
from .faulty import Faulty

FAULTS = [
    "ok", "generate", "slow", "reset", "reset-body", "hang", "hang-body", "garbage", "short", "long", "error",
    "stream-hang", "stream-close", "stream-error", "stream-slow", "stream-echo",
]  # fmt: skip
TIMEOUT = 0.5


def chat_entry(fault: str) -> dict[str, Any]:
    return {
        "path": f"/{fault}",
        "stream_path": f"/{fault}",
        "in": "chatReqOpenAItoTGI",
        "out": "chatAnsTGItoOpenAI",
        "template": "chatml",
    }


def fault_config(url: str, timeout: float = TIMEOUT, **system: Any) -> dict[str, Any]:
    """``/p/<fault>`` passes through to ``/<fault>``; ``/c/<fault>`` is an OpenAI chat route translated to it."""
    mapping: dict[str, Any] = {f"/p/{f}": f"/{f}" for f in FAULTS}
    mapping.update({f"/c/{f}": chat_entry(f) for f in FAULTS})
    return {
        "system": {"timeout": timeout, **system},
        "targets": {"default": "f", "f": {"url": url, "mapping": mapping, "retries": 0}},
    }


@pytest.fixture
def faulty(bg: BackgroundLoop) -> Iterator[Faulty]:
    server = Faulty()
    bg.run(server.start())
    yield server
    bg.run(server.stop())


async def _tasks() -> int:
    return len(asyncio.all_tasks()) - 1  # not this one


class Leaks:
    """What must come back to where it was once the gateway has dealt with every fault."""

    def __init__(self, bg: BackgroundLoop, faulty: Faulty) -> None:
        self.bg = bg
        self.faulty = faulty
        self.baseline = -1

    def start(self) -> None:
        """Call once the gateway is up: its tasks now are the ones it keeps."""
        self.baseline = self.bg.run(_tasks())

    def tasks(self) -> int:
        return self.bg.run(_tasks())

    def check(self, within: float = 3.0) -> None:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if self.tasks() <= self.baseline and self.faulty.dirty == 0:
                return
            time.sleep(0.05)
        assert self.tasks() <= self.baseline, f"{self.tasks()} tasks, {self.baseline} before"
        assert self.faulty.dirty == 0, f"{self.faulty.dirty} broken upstream connection(s) still open"


@pytest.fixture
def leaks(bg: BackgroundLoop, faulty: Faulty, caplog: pytest.LogCaptureFixture) -> Iterator[Leaks]:
    """Checks, after the test, that no task and no broken upstream connection is left, and no traceback logged."""
    caplog.set_level(logging.INFO)
    found = Leaks(bg, faulty)
    yield found
    if found.baseline >= 0:
        found.check()
    tracebacks = [r.getMessage() for r in caplog.records if r.exc_info and r.name.startswith("mooltiproxy")]
    assert tracebacks == [], tracebacks
