"""Virtual keys: issued by ``mooltiproxy keys add``, kept in an SQLite database (``system.keys_db``).

A key is ``mp-`` + 32 URL-safe random characters (192 bits). Only its SHA-256 is stored: for a random key of that
entropy a fast hash is enough (there is nothing to brute-force that is cheaper than guessing the key itself), and
it lets the gateway find a key by its hash in a dictionary — hash first, then look up, so the time a check takes
does not depend on how much of a guess was right.

A key may be limited to some targets and models, to requests and tokens per minute, and to a date. The gateway
reads every key at start-up and again every ``REFRESH_SECONDS`` in a worker thread (never on the event loop), so
``keys add`` and ``keys revoke`` reach a running gateway within seconds. The same database has an ``unbans`` table:
``mooltiproxy unban`` adds a row, and the gateway lifts the ban when it reads it.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import secrets
import sqlite3
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import orjson

from .errors import Forbidden

__all__ = [
    "KEY_PREFIX",
    "REFRESH_SECONDS",
    "KeyRing",
    "KeyStore",
    "VirtualKey",
    "describe",
    "hash_key",
    "new_key",
    "parse_expiry",
    "permit",
]

log = logging.getLogger("mooltiproxy.keys")

KEY_PREFIX = "mp-"
#: seconds between two readings of the database by a running gateway
REFRESH_SECONDS = 2.0
#: characters of a key shown by ``keys list`` (the prefix and 4 random characters)
SHOWN = len(KEY_PREFIX) + 4
#: unban requests older than this are deleted (every running gateway has read them long before)
UNBAN_KEPT_SECONDS = 86400

_SCHEMA = """
CREATE TABLE IF NOT EXISTS keys (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    hash TEXT NOT NULL UNIQUE,
    shown TEXT NOT NULL,
    targets TEXT,
    models TEXT,
    rpm INTEGER,
    tpm INTEGER,
    expires_at REAL,
    created_at REAL NOT NULL,
    revoked_at REAL
);
CREATE UNIQUE INDEX IF NOT EXISTS keys_live_name ON keys (name) WHERE revoked_at IS NULL;
CREATE TABLE IF NOT EXISTS unbans (id INTEGER PRIMARY KEY, address TEXT NOT NULL, at REAL NOT NULL);
"""
_COLUMNS = "name, shown, targets, models, rpm, tpm, expires_at, created_at, revoked_at"


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(24)  # 24 bytes: 32 characters


def hash_key(key: str | bytes) -> str:
    return hashlib.sha256(key.encode() if isinstance(key, str) else key).hexdigest()


_DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_expiry(text: str, now: float | None = None) -> float:
    """Unix time from ``30d`` / ``12h`` / ``90m`` / ``2w``, or an ISO-8601 date or time (UTC unless it says)."""
    now = time.time() if now is None else now
    match = _DURATION.match(text.strip().lower())
    if match:
        return now + float(match.group(1)) * _UNITS[match.group(2)]
    value = text.strip()
    if value.endswith(("Z", "z")):
        value = value[:-1] + "+00:00"
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"'{text}' is neither a duration (30d, 12h, 90m) nor an ISO-8601 date") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return when.timestamp()


@dataclass(frozen=True)
class VirtualKey:
    name: str
    shown: str
    targets: frozenset[str] | None = None
    models: frozenset[str] | None = None
    rpm: int | None = None
    tpm: int | None = None
    expires_at: float | None = None
    created_at: float = 0.0
    revoked_at: float | None = None

    def expired(self, now: float | None = None) -> bool:
        return self.expires_at is not None and (time.time() if now is None else now) >= self.expires_at

    @property
    def limited(self) -> bool:
        return self.rpm is not None or self.tpm is not None


def _names(raw: str | None) -> frozenset[str] | None:
    return None if raw is None else frozenset(orjson.loads(raw))


def _row_key(row: tuple[object, ...]) -> VirtualKey:
    name, shown, targets, models, rpm, tpm, expires_at, created_at, revoked_at = row
    return VirtualKey(
        name=str(name),
        shown=str(shown),
        targets=_names(targets if isinstance(targets, str) else None),
        models=_names(models if isinstance(models, str) else None),
        rpm=rpm if isinstance(rpm, int) else None,
        tpm=tpm if isinstance(tpm, int) else None,
        expires_at=float(expires_at) if isinstance(expires_at, (int, float)) else None,
        created_at=float(created_at) if isinstance(created_at, (int, float)) else 0.0,
        revoked_at=float(revoked_at) if isinstance(revoked_at, (int, float)) else None,
    )


class KeyStore:
    """The database, through short-lived connections (blocking: call it from a thread on a running gateway)."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)

    def connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, timeout=5)
        db.execute("PRAGMA journal_mode=WAL")  # readers (the gateways) never block the commands, nor the reverse
        db.executescript(_SCHEMA)
        return db

    def add(
        self,
        name: str,
        *,
        targets: Iterable[str] | None = None,
        models: Iterable[str] | None = None,
        rpm: int | None = None,
        tpm: int | None = None,
        expires_at: float | None = None,
    ) -> str:
        """Store a new key named ``name`` and return it (the only time it is seen). ``ValueError`` when a key
        of that name exists and is not revoked."""
        key = new_key()
        row = (
            name,
            hash_key(key),
            key[:SHOWN],
            None if targets is None else orjson.dumps(sorted(targets)).decode(),
            None if models is None else orjson.dumps(sorted(models)).decode(),
            rpm,
            tpm,
            expires_at,
            time.time(),
        )
        with self.connect() as db:
            try:
                db.execute(
                    "INSERT INTO keys (name, hash, shown, targets, models, rpm, tpm, expires_at, created_at)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    row,
                )
            except sqlite3.IntegrityError:
                raise ValueError(f"a key named '{name}' exists: revoke it first") from None
        return key

    def revoke(self, name: str) -> bool:
        with self.connect() as db:
            cursor = db.execute(
                "UPDATE keys SET revoked_at = ? WHERE name = ? AND revoked_at IS NULL", (time.time(), name)
            )
            return cursor.rowcount > 0

    def all(self) -> list[VirtualKey]:
        with self.connect() as db:
            rows = db.execute(f"SELECT {_COLUMNS} FROM keys ORDER BY created_at, id").fetchall()
        return [_row_key(r) for r in rows]

    def by_hash(self) -> dict[str, VirtualKey]:
        """Every key by its hash; revoked ones too, so their use is answered 'revoked', not 'incorrect'."""
        with self.connect() as db:
            rows = db.execute(f"SELECT hash, {_COLUMNS} FROM keys ORDER BY id").fetchall()
        return {str(r[0]): _row_key(r[1:]) for r in rows}

    def add_unban(self, address: str) -> None:
        now = time.time()
        with self.connect() as db:
            db.execute("DELETE FROM unbans WHERE at < ?", (now - UNBAN_KEPT_SECONDS,))
            db.execute("INSERT INTO unbans (address, at) VALUES (?, ?)", (address, now))

    def unbans_after(self, last: int) -> tuple[int, list[str]]:
        """Unban requests after row ``last`` (-1: none, only the position to start from): the new position, and
        the addresses."""
        with self.connect() as db:
            if last < 0:
                top = db.execute("SELECT COALESCE(MAX(id), 0) FROM unbans").fetchone()[0]
                return int(top), []
            rows = db.execute("SELECT id, address FROM unbans WHERE id > ? ORDER BY id", (last,)).fetchall()
        return (int(rows[-1][0]) if rows else last), [str(r[1]) for r in rows]


class KeyRing:
    """The keys a running gateway knows, refreshed from the database in the background."""

    def __init__(self, store: KeyStore, on_unban: Callable[[str], Awaitable[object]] | None = None) -> None:
        self.store = store
        self.keys: dict[str, VirtualKey] = {}
        self.on_unban = on_unban
        self._unbans = -1
        self._task: asyncio.Future[None] | None = None
        self._failing = False

    def find(self, key: bytes) -> VirtualKey | None:
        """The key ``key`` is, if any (its hash, then a dictionary look-up)."""
        if not key.startswith(KEY_PREFIX.encode()):
            return None
        return self.keys.get(hash_key(key))

    def _read(self) -> tuple[dict[str, VirtualKey], int, list[str]]:
        keys = self.store.by_hash()
        last, addresses = self.store.unbans_after(self._unbans)
        return keys, last, addresses

    async def refresh(self) -> None:
        keys, self._unbans, addresses = await asyncio.to_thread(self._read)
        self.keys = keys
        for address in addresses:
            if self.on_unban is not None:
                await self.on_unban(address)

    async def start(self) -> None:
        """Read the keys once (a database that cannot be opened stops the start-up), then keep them fresh."""
        await self.refresh()
        self._task = asyncio.ensure_future(self._loop())

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(REFRESH_SECONDS)
            try:
                await self.refresh()
            except (sqlite3.Error, OSError) as exc:  # keep the keys known so far; say it once
                if not self._failing:
                    log.error("cannot read the keys database %s: %s (keeping the keys known)", self.store.path, exc)
                self._failing = True
            else:
                if self._failing:
                    log.warning("the keys database %s can be read again", self.store.path)
                self._failing = False

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None


def describe(key: VirtualKey, now: float | None = None) -> dict[str, object]:
    """What ``keys list`` shows of a key (never the key: only its first characters)."""

    def when(ts: float | None) -> str | None:
        return None if ts is None else datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="seconds")

    state = "revoked" if key.revoked_at is not None else "expired" if key.expired(now) else "active"
    return {
        "name": key.name,
        "key": key.shown + "…",
        "targets": sorted(key.targets) if key.targets is not None else None,
        "models": sorted(key.models) if key.models is not None else None,
        "rpm": key.rpm,
        "tpm": key.tpm,
        "expires": when(key.expires_at),
        "created": when(key.created_at),
        "revoked": when(key.revoked_at),
        "state": state,
    }


def permit(key: VirtualKey, target: str, model: str | None) -> None:
    """Raise ``Forbidden`` when ``key`` may not use ``target`` or ``model`` (a request without a model is allowed
    the key's targets)."""
    if key.targets is not None and target not in key.targets:
        raise Forbidden(f"the API key '{key.name}' may not use the target '{target}'", code="target_not_allowed")
    if key.models is not None and model is not None and model not in key.models:
        message = f"the API key '{key.name}' may not use the model '{model}'"
        raise Forbidden(message, param="model", code="model_not_allowed")
