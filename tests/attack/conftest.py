"""The attack suite's upstream: a real local server that records every request it receives."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web

from ..conftest import BackgroundLoop, serve_app


@dataclass
class Seen:
    method: str
    path: str
    raw_headers: list[tuple[bytes, bytes]]
    body: bytes


@dataclass
class Recorder:
    """Answers every request 200 ``{"ok": true}`` and keeps what it received, in order."""

    url: str = ""
    seen: list[Seen] = field(default_factory=list)

    def paths(self) -> list[str]:
        return [s.path for s in self.seen]

    def header(self, index: int, name: bytes) -> list[bytes]:
        return [v for k, v in self.seen[index].raw_headers if k.lower() == name.lower()]

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.seen.append(Seen(request.method, request.raw_path, list(request.raw_headers), body))
        return web.json_response({"ok": True, "path": request.raw_path})


@pytest.fixture
def recorder(bg: BackgroundLoop) -> Iterator[Recorder]:
    rec = Recorder()
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_route("*", "/{tail:.*}", rec.handle)
    runner, rec.url = bg.run(serve_app(app))
    yield rec
    bg.run(runner.cleanup())


def config(url: str, **system: Any) -> dict[str, Any]:
    """A pass-through target exposing ``/echo`` as itself and ``/public`` as the upstream's ``/inner``."""
    return {
        "system": dict(system),
        "targets": {"default": "up", "up": {"url": url, "mapping": {"/echo": None, "/public": "/inner"}}},
    }
