"""The command line, run as a user runs it: real subprocesses, real ports."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import anthropic
import openai
import yaml

from .http import request

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    base = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "mooltiproxy", *args],
        cwd=cwd,
        env={**base, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def read_until(proc: subprocess.Popen[str], pattern: str, timeout: float = 20) -> str:
    assert proc.stdout is not None
    seen = ""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        seen += line
        if re.search(pattern, seen):
            return seen
    raise AssertionError(f"{pattern!r} not printed; got:\n{seen}")


def stop(proc: subprocess.Popen[str]) -> int:
    proc.send_signal(signal.SIGINT)
    try:
        proc.communicate(timeout=10)  # drains and closes the pipe
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
    return proc.returncode


def test_serve_prints_where_it_listens_and_stops_cleanly(tmp_path: Path) -> None:
    port = free_port()
    config = {
        "system": {"port": port},
        "targets": {"default": "t", "t": {"url": "http://127.0.0.1:9", "mapping": {"/x": None}}},
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    proc = start(["serve"], tmp_path, {"MOOLTIPROXY_KEY": "a-serious-key-123"})
    try:
        out = read_until(proc, r"listening on http://127\.0\.0\.1:\d+")
        assert f"listening on http://127.0.0.1:{port}, targets: t (http://127.0.0.1:9)" in out
        assert request("GET", f"http://127.0.0.1:{port}/-/health").status == 200
    finally:
        assert stop(proc) == 0


def test_serve_refuses_to_start_with_a_bad_config(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text("targets: {default: t}")
    proc = start(["serve", "--port", str(free_port())], tmp_path)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 3
    assert "system.masterkey: no master key" in out and "Traceback" not in out


def test_serve_without_config_runs_the_demo_and_the_openai_sdk_works(tmp_path: Path) -> None:
    port = free_port()
    proc = start(["serve", "--port", str(port)], tmp_path)
    try:
        out = read_until(proc, r"Press Ctrl-C to stop")
        assert "No config file at config.yaml: starting the demo" in out
        key = re.search(r"Master key \(fresh for this run\): (\S+)", out)
        assert key is not None
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=key.group(1), max_retries=0)
        answer = client.chat.completions.create(model="demo", messages=[{"role": "user", "content": "<<say:Hi!>>"}])
        assert answer.choices[0].message.content == "Hi!"
        streamed = client.chat.completions.create(
            model="demo", messages=[{"role": "user", "content": "<<say:One two three>>"}], stream=True
        )
        assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == "One two three"
        assert request("GET", f"http://127.0.0.1:{port}/v1/chat/completions").status == 401
        client.close()
        with anthropic.Anthropic(base_url=f"http://127.0.0.1:{port}", api_key=key.group(1), max_retries=0) as sdk:
            message = sdk.messages.create(
                model="demo", max_tokens=20, messages=[{"role": "user", "content": "<<say:Hey>>"}]
            )
            assert message.content[0].type == "text" and message.content[0].text == "Hey"
            assert (
                sdk.messages.count_tokens(model="demo", messages=[{"role": "user", "content": "Hi"}]).input_tokens > 0
            )
    finally:
        assert stop(proc) == 0


def test_render_prints_the_exact_prompt_and_stops(tmp_path: Path) -> None:
    config = {
        "targets": {
            "default": "t",
            "t": {
                "url": "http://127.0.0.1:9",
                "mapping": {"/chat/completions": {"path": "/generate", "template": "chatml"}},
            },
        }
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    result = subprocess.run(
        [sys.executable, "-m", "mooltiproxy", "render", "--config", "config.yaml", "--json"],
        input=json.dumps(messages),
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=30,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "MOOLTIPROXY_KEY": "a-serious-key-123"},
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {
        "prompt": "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n",
        "stop": ["<|im_end|>", "<|im_start|>"],
    }
    plain = subprocess.run(
        [sys.executable, "-m", "mooltiproxy", "render", "--config", "config.yaml", "--target", "t"],
        input=json.dumps({"messages": messages}),
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=30,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "MOOLTIPROXY_KEY": "a-serious-key-123"},
    )
    assert plain.stdout.endswith('<|im_start|>assistant\n\n--- stop sequences ---\n["<|im_end|>","<|im_start|>"]\n')


def test_help_lists_the_commands() -> None:
    result = subprocess.run([sys.executable, "-m", "mooltiproxy", "--help"], capture_output=True, text=True, cwd=ROOT)
    for command in ("serve", "check", "demo", "render"):
        assert command in result.stdout
