"""Request ids (the client's kept when sane, else made; seen by the target, returned on every answer) and the
JSON log format, read line by line from the real ``mooltiproxy serve``."""

from __future__ import annotations

import io
import logging
import re
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from mooltiproxy.logs import JsonFormatter, current, start

from .conftest import Gateway, passthrough_config
from .http import Reply, request

ROOT = Path(__file__).resolve().parent.parent
MADE = re.compile(r"[0-9a-f]{32}")
ACCESS_FIELDS = {
    "time",
    "level",
    "request_id",
    "client",
    "method",
    "path",
    "target",
    "route",
    "model",
    "status",
    "upstream_ms",
    "total_ms",
    "tokens_in",
    "tokens_out",
}
CHAT = {"path": "/generate", "in": "chatReqOpenAItoTGI", "out": "chatAnsTGItoOpenAI", "template": "chatml"}


def sent(reply: Reply) -> str:
    """The request id the echo upstream received (header names are case-insensitive)."""
    headers = {name.lower(): value for name, value in reply.json()["headers"].items()}
    return str(headers["x-request-id"])


def test_the_clients_request_id_goes_to_the_target_and_comes_back(
    gateway: Callable[..., Gateway], echo_upstream: str
) -> None:
    gw = gateway(passthrough_config(echo_upstream))
    reply = request("POST", gw.url + "/echo", headers=gw.headers(**{"X-Request-Id": "trace-42/abc:1"}), body={})
    assert reply.status == 200
    assert reply.headers["X-Request-Id"] == "trace-42/abc:1"
    assert sent(reply) == "trace-42/abc:1"
    longest = "x" * 128
    assert sent(request("POST", gw.url + "/echo", headers=gw.headers(**{"X-Request-Id": longest}))) == longest


@pytest.mark.parametrize("given", [None, "", "has space", "x" * 129, "tab\there", "caf\u00e9"])
def test_a_missing_or_insane_request_id_is_replaced_by_a_made_one(
    gateway: Callable[..., Gateway], echo_upstream: str, given: str | None
) -> None:
    gw = gateway(passthrough_config(echo_upstream))
    headers = gw.headers() if given is None else gw.headers(**{"X-Request-Id": given})
    if given is not None and not given.isascii():  # http.client sends latin-1, as a browser would not
        headers["X-Request-Id"] = given.encode().decode("latin-1")
    reply = request("POST", gw.url + "/echo", headers=headers, body={})
    made = reply.headers["X-Request-Id"]
    assert MADE.fullmatch(made), made
    assert sent(reply) == made  # the target saw the same one, once
    assert [name.lower() for name in reply.json()["headers"]].count("x-request-id") == 1
    other = request("POST", gw.url + "/echo", headers=headers, body={}).headers["X-Request-Id"]
    assert other != made


def test_every_answer_carries_a_request_id(gateway: Callable[..., Gateway], echo_upstream: str, tgi: str) -> None:
    config = passthrough_config(echo_upstream, {"/echo": None, "/sse": None})
    config["targets"]["tgi"] = {"url": tgi, "mapping": {"/chat/completions": CHAT}}
    gw = gateway(config)
    answers = {
        "health": request("GET", gw.url + "/-/health"),
        "401": request("GET", gw.url + "/echo"),
        "404": request("GET", gw.url + "/nowhere", headers=gw.headers()),
        "preflight": request("OPTIONS", gw.url + "/echo", headers={"Origin": "http://x", "X-Request-Id": "pre"}),
        "relayed stream": request("GET", gw.url + "/sse", headers=gw.headers(**{"X-Request-Id": "sse-1"})),
        "translated stream": request(
            "POST",
            gw.url + "/chat/completions",
            headers=gw.headers(target="tgi", **{"X-Request-Id": "chat-1"}),
            body={"model": "m", "messages": [{"role": "user", "content": "<<say:hi>>"}], "stream": True},
        ),
        "metrics": request("GET", gw.url + "/-/metrics", headers=gw.headers(**{"X-Request-Id": "scrape"})),
    }
    for name, reply in answers.items():
        assert reply.headers.get("X-Request-Id"), name
    assert answers["relayed stream"].headers["X-Request-Id"] == "sse-1"
    assert answers["translated stream"].headers["X-Request-Id"] == "chat-1"
    assert b"data: [DONE]" in answers["translated stream"].body
    assert answers["preflight"].headers["X-Request-Id"] == "pre"
    assert answers["401"].json()["error"]["type"] == "invalid_request_error"


def test_the_text_access_line_has_the_request_id(
    gateway: Callable[..., Gateway], echo_upstream: str, caplog: pytest.LogCaptureFixture
) -> None:
    gw = gateway(passthrough_config(echo_upstream))
    with caplog.at_level(logging.INFO, logger="mooltiproxy.access"):
        request("POST", gw.url + "/echo", headers=gw.headers(**{"X-Request-Id": "line-7"}), body={})
        deadline = time.monotonic() + 5  # the line is written once the handler ends, after the client has its answer
        while not any(r.name == "mooltiproxy.access" for r in caplog.records) and time.monotonic() < deadline:
            time.sleep(0.01)
    lines = [r.getMessage() for r in caplog.records if r.name == "mooltiproxy.access"]
    assert len(lines) == 1
    assert re.fullmatch(
        r'127\.0\.0\.1 "POST /echo" target=up status=200 upstream_ms=\d+\.\d total_ms=\d+\.\d request_id=line-7',
        lines[0],
    ), lines[0]


def test_json_records_other_than_the_access_line() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("mooltiproxy.test_json")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("plain %s", "text")
        token = current.set(start("req-9"))
        try:
            raise ValueError("boom")
        except ValueError:
            logger.exception("failed on %s", "/x")
        finally:
            current.reset(token)
    finally:
        logger.removeHandler(handler)
        logger.propagate = True
    first, second = (orjson.loads(line) for line in stream.getvalue().splitlines())
    assert set(first) == {"time", "level", "logger", "message"}
    assert first["level"] == "warning" and first["message"] == "plain text" and first["logger"] == logger.name
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", first["time"])
    assert second["request_id"] == "req-9" and second["message"] == "failed on /x"
    assert "ValueError: boom" in second["error"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_serve_with_json_logs_writes_one_object_per_line(tgi: str, tmp_path: Path) -> None:
    port = free_port()
    file_key = "key-from-the-file-123"
    raw = {
        "system": {"port": port, "log_format": "json", "masterkey": file_key},  # the file's key: a warning
        "targets": {"default": "tgi", "tgi": {"url": tgi, "mapping": {"/chat/completions": CHAT}}},
    }
    config = tmp_path / "config.yaml"
    config.write_bytes(orjson.dumps(raw))  # JSON is YAML
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "mooltiproxy", "serve", "--config", str(config)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert "listening on" in proc.stdout.readline()
        url = f"http://127.0.0.1:{port}"
        chat = {"model": "llama", "messages": [{"role": "user", "content": "<<say:hello there>>"}]}
        headers = {"Authorization": f"Bearer {file_key}", "X-Request-Id": "json-1"}
        answer = request("POST", url + "/v1/chat/completions", headers=headers, body=chat).json()
        assert request("GET", url + "/v1/chat/completions", headers={"Authorization": "Bearer wrong-key"}).status == 401
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=10)
    records = [orjson.loads(line) for line in err.splitlines() if line.strip()]  # every line is one JSON object
    access = [r for r in records if "request_id" in r and "route" in r]
    others = [r for r in records if r not in access]
    assert len(access) == 2
    served, refused = access
    assert set(served) == ACCESS_FIELDS
    assert served["request_id"] == "json-1" and served["client"] == "127.0.0.1" and served["level"] == "info"
    assert (served["method"], served["path"], served["target"], served["route"]) == (
        "POST",
        "/v1/chat/completions",
        "tgi",
        "/chat/completions",
    )
    assert served["model"] == "llama" and served["status"] == 200
    assert served["tokens_in"] == answer["usage"]["prompt_tokens"]
    assert served["tokens_out"] == answer["usage"]["completion_tokens"]
    assert 0 < served["upstream_ms"] <= served["total_ms"]
    assert refused["status"] == 401 and refused["target"] == "-" and refused["route"] == "unrouted"
    assert MADE.fullmatch(refused["request_id"]) and refused["tokens_in"] is None
    warning = next(r for r in others if r["level"] == "warning")
    assert set(warning) == {"time", "level", "logger", "message"} and "system.masterkey" in warning["message"]
    assert file_key not in err and "wrong-key" not in err  # no secret in the logs


FIELDS = {
    "request_id": "abc123",
    "client": "127.0.0.1",
    "method": "POST",
    "path": "/v1/chat/completions",
    "target": "tgi",
    "route": "/v1/chat/completions",
    "model": "m",
    "status": 200,
    "upstream_ms": 1.5,
    "total_ms": 2.0,
    "tokens_in": 12,
    "tokens_out": None,
}


@pytest.mark.parametrize(("log_format", "pid"), [("text", False), ("text", True), ("json", False), ("json", True)])
def test_the_direct_access_line_is_the_line_the_formatter_writes(
    monkeypatch: pytest.MonkeyPatch, log_format: str, pid: bool
) -> None:
    from mooltiproxy import logs

    root = logging.getLogger()
    saved = root.handlers[:], root.level
    root.handlers.clear()
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    monkeypatch.setattr(logs, "_direct", None)
    try:
        logs.configure_logging(False, log_format, pid=pid)
        assert logs._direct is not None and logs._direct.alone()
        values = [FIELDS[k] for k in ("request_id", "client", "method", "path", "target", "route", "model", "status")]
        logs.access(*values, 0.0015, 0.002, FIELDS["tokens_in"], FIELDS["tokens_out"])  # written directly
        handler = root.handlers[0]
        record = logging.getLogger(logs.ACCESS_LOGGER).makeRecord(
            logs.ACCESS_LOGGER, logging.INFO, "", 0, logs.ACCESS_TEXT, (FIELDS,), None
        )
        expected = handler.format(record)  # what logging itself would have written
        extra = logging.Handler()
        root.addHandler(extra)  # someone else listens: the line goes through logging
        assert not logs._direct.alone()
        root.removeHandler(extra)
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
    written = stream.getvalue().splitlines()
    assert len(written) == 1
    if log_format == "json":
        got, want = orjson.loads(written[0]), orjson.loads(expected)
        assert got.pop("time")[:16] == want.pop("time")[:16]
        assert got == want
    else:
        assert written[0][23:] == expected[23:]  # all but the milliseconds' digits
        assert written[0][:16] == expected[:16]
