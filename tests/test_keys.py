"""Virtual keys through the real CLI and the real gateway: targets, models, expiry, revocation, limits, ban expiry
and unban, with the process's own memory as the state (the Redis state is in test_shared_state.py)."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import openai
import pytest
import yaml

from mooltiproxy.keys import REFRESH_SECONDS, KeyStore, parse_expiry

from .conftest import KEY
from .http import request

CHAT = {"path": "/generate", "in": "chatReqOpenAItoTGI", "out": "chatAnsTGItoOpenAI", "template": "chatml"}
HELLO = [{"role": "user", "content": "Hello there, how are you today?"}]


def cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "MOOLTIPROXY_KEY"}  # the key commands need no master key
    return subprocess.run(
        [sys.executable, "-m", "mooltiproxy", *map(str, args)], capture_output=True, text=True, env=env, timeout=60
    )


def write(tmp_path: Path, config: dict[str, Any]) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def fresh_window() -> None:
    """Wait for the next minute when this one is about to end, so a test's requests share one limit window."""
    left = 60 - time.time() % 60
    if left < 8:
        time.sleep(left + 0.1)


def client(url: str, key: str, **headers: str) -> openai.OpenAI:
    sdk = openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0, default_headers=headers or None)
    _clients.append(sdk)
    return sdk


def eventually(check: Any, seconds: float = REFRESH_SECONDS * 3) -> Any:
    """What ``check()`` returns once it is true and raises no API error, retried for ``seconds``."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            result = check()
        except openai.APIStatusError:
            if time.monotonic() > deadline:
                raise
        else:
            if result or time.monotonic() > deadline:
                return result
        time.sleep(0.2)


_clients: list[openai.OpenAI] = []


@pytest.fixture(autouse=True)
def _close_clients() -> Any:
    yield
    while _clients:
        _clients.pop().close()


def two_targets(a: Any, b: Any) -> dict[str, Any]:
    return {
        "system": {"keys_db": "keys.db"},
        "targets": {
            "default": "a",
            "a": {"api": "openai", "url": a.url, "models": ["m1", "m2"]},
            "b": {"api": "openai", "url": b.url, "models": ["m3"]},
        },
    }


def test_keys_add_list_revoke_through_the_cli(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        {"system": {"keys_db": "state/keys.db"}, "targets": {"default": "a", "a": {"url": "http://127.0.0.1:9"}}},
    )
    added = cli(
        "keys",
        "add",
        "alice",
        "--targets",
        "a",
        "--models",
        "m1,m2",
        "--rpm",
        "5",
        "--tpm",
        "900",
        "--expires",
        "30d",
        "--config",
        path,
    )
    assert added.returncode == 0, added.stderr
    key = added.stdout.strip()
    assert key.startswith("mp-") and len(key) == 35 and "shown this once" in added.stderr
    db = tmp_path / "state" / "keys.db"  # relative to the config file, created with its folder
    assert key.encode() not in db.read_bytes()  # only the hash is stored
    assert cli("keys", "add", "alice", "--config", path).returncode == 2  # one live key per name

    listed = cli("keys", "list", "--config", path)
    assert listed.returncode == 0 and key not in listed.stdout and key[:7] in listed.stdout
    row = listed.stdout.splitlines()[1].split()
    assert row[:6] == ["alice", key[:7] + "…", "a", "m1,m2", "5", "900"] and row[-1] == "active"

    assert cli("keys", "revoke", "alice", "--config", path).returncode == 0
    assert cli("keys", "revoke", "alice", "--config", path).returncode == 1  # nothing left to revoke
    shown = cli("keys", "list", "--json", "--config", path).stdout
    assert '"state":"revoked"' in shown and key not in shown
    assert cli("keys", "add", "alice", "--config", path).returncode == 0  # the name is free again
    assert cli("keys", "add", "bob", "--expires", "someday", "--config", path).returncode == 2


def test_expiry_durations_and_dates() -> None:
    assert parse_expiry("30d", now=1000.0) == 1000.0 + 30 * 86400
    assert parse_expiry("90m", now=0.0) == 5400.0
    assert parse_expiry("2030-01-01") == parse_expiry("2030-01-01T00:00:00Z") == 1893456000.0
    with pytest.raises(ValueError):
        parse_expiry("next week")


def test_a_key_is_allowed_only_its_targets_and_models(gateway: Any, openai_upstreams: Any, tmp_path: Path) -> None:
    a, b = openai_upstreams("a", ["m1", "m2"]), openai_upstreams("b", ["m3"])
    key = KeyStore(tmp_path / "keys.db").add("scoped", targets=["a"], models=["m1"])
    expired = KeyStore(tmp_path / "keys.db").add("expired", expires_at=time.time() - 1)
    gw = gateway(two_targets(a, b))  # keys are read at start-up
    scoped = client(gw.url, key)
    assert scoped.chat.completions.create(model="m1", messages=HELLO).choices[0].message.content
    with pytest.raises(openai.PermissionDeniedError) as denied:
        scoped.chat.completions.create(model="m2", messages=HELLO)
    error = denied.value.body
    assert isinstance(error, dict) and error["type"] == "permission_error" and error["code"] == "model_not_allowed"
    assert "'m2'" in error["message"] and "'scoped'" in error["message"]
    with pytest.raises(openai.PermissionDeniedError) as denied:
        scoped.chat.completions.create(model="m3", messages=HELLO)  # m3 routes to target b
    assert denied.value.body["code"] == "target_not_allowed" and "'b'" in denied.value.body["message"]  # type: ignore[index]
    with pytest.raises(openai.PermissionDeniedError):
        client(gw.url, key, target="b").chat.completions.create(model="m1", messages=HELLO)
    for _ in range(4):  # an issued key, even expired, is not a guess: no ban (max_tries is 3)
        with pytest.raises(openai.AuthenticationError):
            client(gw.url, expired).models.list()
    master = client(gw.url, KEY)  # the master key keeps working, with no restriction
    assert master.chat.completions.create(model="m3", messages=HELLO).choices


def test_expired_and_revoked_keys_are_refused_and_changes_reach_a_running_gateway(
    gateway: Any, openai_upstreams: Any, tmp_path: Path
) -> None:
    a, b = openai_upstreams("a", ["m1", "m2"]), openai_upstreams("b", ["m3"])
    config = two_targets(a, b)
    config["cerbere"] = {"whitelist": ["127.0.0.1"]}  # a key not read yet is an incorrect key: no ban meanwhile
    path = write(tmp_path, config)
    store = KeyStore(tmp_path / "keys.db")
    old = store.add("old", expires_at=time.time() - 1)
    soon = store.add("soon", expires_at=time.time() + 2.5)
    gw = gateway(config)
    with pytest.raises(openai.AuthenticationError) as refused:
        client(gw.url, old).models.list()
    assert "'old' has expired" in refused.value.message
    assert client(gw.url, soon).models.list().data
    later = cli("keys", "add", "later", "--config", path).stdout.strip()  # added while the gateway runs
    sdk = client(gw.url, later)
    assert eventually(lambda: sdk.chat.completions.create(model="m1", messages=HELLO)).choices
    assert cli("keys", "revoke", "later", "--config", path).returncode == 0

    def refused(key: str, reason: str) -> bool:
        try:
            client(gw.url, key).models.list()
        except openai.AuthenticationError as exc:
            return reason in exc.message
        return False

    assert eventually(lambda: refused(later, "'later' was revoked"))
    assert eventually(lambda: refused(soon, "'soon' has expired"))


def test_rpm_limit_answers_429_with_retry_after(gateway: Any, openai_upstreams: Any, tmp_path: Path) -> None:
    a, b = openai_upstreams("a", ["m1", "m2"]), openai_upstreams("b", ["m3"])
    key = KeyStore(tmp_path / "keys.db").add("two-a-minute", rpm=2)
    other = KeyStore(tmp_path / "keys.db").add("other", rpm=2)
    gw = gateway(two_targets(a, b))
    fresh_window()
    limited = client(gw.url, key)
    for _ in range(2):
        limited.chat.completions.create(model="m1", messages=HELLO)
    with pytest.raises(openai.RateLimitError) as over:
        limited.chat.completions.create(model="m1", messages=HELLO)
    assert over.value.status_code == 429
    wait = int(over.value.response.headers["Retry-After"])
    assert 1 <= wait <= 60 and abs(wait - (60 - time.time() % 60)) < 2
    assert over.value.body == {
        "message": over.value.body["message"],  # type: ignore[index]
        "type": "requests",
        "param": None,
        "code": "rate_limit_exceeded",
    }
    assert "(RPM): Limit 2, Used 2" in over.value.message
    assert client(gw.url, other).chat.completions.create(model="m1", messages=HELLO).choices  # per key
    assert client(gw.url, KEY).chat.completions.create(model="m1", messages=HELLO).choices  # no limit


def test_tpm_limit_counts_the_usage_of_answers(gateway: Any, tgi: str, openai_upstreams: Any, tmp_path: Path) -> None:
    up = openai_upstreams("up", ["m1"])
    config = {
        "system": {"keys_db": "keys.db"},
        "targets": {
            "default": "tgi",
            "tgi": {"url": tgi, "mapping": {"/chat/completions": CHAT}},
            "oa": {"api": "openai", "url": up.url},
        },
    }
    store = KeyStore(tmp_path / "keys.db")
    cases = (("mapped", "tgi", False), ("streamed", "tgi", True), ("passed", "oa", False))
    keys = {name: store.add(name, tpm=10) for name, _, _ in cases}
    gw = gateway(config)
    fresh_window()
    for name, target, stream in cases:
        key = keys[name]
        sdk = client(gw.url, key, target=target)
        answer = sdk.chat.completions.create(model="m1", messages=HELLO, max_tokens=8, stream=stream)
        if stream:
            list(answer)  # the tokens are counted when the stream ends
        else:
            assert answer.usage.total_tokens > 10  # the request that crosses the limit is served
        with pytest.raises(openai.RateLimitError) as over:
            sdk.chat.completions.create(model="m1", messages=HELLO, max_tokens=8)
        assert over.value.body["type"] == "tokens" and over.value.body["code"] == "rate_limit_exceeded"  # type: ignore[index]
        assert "(TPM): Limit 10" in over.value.message and int(over.value.response.headers["Retry-After"]) >= 1


def test_without_redis_limits_are_per_process(gateway: Any, openai_upstreams: Any, tmp_path: Path) -> None:
    a, b = openai_upstreams("a", ["m1", "m2"]), openai_upstreams("b", ["m3"])
    key = KeyStore(tmp_path / "keys.db").add("each", rpm=2)
    first, second = gateway(two_targets(a, b)), gateway(two_targets(a, b))
    fresh_window()
    for gw in (first, second):
        sdk = client(gw.url, key)
        sdk.models.list()
        sdk.models.list()
        with pytest.raises(openai.RateLimitError):
            sdk.models.list()


def ban_config(echo_upstream: str, **cerbere: Any) -> dict[str, Any]:
    return {
        "system": {"keys_db": "keys.db"},
        "cerbere": {"max_tries": 1, **cerbere},
        "targets": {"default": "up", "up": {"url": echo_upstream, "mapping": {"/echo": None}}},
    }


def status(url: str, key: str) -> int:
    return request("GET", url + "/echo", headers={"Authorization": f"Bearer {key}"}).status


def test_bans_expire_after_ban_seconds(gateway: Any, echo_upstream: str) -> None:
    gw = gateway(ban_config(echo_upstream, ban_seconds=1))
    assert status(gw.url, "wrong-key") == 401
    assert status(gw.url, KEY) == 403  # banned, even with the right key
    time.sleep(1.1)
    assert status(gw.url, KEY) == 200


def test_unban_reaches_a_running_gateway_through_the_keys_database(
    gateway: Any, echo_upstream: str, tmp_path: Path
) -> None:
    config = ban_config(echo_upstream)
    path = write(tmp_path, config)
    gw = gateway(config)
    assert status(gw.url, "wrong-key") == 401
    time.sleep(REFRESH_SECONDS + 0.5)
    assert status(gw.url, KEY) == 403  # for good: no ban_seconds
    lifted = cli("unban", "127.0.0.1", "--config", path)
    assert lifted.returncode == 0, lifted.stderr
    assert eventually(lambda: status(gw.url, KEY) == 200)

    no_state = write(tmp_path, {"targets": {"default": "up", "up": {"url": echo_upstream}}})
    refused = cli("unban", "127.0.0.1", "--config", no_state)
    assert refused.returncode == 2 and "restart" in refused.stderr
    assert cli("unban", "not-an-address", "--config", path).returncode == 2
    with sqlite3.connect(tmp_path / "keys.db") as db:
        assert db.execute("SELECT address FROM unbans").fetchall() == [("127.0.0.1",)]


def test_unban_of_an_ipv6_address_lifts_its_networks_ban_when_bans_count_per_network(
    gateway: Any, echo_upstream: str, tmp_path: Path
) -> None:
    config = ban_config(echo_upstream, ban_ipv6_prefix=64)
    config["system"]["trusted_proxies"] = ["127.0.0.1"]
    path = write(tmp_path, config)
    gw = gateway(config)

    def from_(address: str, key: str) -> int:
        headers = {"Authorization": f"Bearer {key}", "X-Forwarded-For": address}
        return request("GET", gw.url + "/echo", headers=headers).status

    assert from_("2001:db8:0:7::1", "wrong-key") == 401
    time.sleep(REFRESH_SECONDS + 0.5)
    assert from_("2001:db8:0:7::99", KEY) == 403  # the whole /64 is banned
    lifted = cli("unban", "2001:db8:0:7:abcd::1", "--config", path)  # any address of it
    assert lifted.returncode == 0, lifted.stderr
    assert eventually(lambda: from_("2001:db8:0:7::99", KEY) == 200)
    with sqlite3.connect(tmp_path / "keys.db") as db:
        assert db.execute("SELECT address FROM unbans").fetchall() == [("2001:db8:0:7::/64",)]


def test_config_mistakes_are_reported_with_their_path(tmp_path: Path) -> None:
    from mooltiproxy.config import build_settings
    from mooltiproxy.errors import ConfigError

    raw = {
        "system": {"redis": "localhost:6379", "redis_limits_on_failure": "maybe"},
        "cerbere": {"ban_seconds": 0},
        "targets": {"default": "a", "a": {"url": "http://127.0.0.1:9", "mapping": {"/x": None}}},
    }
    with pytest.raises(ConfigError) as bad:
        build_settings(raw, {"MOOLTIPROXY_KEY": KEY}, base_dir=tmp_path, source="test")
    wheres = {p.split(":")[0] for p in bad.value.problems}
    assert {"system.redis_limits_on_failure", "cerbere.ban_seconds"} <= wheres
    raw["system"] = {"redis": "localhost:6379", "keys_db": "db/keys.db"}
    raw["cerbere"] = {"ban_seconds": 30}
    with pytest.raises(ConfigError) as bad:
        build_settings(raw, {"MOOLTIPROXY_KEY": KEY}, base_dir=tmp_path, source="test")
    assert [p for p in bad.value.problems if p.startswith("system.redis:")]
    raw["system"] = {"redis": "redis://127.0.0.1:6379/0", "keys_db": "db/keys.db"}
    settings = build_settings(raw, {"MOOLTIPROXY_KEY": KEY}, base_dir=tmp_path, source="test")
    assert settings.keys_db == str(tmp_path / "db" / "keys.db") and settings.ban_seconds == 30
