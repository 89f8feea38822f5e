"""Targets served over HTTPS: the upstream client verifies their certificate against the system's trust store."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme
from aiohttp import web

from .conftest import KEY, BackgroundLoop, passthrough_config
from .http import request
from .upstreams import echo_app


@pytest.fixture
def tls_upstream(bg: BackgroundLoop, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """The echo upstream on HTTPS with a certificate from a fresh CA; yields its URL and the CA's PEM file."""
    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))

    async def start() -> tuple[web.AppRunner, str]:
        runner = web.AppRunner(echo_app(), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
        await site.start()
        return runner, f"https://127.0.0.1:{runner.addresses[0][1]}"

    runner, url = bg.run(start())
    yield url, ca_file
    bg.run(runner.cleanup())


def test_a_target_with_a_trusted_certificate_is_served(
    gateway: Any, tls_upstream: tuple[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, ca_file = tls_upstream
    monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))  # the system trust store, as OpenSSL reads it
    gw = gateway(passthrough_config(url))
    for _ in range(2):  # the second request goes out on the kept-alive TLS connection
        reply = request("POST", gw.url + "/echo", headers={"Authorization": f"Bearer {KEY}"}, body={"a": 1})
        assert reply.status == 200
        assert reply.json()["path"] == "/echo"


def test_a_target_with_an_untrusted_certificate_is_a_502(
    gateway: Any, tls_upstream: tuple[str, Path], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    url, _ = tls_upstream
    other = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other))
    monkeypatch.setenv("SSL_CERT_FILE", str(other))
    gw = gateway(passthrough_config(url, retries=0))
    reply = request("POST", gw.url + "/echo", headers={"Authorization": f"Bearer {KEY}"}, body={})
    assert reply.status == 502
    error = reply.json()["error"]
    assert error["message"].startswith("target 'up' is unreachable:")
    assert "certificate" in error["message"].lower()
