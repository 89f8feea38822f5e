"""The ``mooltiproxy`` command: serve, check, demo, render. It only parses flags and calls the programmatic API."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import orjson

from . import __version__, cli_keys
from .config import Settings, Target, load_config
from .errors import ConfigError, GatewayError

__all__ = ["main"]

#: exit status when the gateway cannot start (bad config, port in use)
STARTUP_FAILURE = 3
CONFIG_ENV = "MOOLTIPROXY_CONFIG"
log = logging.getLogger("mooltiproxy")


def default_config_path() -> Path:
    return Path(os.environ.get(CONFIG_ENV) or "config.yaml")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mooltiproxy",
        description="A small, fast LLM API translation gateway: expose one API, serve it with another.",
    )
    parser.add_argument("--version", action="version", version=f"mooltiproxy {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    config_help = f"config file (default: ${CONFIG_ENV} or ./config.yaml)"

    serve = sub.add_parser(
        "serve",
        help="run the gateway (the demo when no config file exists)",
        description="Run the gateway; with no config file (and no --config), run the demo.",
    )
    serve.add_argument("--config", type=Path, help=config_help)
    serve.add_argument("--host", help="address to listen on (default: system.host, 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to listen on (default: system.port, 8000)")
    serve.add_argument(
        "--workers", type=_workers, help="processes serving the port, or 'auto' (one per core; default: system.workers)"
    )
    serve.add_argument("--pid-file", type=Path, help="where to write the PID (default: system.pid_file)")
    serve.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)  # run by the supervisor
    serve.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)

    reload = sub.add_parser(
        "reload",
        help="make the running gateway re-read its config file (SIGHUP), once the file is checked",
        description="Check the config file, then send SIGHUP to the gateway whose PID is in the PID file; "
        "an invalid config is refused (exit status 3, every problem listed).",
    )
    reload.add_argument("--config", type=Path, help=config_help)
    reload.add_argument("--pid-file", type=Path, help="the gateway's PID file (default: system.pid_file)")

    check = sub.add_parser("check", help="validate a config file and print its targets and routes")
    check.add_argument("--config", type=Path, help=config_help)

    demo = sub.add_parser("demo", help="run the gateway in front of a built-in simulated TGI upstream")
    demo.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    demo.add_argument("--port", type=int, default=8000, help="port to listen on (default: 8000)")

    render = sub.add_parser(
        "render",
        help="print the prompt and stop sequences a route builds from messages read on stdin (JSON)",
        description="Read messages (a JSON list, or an object with 'messages' and optional 'tools') on stdin "
        "and print the exact prompt and stop sequences the route's prompter builds.",
    )
    render.add_argument("--config", type=Path, help=config_help)
    render.add_argument("--target", help="target name (default: targets.default)")
    render.add_argument("--path", default="/chat/completions", help="mapped path (default: /chat/completions)")
    render.add_argument("--json", action="store_true", help='print {"prompt": ..., "stop": [...]} as JSON')
    cli_keys.add_parsers(sub, config_help)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    command = args.command or "serve"
    if command == "demo":
        from .demo import run_demo

        return run_demo(args.host, args.port)
    explicit = getattr(args, "config", None)
    path = explicit or default_config_path()
    if command in cli_keys.COMMANDS:
        return cli_keys.run(args, path)
    if command == "serve" and explicit is None and not path.exists():
        from .demo import run_demo

        print(f"No config file at {path}: starting the demo (see 'mooltiproxy serve --help').", flush=True)
        return run_demo(getattr(args, "host", None) or "127.0.0.1", getattr(args, "port", None) or 8000)
    try:
        settings = load_config(path, os.environ)
    except ConfigError as exc:
        print(f"mooltiproxy: invalid configuration\n{exc}", file=sys.stderr)
        return STARTUP_FAILURE
    if command == "check":
        print(summary(settings))
        return 0
    if command == "render":
        return render(settings, args.target, args.path, args.json)
    if command == "reload":
        from .lifecycle import send_reload

        return send_reload(settings, args.pid_file)
    return serve(settings, args.host, args.port, path, args)


def summary(settings: Settings) -> str:
    lines = [f"{settings.source}: OK, {len(settings.targets)} target(s), default '{settings.default_target}'"]
    for warning in settings.warnings:
        lines.append(f"warning: {warning}")
    for target in settings.targets.values():
        kind = f" [api: {target.api}]" if target.api else ""
        lines.append(f"target {target.name}{kind}: {_replicas(target)}")
        if len(target.replicas) > 1:
            lines.append(f"  balance={target.balance} retries={target.retries}")
        if target.fallbacks:
            lines.append(f"  fallbacks: {', '.join(target.fallbacks)}")
        if target.health is not None:
            lines.append(f"  health: GET {target.health.path} every {target.health.interval:g} s")
        for route in target.routes.values():
            parts = [f"  {route.inbound} -> {route.upstream_path}"]
            for key in ("in", "out", "prompter", "template"):
                if key in route.entry:
                    parts.append(f"{key}={route.entry[key]}")
            if route.methods:
                parts.append(f"methods={','.join(sorted(route.methods))}")
            lines.append(" ".join(parts))
    if settings.model_index:
        lines.append("models:")
        for model, name in settings.model_index.items():
            target = settings.targets[name]
            upstream = target.models[model]
            sent = f" (sent as '{upstream}')" if upstream != model else ""
            lines.append(f"  {model}{sent} -> {name} -> {_replicas(target)}")
        default = settings.targets[settings.default_target]
        if not default.models:
            lines.append(f"  any other model -> {default.name}")
    return "\n".join(lines)


def _replicas(target: Target) -> str:
    return ", ".join(r.url + (f" (weight {r.weight})" if r.weight != 1 else "") for r in target.replicas)


def _workers(value: str) -> int:
    if value == "auto":
        return os.cpu_count() or 1
    try:
        count = int(value)
    except ValueError:
        count = 0
    if count < 1:
        raise argparse.ArgumentTypeError(f"expected a number of processes (1 or more) or 'auto', not '{value}'")
    return count


def serve(settings: Settings, host: str | None, port: int | None, path: Path, args: argparse.Namespace) -> int:
    """Serve from this process, or (``--workers N``, ``system.workers``) from N supervised worker processes."""
    from .lifecycle import serve_process
    from .logs import configure_logging
    from .runner import run

    workers = args.workers or settings.workers
    pid_file = str(args.pid_file) if args.pid_file else settings.pid_file
    configure_logging(settings.debug, settings.log_format, pid=workers > 1 or args.worker)
    if not args.worker:
        for warning in settings.warnings:
            log.warning("%s", warning)

    def announce(url: str) -> None:
        targets = ", ".join(f"{n} ({_replicas(t)})" for n, t in settings.targets.items())
        print(f"mooltiproxy listening on {url}, targets: {targets}", flush=True)

    if workers > 1 and not args.worker:
        from .workers import serve_workers

        return serve_workers(
            settings, path, host or settings.host, settings.port if port is None else port, workers, pid_file, announce
        )
    process = serve_process(
        settings, path, host, port, announce, worker=args.worker, ready_fd=args.ready_fd, pid_file=pid_file
    )
    try:
        run(process)
    except OSError as exc:
        print(f"mooltiproxy: cannot listen: {exc}", file=sys.stderr)
        return STARTUP_FAILURE
    return 0


def render(settings: Settings, target_name: str | None, path: str, as_json: bool) -> int:
    target = settings.targets.get(target_name or settings.default_target)
    if target is None:
        print(f"mooltiproxy: unknown target '{target_name}'", file=sys.stderr)
        return 2
    route = target.find(path)
    if route is None or route.prompter is None:
        print(f"mooltiproxy: target '{target.name}' has no prompter on '{path}'", file=sys.stderr)
        return 2
    try:
        data = orjson.loads(sys.stdin.buffer.read())
    except orjson.JSONDecodeError as exc:
        print(f"mooltiproxy: stdin is not JSON: {exc}", file=sys.stderr)
        return 2
    payload = data if isinstance(data, dict) else {"messages": data}
    messages = payload.get("messages")
    if not isinstance(messages, list):
        print("mooltiproxy: expected a list of messages, or an object with 'messages'", file=sys.stderr)
        return 2
    ctx = route.context(target, payload=payload)
    try:
        prompt = asyncio.run(ctx.render(messages))
    except GatewayError as exc:
        print(f"mooltiproxy: {exc.message}", file=sys.stderr)
        return 1
    if as_json:
        sys.stdout.write(orjson.dumps({"prompt": prompt.text, "stop": prompt.stop}).decode() + "\n")
    else:
        sys.stdout.write(f"{prompt.text}\n--- stop sequences ---\n{orjson.dumps(prompt.stop).decode()}\n")
    return 0
