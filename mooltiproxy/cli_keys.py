"""The ``mooltiproxy keys add|list|revoke`` and ``mooltiproxy unban`` commands.

They read only the config file's ``system`` section (``keys_db``, ``redis``), and ``unban`` its
``cerbere.ban_ipv6_prefix`` (an IPv6 address's ban is its network's), so they work without the master key
and the targets' keys in the environment. A running gateway sees their changes within seconds (it reads the keys
database every ``keys.REFRESH_SECONDS``); nothing needs a restart.
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import sys
from pathlib import Path
from typing import Any

import orjson

from .config import read_config_file
from .config.problems import Problems
from .config.schema import CerbereSection, SystemSection
from .errors import ConfigError
from .guard import ban_subject, normal_address
from .keys import KeyStore, describe, parse_expiry

__all__ = ["COMMANDS", "add_parsers", "run"]

#: the commands this module runs
COMMANDS = ("keys", "unban")


def add_parsers(sub: Any, config_help: str) -> None:
    keys = sub.add_parser("keys", help="virtual keys: add, list, revoke (system.keys_db)")
    actions = keys.add_subparsers(dest="action", metavar="ACTION", required=True)
    add = actions.add_parser("add", help="issue a new key and print it (once: only its hash is stored)")
    add.add_argument("name", help="a name for the key (unique among the keys not revoked)")
    add.add_argument("--targets", help="comma-separated targets the key may use (default: any)")
    add.add_argument("--models", help="comma-separated models the key may ask for (default: any)")
    add.add_argument("--rpm", type=_positive, help="requests per minute (default: no limit)")
    add.add_argument("--tpm", type=_positive, help="tokens per minute, prompt + completion (default: no limit)")
    add.add_argument("--expires", help="expiry: a duration (30d, 12h, 90m) or an ISO-8601 date/time (UTC)")
    show = actions.add_parser("list", help="list the keys (names, first characters, limits; never the keys)")
    show.add_argument("--json", action="store_true", help="one JSON object per line")
    revoke = actions.add_parser("revoke", help="revoke a key: refused from then on")
    revoke.add_argument("name")
    for parser in (add, show, revoke):
        parser.add_argument("--config", type=Path, help=config_help)

    unban = sub.add_parser(
        "unban",
        help=(
            "lift the ban of an address, or of its IPv6 network with cerbere.ban_ipv6_prefix (in Redis, and for"
            " running gateways through system.keys_db)"
        ),
    )
    unban.add_argument("address")
    unban.add_argument("--config", type=Path, help=config_help)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be 1 or more")
    return value


def _names(text: str | None) -> list[str] | None:
    if text is None:
        return None
    return [n.strip() for n in text.split(",") if n.strip()]


def _system(path: Path) -> tuple[SystemSection, CerbereSection, Path]:
    raw = read_config_file(path)
    problems = Problems()
    system: SystemSection | None = problems.model(SystemSection, raw.get("system"), "system")
    cerbere: CerbereSection | None = problems.model(CerbereSection, raw.get("cerbere"), "cerbere")
    if system is None or cerbere is None:
        raise ConfigError(problems.items, source=str(path))
    return system, cerbere, path.parent


def run(args: argparse.Namespace, path: Path) -> int:
    try:
        system, cerbere, base = _system(path)
    except ConfigError as exc:
        print(f"mooltiproxy: invalid configuration\n{exc}", file=sys.stderr)
        return 3
    store = KeyStore(base / system.keys_db) if system.keys_db else None
    try:
        if args.command == "unban":
            return _unban(args.address, store, system.redis, cerbere.ban_ipv6_prefix)
        if store is None:
            print(f"mooltiproxy: {path} has no system.keys_db: set it to use virtual keys", file=sys.stderr)
            return 2
        if args.action == "add":
            return _add(store, args)
        if args.action == "list":
            return _list(store, args.json)
        if not store.revoke(args.name):
            print(f"mooltiproxy: no key named '{args.name}' that is not revoked already", file=sys.stderr)
            return 1
        print(f"revoked '{args.name}'")
        return 0
    except sqlite3.Error as exc:
        print(f"mooltiproxy: the keys database {store.path if store else ''}: {exc}", file=sys.stderr)
        return 1


def _add(store: KeyStore, args: argparse.Namespace) -> int:
    try:
        expires = parse_expiry(args.expires) if args.expires else None
        key = store.add(
            args.name,
            targets=_names(args.targets),
            models=_names(args.models),
            rpm=args.rpm,
            tpm=args.tpm,
            expires_at=expires,
        )
    except ValueError as exc:
        print(f"mooltiproxy: {exc}", file=sys.stderr)
        return 2
    print(key)
    print(f"key '{args.name}' added: it is shown this once, store it now", file=sys.stderr)
    return 0


def _list(store: KeyStore, as_json: bool) -> int:
    rows = [describe(k) for k in store.all()]
    if as_json:
        for row in rows:
            sys.stdout.write(orjson.dumps(row).decode() + "\n")
        return 0
    columns = ("name", "key", "targets", "models", "rpm", "tpm", "expires", "state")
    table = [[_cell(row[c]) for c in columns] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in table]) for i, c in enumerate(columns)]
    print("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip())
    for r in table:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())
    return 0


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return str(value)


def _unban(address: str, store: KeyStore | None, redis_url: str | None, ipv6_prefix: int) -> int:
    normal = normal_address(address.strip())
    if normal is None:
        print(f"mooltiproxy: '{address}' is not an IP address", file=sys.stderr)
        return 2
    ip = ban_subject(normal, ipv6_prefix)
    if store is None and redis_url is None:
        print(
            "mooltiproxy: bans are kept in the running gateway's memory: set system.keys_db (running gateways read"
            " unbans from it) or system.redis (shared bans), or restart the gateway",
            file=sys.stderr,
        )
        return 2
    status = 0
    if redis_url is not None:
        from .state import RedisState

        async def lift() -> bool:
            state = RedisState(redis_url)
            try:
                await state.redis.ping()
                return bool(await state.redis.delete(state.key("ban", ip), state.key("fail", ip)))
            finally:
                await state.close()

        try:
            found = asyncio.run(lift())
        except Exception as exc:  # redis-py's errors, socket errors, timeouts: reported, and the database still used
            print(f"mooltiproxy: cannot reach Redis: {exc}", file=sys.stderr)
            status = 1
        else:
            print(f"{ip}: {'ban lifted' if found else 'not banned'} in Redis")
    if store is not None:
        store.add_unban(ip)
        print(f"{ip}: running gateways lift its ban within seconds")
    return status
