"""1,000 streams at once through one gateway: each client gets its own answer, whole, and nothing is left over."""

from __future__ import annotations

import asyncio
import resource
from typing import Any

import aiohttp
import orjson

from ..conftest import KEY
from .conftest import Leaks, fault_config
from .faulty import Faulty

STREAMS = 1000


def enough_descriptors(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        resource.setrlimit(
            resource.RLIMIT_NOFILE, (needed if hard == resource.RLIM_INFINITY else min(needed, hard), hard)
        )


async def one(session: aiohttp.ClientSession, url: str, n: int, path: str) -> str:
    body = {"model": "m", "max_tokens": 5, "stream": True, "messages": [{"role": "user", "content": f"req-{n}"}]}
    async with session.post(url + path, data=orjson.dumps(body), headers={"Content-Type": "application/json"}) as resp:
        assert resp.status == 200, await resp.text()
        text = ""
        async for line in resp.content:
            if line.startswith(b"data: {"):
                event = orjson.loads(line[6:])
                if "error" in event:
                    return f"error {event['error']}"
                text += event["choices"][0]["delta"].get("content") or ""
        return text


async def all_at_once(url: str, path: str) -> list[str]:
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=120)
    headers = {"Authorization": f"Bearer {KEY}"}
    async with aiohttp.ClientSession(connector=connector, timeout=timeout, headers=headers) as session:
        return await asyncio.gather(*(one(session, url, n, path) for n in range(STREAMS)))


def test_a_thousand_concurrent_streams_each_get_their_own_answer(gateway: Any, faulty: Faulty, leaks: Leaks) -> None:
    enough_descriptors(4 * STREAMS + 1024)  # the client's, the gateway's both ways, and the upstream's, in one process
    gw = gateway(fault_config(faulty.url, timeout=60, pool_size=STREAMS, max_connections=STREAMS + 100))
    leaks.start()
    texts = asyncio.run(all_at_once(gw.url, "/c/stream-echo"))
    wrong = [(n, t) for n, t in enumerate(texts) if t != f" req-{n}" * 5]
    assert wrong == [], wrong[:5]
    assert len(faulty.paths) == STREAMS
    assert faulty.accepted > 100  # they were served side by side, not one after another on a few connections
