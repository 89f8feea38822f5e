"""``mooltiproxy demo``: the gateway in front of the built-in TGI simulator, with a fresh key, on loopback."""

from __future__ import annotations

import secrets
import sys
from pathlib import Path
from typing import Any

from .config import Settings, build_settings
from .errors import ConfigError

__all__ = ["demo_config", "run_demo"]


def demo_config(upstream_url: str) -> dict[str, Any]:
    """The demo's config: OpenAI chat and text completions and Anthropic messages translated to TGI, plus TGI's
    own routes."""
    chat = {"path": "/generate", "in": "chatReqOpenAItoTGI", "out": "chatAnsTGItoOpenAI", "template": "chatml"}
    text = {"path": "/generate", "in": "textReqOpenAItoTGI", "out": "textAnsTGItoOpenAI"}
    messages = {"path": "/generate", "in": "messagesReqAnthropicToTGI", "out": "messagesAnsTGItoAnthropic"}
    count = {"path": "/tokenize", "in": "countTokensReqAnthropicToTGI", "out": "countTokensAnsTGItoAnthropic"}
    return {
        "system": {"port": 8000},
        "targets": {
            "default": "tgi",
            "tgi": {
                "url": upstream_url,
                "mapping": {
                    "/chat/completions": chat,
                    "/completions": text,
                    "/messages": {**messages, "template": "chatml"},
                    "/messages/count_tokens": {**count, "template": "chatml"},
                    "/generate": None,
                    "/generate_stream": None,
                    "/info": {"methods": ["GET"]},
                    "/health": {"methods": ["GET"]},
                },
            },
        },
    }


def demo_settings(upstream_url: str, key: str, host: str, port: int) -> Settings:
    raw = demo_config(upstream_url)
    raw["system"] = {"host": host, "port": port}
    return build_settings(raw, {"MOOLTIPROXY_KEY": key}, base_dir=Path.cwd(), source="demo")


def snippets(url: str, key: str) -> str:
    return f"""
mooltiproxy demo: listening on {url} in front of a simulated TGI model.
Master key (fresh for this run): {key}
The simulated model answers "<<say:TEXT>>" with exactly TEXT; anything else gets a fixed greeting.

  curl {url}/v1/chat/completions \\
    -H "Authorization: Bearer {key}" -H "Content-Type: application/json" \\
    -d '{{"model": "demo", "messages": [{{"role": "user", "content": "Hello!"}}]}}'

  python - <<'PY'
from openai import OpenAI
client = OpenAI(base_url="{url}/v1", api_key="{key}")
answer = client.chat.completions.create(model="demo", messages=[{{"role": "user", "content": "Hello!"}}])
print(answer.choices[0].message.content)
stream = client.chat.completions.create(
    model="demo", messages=[{{"role": "user", "content": "<<say:Streamed, token by token.>>"}}], stream=True
)
for chunk in stream:
    print(chunk.choices[0].delta.content or "", end="", flush=True)
print()
PY

  python - <<'PY'
import anthropic
client = anthropic.Anthropic(base_url="{url}", api_key="{key}")
message = client.messages.create(model="demo", max_tokens=64, messages=[{{"role": "user", "content": "Hello!"}}])
print(message.content[0].text)
PY

Press Ctrl-C to stop.""".rstrip()


def run_demo(host: str, port: int) -> int:
    from .runner import configure_logging, run, serve_forever, start_gateway
    from .tgisim import start_simulator

    configure_logging(False)
    key = secrets.token_urlsafe(24)
    shown: list[str] = []

    async def start() -> list[Any]:
        sim_runner, sim_url = await start_simulator()
        settings = demo_settings(sim_url, key, host, port)
        runner, url = await start_gateway(settings)
        shown.append(url)
        return [sim_runner, runner]

    try:
        run(serve_forever(start, lambda: print(snippets(shown[0], key), flush=True)))
    except OSError as exc:
        print(f"mooltiproxy: cannot listen on {host}:{port}: {exc.strerror or exc} (try --port)", file=sys.stderr)
        return 3
    except ConfigError as exc:  # pragma: no cover - the demo config is part of the package
        print(exc, file=sys.stderr)
        return 3
    return 0
