"""HTTPS served for real (a client verifies a certificate), the access log, and debug logs without secrets."""

from __future__ import annotations

import logging
import ssl
from pathlib import Path
from typing import Any

import pytest
import trustme

from .conftest import KEY, passthrough_config
from .http import request


def test_https_with_a_verified_certificate(gateway: Any, echo_upstream: str, tmp_path: Path) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    (tmp_path / "certificates").mkdir()
    cert.private_key_pem.write_to_path(str(tmp_path / "certificates" / "key.pem"))
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "certificates" / "cert.pem"))
    config = passthrough_config(echo_upstream)
    config["system"] = {"ssl": True}
    gw = gateway(config, base_dir=tmp_path)
    assert gw.url.startswith("https://")
    trusting = ssl.create_default_context()
    ca.configure_trust(trusting)
    reply = request("POST", gw.url + "/echo", headers={"Authorization": f"Bearer {KEY}"}, body={}, context=trusting)
    assert reply.status == 200 and reply.json()["path"] == "/echo"
    with pytest.raises(ssl.SSLCertVerificationError):
        request("GET", gw.url + "/echo", context=ssl.create_default_context())


def test_access_line_per_request(gateway: Any, echo_upstream: str, caplog: pytest.LogCaptureFixture) -> None:
    gw = gateway(passthrough_config(echo_upstream))
    with caplog.at_level(logging.INFO, logger="mooltiproxy.access"):
        request("POST", gw.url + "/echo", headers={"Authorization": f"Bearer {KEY}"}, body={})
        request("GET", gw.url + "/nowhere", headers={"Authorization": "Bearer wrong-key"})
    lines = [r.getMessage() for r in caplog.records if r.name == "mooltiproxy.access"]
    assert len(lines) == 2
    assert lines[0].startswith('127.0.0.1 "POST /echo" target=up status=200 upstream_ms=')
    assert "total_ms=" in lines[0]
    assert lines[1].startswith('127.0.0.1 "GET /nowhere" target=- status=401')
    assert "wrong-key" not in " ".join(lines)


def test_debug_logs_payloads_with_secrets_redacted(
    gateway: Any, echo_upstream: str, caplog: pytest.LogCaptureFixture
) -> None:
    config = passthrough_config(echo_upstream, {"/echo": {"in": "identity", "out": "identity"}}, key="target-secret-1")
    config["system"] = {"debug": True}
    gw = gateway(config)
    body = {"prompt": f"my key is {KEY} and target-secret-1", "api_key": "sk-live-123", "nested": {"password": "pw"}}
    with caplog.at_level(logging.DEBUG, logger="mooltiproxy.debug"):
        reply = request("POST", gw.url + "/echo", headers={"Authorization": f"Bearer {KEY}"}, body=body)
    assert reply.status == 200
    messages = [r.getMessage() for r in caplog.records if r.name == "mooltiproxy.debug"]
    text = "\n".join(messages)
    assert "request before mapping" in text and "answer after mapping" in text
    for secret in (KEY, "target-secret-1"):  # known secrets, wherever they appear
        assert secret not in text
    requests_logged = [m for m in messages if m.startswith("request")]
    assert len(requests_logged) == 2
    for message in requests_logged:  # credential-like fields, by name
        assert "sk-live-123" not in message and '"pw"' not in message
        assert '"api_key":"***"' in message
