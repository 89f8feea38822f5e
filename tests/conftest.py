"""Shared fixtures: a background event loop, real upstreams on loopback, and the real gateway in front of them."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
from aiohttp import web

from mooltiproxy.config import Settings, build_settings
from mooltiproxy.runner import start_gateway

from .openai_upstream import OpenAIUpstream
from .upstreams import echo_app

T = TypeVar("T")
KEY = "test-master-key-0123456789"


class BackgroundLoop:
    """An event loop in a thread, so sync clients (openai, requests-based) can talk to servers running in it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@pytest.fixture(scope="session")
def bg() -> Iterator[BackgroundLoop]:
    loop = BackgroundLoop()
    yield loop
    loop.close()


async def serve_app(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return runner, f"http://127.0.0.1:{port}"


@pytest.fixture(scope="session")
def echo_upstream(bg: BackgroundLoop) -> Iterator[str]:
    """A real local HTTP server that tells what it received (see tests/upstreams.py)."""
    runner, url = bg.run(serve_app(echo_app()))
    yield url
    bg.run(runner.cleanup())


@pytest.fixture(scope="session")
def tgi(bg: BackgroundLoop) -> Iterator[str]:
    """The TGI simulator, with its default settings."""
    from mooltiproxy.tgisim import SimSettings, start_simulator

    runner, url = bg.run(start_simulator(SimSettings()))
    yield url
    bg.run(runner.cleanup())


@dataclass
class Gateway:
    url: str
    key: str
    settings: Settings

    def headers(self, **extra: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}", **extra}


@pytest.fixture
def gateway(bg: BackgroundLoop, tmp_path: Path) -> Iterator[Callable[..., Gateway]]:
    """``gateway(config_dict, env=None)`` starts the real gateway on a free loopback port."""
    runners: list[web.AppRunner] = []

    def start(config: dict[str, Any], env: dict[str, str] | None = None, base_dir: Path | None = None) -> Gateway:
        env = {"MOOLTIPROXY_KEY": KEY, **(env or {})}
        config.setdefault("system", {})
        settings = build_settings(config, env, base_dir=base_dir or tmp_path, source="test")
        runner, url = bg.run(start_gateway(settings, "127.0.0.1", 0))
        runners.append(runner)
        return Gateway(url, settings.master_key, settings)

    yield start
    for runner in runners:
        bg.run(runner.cleanup())


def passthrough_config(url: str, mapping: dict[str, Any] | None = None, **target: Any) -> dict[str, Any]:
    return {
        "targets": {"default": "up", "up": {"url": url, "mapping": mapping or {"/echo": None}, **target}},
    }


@pytest.fixture
def openai_upstreams(bg: BackgroundLoop) -> Iterator[Callable[..., OpenAIUpstream]]:
    """``openai_upstreams(name, models=[...], api_key=None)`` starts a new OpenAIUpstream on loopback.

    Every upstream started is stopped after the test."""
    started: list[OpenAIUpstream] = []

    def start(name: str, models: list[str] | None = None, api_key: str | None = None) -> OpenAIUpstream:
        upstream = OpenAIUpstream(name, models, api_key=api_key)
        bg.run(upstream.start())
        started.append(upstream)
        return upstream

    yield start
    for upstream in started:
        bg.run(upstream.stop())
