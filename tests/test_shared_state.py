"""Bans and limits shared through a real redis-server by two real gateways; Redis killed and back mid-test."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import pytest

from mooltiproxy.keys import KeyStore

from .conftest import KEY
from .http import request
from .redisserver import RedisServer, redis_server
from .test_keys import cli, fresh_window, status, write

__all__ = ["redis_server"]  # the fixture, imported for pytest


def shared(echo_upstream: str, redis: RedisServer, **system: Any) -> dict[str, Any]:
    return {
        "system": {"redis": redis.url, "keys_db": "keys.db", **system},
        "cerbere": {"max_tries": 1},
        "targets": {"default": "up", "up": {"url": echo_upstream, "mapping": {"/echo": None}}},
    }


def test_limits_are_shared_by_every_gateway(
    gateway: Any, echo_upstream: str, redis_server: RedisServer, tmp_path: Path
) -> None:
    key = KeyStore(tmp_path / "keys.db").add("shared", rpm=3)
    first, second = gateway(shared(echo_upstream, redis_server)), gateway(shared(echo_upstream, redis_server))
    fresh_window()
    codes = [status(gw.url, key) for gw in (first, second, first, second, first)]
    assert codes == [200, 200, 200, 429, 429]  # the sum is enforced, not 3 per process


def test_a_ban_made_through_one_gateway_holds_on_another_and_unban_lifts_it(
    gateway: Any, echo_upstream: str, redis_server: RedisServer, tmp_path: Path
) -> None:
    config = shared(echo_upstream, redis_server)
    del config["system"]["keys_db"]
    path = write(tmp_path, config)
    first, second = gateway(config), gateway(config)
    assert status(first.url, "wrong-key") == 401
    assert status(second.url, KEY) == 403
    lifted = cli("unban", "127.0.0.1", "--config", path)
    assert lifted.returncode == 0 and "ban lifted in Redis" in lifted.stdout, lifted.stderr
    assert status(first.url, KEY) == 200 and status(second.url, KEY) == 200  # at once: Redis is the authority


def test_bans_in_redis_expire_after_ban_seconds(gateway: Any, echo_upstream: str, redis_server: RedisServer) -> None:
    config = shared(echo_upstream, redis_server)
    config["cerbere"]["ban_seconds"] = 1
    first, second = gateway(config), gateway(config)
    assert status(first.url, "wrong-key") == 401
    assert status(second.url, KEY) == 403
    time.sleep(1.1)
    assert status(second.url, KEY) == 200 and status(first.url, KEY) == 200


def test_redis_down_keeps_serving_with_limits_open_and_bans_enforced(
    gateway: Any, echo_upstream: str, redis_server: RedisServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    key = KeyStore(tmp_path / "keys.db").add("limited", rpm=2)
    config = shared(echo_upstream, redis_server, redis_limits_on_failure="open")
    gw, other = gateway(config), gateway(config)
    assert status(gw.url, "wrong-key") == 401  # banned, in Redis and in this process's memory
    redis_server.stop()
    with caplog.at_level(logging.ERROR, logger="mooltiproxy.state"):
        assert status(gw.url, KEY) == 403  # the ban made before the outage holds
        for _ in range(4):
            assert status(gw.url, key) == 403  # still banned, whatever the key
        assert status(other.url, "wrong-again") == 401  # a new ban, in memory while Redis is down
        assert status(other.url, KEY) == 403
    outages = [r for r in caplog.records if "unreachable" in r.getMessage()]
    assert len(outages) == 2  # once per process, not per request

    redis_server.start()  # same port
    time.sleep(1.1)  # Redis is tried again at most once a second
    fresh = gateway(config)
    assert status(other.url, KEY) == 403  # back: the ban made during the outage is written to Redis
    assert status(gw.url, KEY) == 403  # and the one the restarted Redis lost, written again
    assert status(fresh.url, KEY) == 403  # a third gateway sees it


def test_redis_down_limits_open_or_closed(
    gateway: Any, echo_upstream: str, redis_server: RedisServer, tmp_path: Path
) -> None:
    store = KeyStore(tmp_path / "keys.db")
    limited, free = store.add("limited", rpm=2), store.add("free")
    opened = gateway(shared(echo_upstream, redis_server, redis_limits_on_failure="open"))
    closed = gateway(shared(echo_upstream, redis_server, redis_limits_on_failure="closed"))
    fresh_window()
    assert [status(opened.url, limited) for _ in range(3)] == [200, 200, 429]
    redis_server.stop()
    assert [status(opened.url, limited) for _ in range(3)] == [200, 200, 200]  # open: served, not counted
    refused = request("GET", closed.url + "/echo", headers={"Authorization": f"Bearer {limited}"})
    assert refused.status == 503 and refused.json()["error"]["code"] == "rate_limits_unavailable"
    assert status(closed.url, free) == 200 and status(closed.url, KEY) == 200  # no limits: served
