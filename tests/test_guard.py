"""Cerbere: keys, bans, lists and client addresses — the Guard on plain data, then the real gateway."""

from __future__ import annotations

import asyncio
import ipaddress
from typing import Any

import openai
import pytest

from mooltiproxy.errors import Forbidden, Unauthorized
from mooltiproxy.guard import Guard

from .conftest import KEY, passthrough_config
from .http import request


def nets(*values: str) -> list[Any]:
    return [ipaddress.ip_network(v, strict=False) for v in values]


def check(guard: Guard, ip: str, authorization: str | None) -> None:
    asyncio.run(guard.check(ip, authorization))


def test_key_is_checked_and_scheme_is_case_insensitive() -> None:
    guard = Guard("s3cret-key", max_tries=10)
    check(guard, "10.0.0.1", "Bearer s3cret-key")
    check(guard, "10.0.0.1", "bearer   s3cret-key ")
    for wrong in ("Bearer s3cret-kez", "s3cret-key", "Basic s3cret-key", "", None):
        with pytest.raises(Unauthorized):
            check(guard, "10.0.0.2", wrong)


def test_ban_after_max_tries_unless_whitelisted() -> None:
    guard = Guard("k" * 10, max_tries=2, whitelist=nets("192.168.0.0/16", "2001:db8::/32"))
    for ip in ("10.0.0.1", "192.168.4.4", "2001:db8::7"):
        for _ in range(2):
            with pytest.raises(Unauthorized):
                check(guard, ip, "Bearer wrong")
    with pytest.raises(Forbidden):
        check(guard, "10.0.0.1", "Bearer " + "k" * 10)  # banned, even with the right key now
    check(guard, "192.168.4.4", "Bearer " + "k" * 10)
    check(guard, "2001:db8::7", "Bearer " + "k" * 10)


def test_success_resets_the_failure_count() -> None:
    guard = Guard("k" * 10, max_tries=2)
    with pytest.raises(Unauthorized):
        check(guard, "10.0.0.1", "Bearer wrong")
    check(guard, "10.0.0.1", "Bearer " + "k" * 10)
    with pytest.raises(Unauthorized):
        check(guard, "10.0.0.1", "Bearer wrong")
    check(guard, "10.0.0.1", "Bearer " + "k" * 10)


def test_blacklist_takes_cidr_ranges_v4_and_v6() -> None:
    guard = Guard("k" * 10, blacklist=nets("10.1.0.0/16", "fd00::/8"))
    for ip in ("10.1.2.3", "fd12::1"):
        with pytest.raises(Forbidden):
            check(guard, ip, "Bearer " + "k" * 10)
    check(guard, "10.2.0.1", "Bearer " + "k" * 10)


def test_forwarded_for_only_believed_from_trusted_proxies() -> None:
    guard = Guard("k" * 10, trusted_proxies=nets("127.0.0.1", "10.0.0.0/8"))
    assert guard.client_ip("203.0.113.9", "1.2.3.4") == "203.0.113.9"  # untrusted peer: header ignored
    assert guard.client_ip("127.0.0.1", "1.2.3.4") == "1.2.3.4"
    # the nearest untrusted hop wins: a client cannot prepend a fake address
    assert guard.client_ip("127.0.0.1", "6.6.6.6, 1.2.3.4, 10.0.0.5") == "1.2.3.4"
    assert guard.client_ip("127.0.0.1", None) == "127.0.0.1"


def test_openai_sdk_sees_authentication_error(gateway: Any, echo_upstream: str) -> None:
    gw = gateway(passthrough_config(echo_upstream, {"/models": None}))
    client = openai.OpenAI(base_url=gw.url, api_key="wrong-key", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as info:
        client.models.list()
    assert info.value.status_code == 401
    assert info.value.code == "invalid_api_key"


def test_ban_and_blacklist_through_the_gateway(gateway: Any, echo_upstream: str) -> None:
    config = passthrough_config(echo_upstream)
    config["cerbere"] = {"max_tries": 2}
    gw = gateway(config)
    assert request("GET", gw.url + "/echo").status == 401
    missing = request("GET", gw.url + "/echo").json()["error"]
    assert "Missing API key" in missing["message"] or "banned" in missing["message"]
    banned = request("GET", gw.url + "/echo", headers={"Authorization": f"Bearer {KEY}"})
    assert banned.status == 403 and banned.json()["error"]["code"] == "banned"
    assert request("GET", gw.url + "/-/health").status == 200  # health stays open for load balancers

    config = passthrough_config(echo_upstream)
    config["cerbere"] = {"blacklist": ["127.0.0.0/8"]}
    gw = gateway(config)
    blocked = request("GET", gw.url + "/echo", headers={"Authorization": f"Bearer {KEY}"})
    assert blocked.status == 403 and blocked.json()["error"]["code"] == "blacklisted"


def test_forwarded_header_cannot_dodge_a_ban_without_trusted_proxies(gateway: Any, echo_upstream: str) -> None:
    config = passthrough_config(echo_upstream)
    config["cerbere"] = {"max_tries": 1}
    gw = gateway(config)
    assert request("GET", gw.url + "/echo", headers={"X-Forwarded-For": "1.1.1.1"}).status == 401
    dodge = request("GET", gw.url + "/echo", headers={"X-Forwarded-For": "2.2.2.2", "Authorization": f"Bearer {KEY}"})
    assert dodge.status == 403


def test_trusted_proxy_bans_the_forwarded_client_not_the_proxy(gateway: Any, echo_upstream: str) -> None:
    config = passthrough_config(echo_upstream)
    config["cerbere"] = {"max_tries": 1}
    config["system"] = {"trusted_proxies": ["127.0.0.1"]}
    gw = gateway(config)
    assert request("GET", gw.url + "/echo", headers={"X-Forwarded-For": "1.1.1.1"}).status == 401
    other = request("GET", gw.url + "/echo", headers={"X-Forwarded-For": "2.2.2.2", "Authorization": f"Bearer {KEY}"})
    assert other.status == 200
    again = request("GET", gw.url + "/echo", headers={"X-Forwarded-For": "1.1.1.1", "Authorization": f"Bearer {KEY}"})
    assert again.status == 403


def test_ipv6_clients_are_banned_too(gateway: Any, bg: Any, echo_upstream: str) -> None:
    from mooltiproxy.runner import start_gateway

    config = passthrough_config(echo_upstream)
    config["cerbere"] = {"max_tries": 1}
    gw = gateway(config)
    runner, url = bg.run(start_gateway(gw.settings, "::1", 0))
    try:
        assert url.startswith("http://[::1]:")
        assert request("GET", url + "/echo").status == 401
        banned = request("GET", url + "/echo", headers={"Authorization": f"Bearer {KEY}"})
        assert banned.status == 403 and banned.json()["error"]["code"] == "banned"
    finally:
        bg.run(runner.cleanup())
