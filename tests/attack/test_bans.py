"""Ban evasion: a banned or blacklisted client cannot get back in by changing what it says about itself."""

from __future__ import annotations

from typing import Any

import pytest

from ..conftest import KEY
from .conftest import Recorder, config
from .wire import get, one_answer


def with_cerbere(url: str, trusted: list[str] | None = None, **cerbere: Any) -> dict[str, Any]:
    cfg = config(url, trusted_proxies=trusted or [])
    cfg["cerbere"] = {"max_tries": 2, **cerbere}
    return cfg


def fail_twice(url: str, *extra: str) -> None:
    for _ in range(2):
        assert one_answer(url, get("/echo", "sk-wrong", *extra)).status == 401


def test_forwarded_for_from_an_untrusted_peer_does_not_dodge_a_ban(gateway: Any, recorder: Recorder) -> None:
    gw = gateway(with_cerbere(recorder.url))
    for i in range(2):
        assert one_answer(gw.url, get("/echo", "sk-wrong", f"X-Forwarded-For: 198.51.100.{i}")).status == 401
    for header in (
        "X-Forwarded-For: 203.0.113.9",
        "x-forwarded-for: 203.0.113.10",
        "X-Real-IP: 203.0.113.11",
        "Forwarded: for=203.0.113.12",
    ):
        answer = one_answer(gw.url, get("/echo", KEY, header))
        assert (answer.status, answer.error()["code"]) == (403, "banned"), header
    assert recorder.seen == []


def test_forwarded_for_from_an_untrusted_peer_does_not_claim_a_whitelisted_address(
    gateway: Any, recorder: Recorder
) -> None:
    gw = gateway(with_cerbere(recorder.url, whitelist=["192.0.2.1"]))
    fail_twice(gw.url, "X-Forwarded-For: 192.0.2.1")
    assert one_answer(gw.url, get("/echo", KEY, "X-Forwarded-For: 192.0.2.1")).status == 403


SPELLINGS = [
    "1.2.3.4",
    "::ffff:1.2.3.4",
    "[::ffff:1.2.3.4]:443",
    "1.2.3.4:8080",
    " 1.2.3.4 ",
    "::FFFF:1.2.3.4",
    "::ffff:102:304",
]


@pytest.mark.parametrize("spelling", SPELLINGS)
def test_every_spelling_of_a_blacklisted_address_is_refused(gateway: Any, recorder: Recorder, spelling: str) -> None:
    gw = gateway(with_cerbere(recorder.url, ["127.0.0.1"], blacklist=["1.2.3.4"]))
    answer = one_answer(gw.url, get("/echo", KEY, f"X-Forwarded-For: {spelling}"))
    assert (answer.status, answer.error()["code"]) == (403, "blacklisted")
    assert one_answer(gw.url, get("/echo", KEY, "X-Forwarded-For: 1.2.3.5")).status == 200


@pytest.mark.parametrize("spelling", SPELLINGS[1:])
def test_a_ban_holds_for_every_spelling_of_the_address(gateway: Any, recorder: Recorder, spelling: str) -> None:
    gw = gateway(with_cerbere(recorder.url, ["127.0.0.1"]))
    fail_twice(gw.url, "X-Forwarded-For: 1.2.3.4")
    answer = one_answer(gw.url, get("/echo", KEY, f"X-Forwarded-For: {spelling}"))
    assert (answer.status, answer.error()["code"]) == (403, "banned")


def test_a_prefix_length_bans_the_whole_ipv6_network(gateway: Any, recorder: Recorder) -> None:
    gw = gateway(with_cerbere(recorder.url, ["127.0.0.1"], ban_ipv6_prefix=64))
    one = one_answer(gw.url, get("/echo", "sk-wrong", "X-Forwarded-For: 2001:db8:0:7::1")).status
    two = one_answer(gw.url, get("/echo", "sk-wrong", "X-Forwarded-For: 2001:db8:0:7:ffff::2")).status
    assert (one, two) == (401, 401)
    for address in ("2001:db8:0:7::3", "2001:db8:0:7:abcd:ef01:2345:6789"):
        answer = one_answer(gw.url, get("/echo", KEY, f"X-Forwarded-For: {address}"))
        assert (answer.status, answer.error()["code"]) == (403, "banned")
    assert one_answer(gw.url, get("/echo", KEY, "X-Forwarded-For: 2001:db8:0:8::1")).status == 200  # the next /64


def test_without_a_prefix_length_each_ipv6_address_is_its_own(gateway: Any, recorder: Recorder) -> None:
    gw = gateway(with_cerbere(recorder.url, ["127.0.0.1"]))
    fail_twice(gw.url, "X-Forwarded-For: 2001:db8:0:7::1")
    assert one_answer(gw.url, get("/echo", KEY, "X-Forwarded-For: 2001:db8:0:7::1")).status == 403
    assert one_answer(gw.url, get("/echo", KEY, "X-Forwarded-For: 2001:db8:0:7::2")).status == 200


def test_a_client_behind_a_trusted_proxy_cannot_hide_behind_a_spoofed_first_hop(
    gateway: Any, recorder: Recorder
) -> None:
    gw = gateway(with_cerbere(recorder.url, ["127.0.0.1", "10.0.0.0/8"]))
    fail_twice(gw.url, "X-Forwarded-For: 6.6.6.6, 10.1.1.1")
    # the client prepends an address of its choice: the nearest untrusted hop is still its own
    answer = one_answer(gw.url, get("/echo", KEY, "X-Forwarded-For: 9.9.9.9, 6.6.6.6, 10.1.1.1"))
    assert (answer.status, answer.error()["code"]) == (403, "banned")


def test_two_authorization_lines_are_judged_by_the_first_and_neither_is_forwarded(
    gateway: Any, recorder: Recorder
) -> None:
    gw = gateway(with_cerbere(recorder.url))
    wrong_first = get("/echo", "sk-wrong", f"Authorization: Bearer {KEY}")
    assert one_answer(gw.url, wrong_first).status == 401
    right_first = b"GET /echo HTTP/1.1\r\nHost: g\r\nAuthorization: Bearer " + KEY.encode()
    right_first += b"\r\nAuthorization: Bearer sk-other\r\nConnection: close\r\n\r\n"
    assert one_answer(gw.url, right_first).status == 200
    assert recorder.header(0, b"authorization") == []
