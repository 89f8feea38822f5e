"""State the guard and the limits share: bans, failure counts and counters, in memory or in Redis.

``MemoryState`` (the default) keeps everything in this process. ``RedisState`` (``system.redis``) keeps it in
Redis, so every gateway process, on every machine, sees the same bans and counts the same limits; each operation
is one round trip, atomic (a Lua script, or a MULTI/EXEC pipeline).

When Redis cannot be reached, ``RedisState`` keeps serving from the process's memory: bans and failure counts go
on there (every ban seen or made is mirrored in memory, so a ban is never lost while Redis is down, and the
bans this process knows are written to Redis when it is back, unless it has them: "fail closed"), and counters
answer ``None`` (the limits decide to let the request through or to refuse it). The outage and the return are
logged once each; while it is down, Redis is tried again at most once a second, so requests do not each wait for a
timeout.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any, Protocol

__all__ = ["MAX_TRACKED", "MemoryState", "RedisState", "SharedState", "open_state"]

log = logging.getLogger("mooltiproxy.state")

#: failure counters kept at most in memory (oldest forgotten first), so a flood of addresses cannot exhaust memory
MAX_TRACKED = 65536
#: seconds a failure count lives in Redis without a new failure
FAILURE_TTL = 86400
#: seconds between two attempts to reach Redis while it is down
RETRY_SECONDS = 1.0
#: seconds one Redis command (and one connection) may take
REDIS_TIMEOUT = 0.25


class SharedState(Protocol):
    async def check(self, ip: str, passed: bool) -> bool:
        """Whether ``ip`` is banned; when it is not and ``passed`` (its key was right), forget its failures."""

    async def fail(self, ip: str, max_tries: int, ban_seconds: float | None) -> bool:
        """Count a failure of ``ip``; ban it at ``max_tries`` (for ``ban_seconds``, None: for good). True: banned."""

    async def unban(self, ip: str) -> bool:
        """Lift the ban of ``ip`` and forget its failures. True when it was banned."""

    async def add(self, counters: Sequence[tuple[str, int]], ttl: int) -> list[int] | None:
        """Add each amount to its counter (kept ``ttl`` seconds); the new values, or None when unavailable."""

    async def close(self) -> None: ...


class MemoryState:
    """Everything in this process's memory."""

    def __init__(self) -> None:
        self._failures: OrderedDict[str, int] = OrderedDict()
        #: address -> monotonic time its ban ends (inf: never)
        self.banned: dict[str, float] = {}
        self._counters: dict[str, tuple[int, float]] = {}
        self._next_sweep = 0.0

    def ban_ends(self, ip: str) -> float | None:
        """When the ban of ``ip`` ends (monotonic), or None when it is not banned."""
        until = self.banned.get(ip)
        if until is not None and until <= time.monotonic():
            del self.banned[ip]
            return None
        return until

    def ban(self, ip: str, seconds: float | None) -> None:
        self.banned[ip] = math.inf if seconds is None else time.monotonic() + seconds

    async def check(self, ip: str, passed: bool) -> bool:
        if self.banned and self.ban_ends(ip) is not None:
            return True
        if passed and self._failures:
            self._failures.pop(ip, None)
        return False

    async def fail(self, ip: str, max_tries: int, ban_seconds: float | None) -> bool:
        count = self._failures.pop(ip, 0) + 1
        if count >= max_tries:
            self.ban(ip, ban_seconds)
            return True
        self._failures[ip] = count
        if len(self._failures) > MAX_TRACKED:
            self._failures.popitem(last=False)
        return False

    async def unban(self, ip: str) -> bool:
        self._failures.pop(ip, None)
        return self.banned.pop(ip, None) is not None

    async def add(self, counters: Sequence[tuple[str, int]], ttl: int) -> list[int] | None:
        now = time.monotonic()
        if now >= self._next_sweep:  # expired counters go, at most once a second
            self._counters = {k: v for k, v in self._counters.items() if v[1] > now}
            self._next_sweep = now + 1
        out: list[int] = []
        for name, amount in counters:
            value, expires = self._counters.get(name, (0, now + ttl))
            if expires <= now:
                value, expires = 0, now + ttl
            value += amount
            self._counters[name] = (value, expires)
            out.append(value)
        return out

    async def close(self) -> None:
        return None


# KEYS: failures, ban. ARGV: max_tries, ban milliseconds (0: for good), failure ttl. Returns 1 when banned.
_FAIL = """
local n = redis.call('INCR', KEYS[1])
redis.call('EXPIRE', KEYS[1], ARGV[3])
if n >= tonumber(ARGV[1]) then
  redis.call('DEL', KEYS[1])
  if tonumber(ARGV[2]) > 0 then
    redis.call('SET', KEYS[2], '1', 'PX', ARGV[2])
  else
    redis.call('SET', KEYS[2], '1')
  end
  return 1
end
return 0
"""


class RedisState:
    """Bans, failures and counters in Redis, mirrored in memory for when Redis cannot be reached."""

    def __init__(self, url: str, prefix: str = "mooltiproxy:") -> None:
        from redis.asyncio import BlockingConnectionPool, Redis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff
        from redis.exceptions import RedisError

        self.url = url
        self.prefix = prefix
        #: what an unreachable or failing Redis raises (redis-py's own errors, socket errors, timeouts)
        self._errors: tuple[type[BaseException], ...] = (RedisError, OSError, asyncio.TimeoutError)
        pool = BlockingConnectionPool.from_url(
            url,
            max_connections=64,
            timeout=REDIS_TIMEOUT,  # waiting for a free connection
            socket_timeout=REDIS_TIMEOUT,
            socket_connect_timeout=REDIS_TIMEOUT,
            retry=Retry(NoBackoff(), 0),  # no retries: the memory takes over at once
        )
        self.redis: Any = Redis.from_pool(pool)  # owns the pool: closing the client closes its connections
        self._fail_script: Any = self.redis.register_script(_FAIL)
        self.local = MemoryState()
        self.down = False
        self._retry_at = 0.0

    def key(self, kind: str, name: str) -> str:
        return f"{self.prefix}{kind}:{name}"

    def _lost(self, exc: BaseException) -> None:
        self._retry_at = time.monotonic() + RETRY_SECONDS
        if not self.down:
            self.down = True
            log.error(
                "Redis at %s is unreachable (%s): bans and failure counts are kept in this process's memory"
                " until it is back",
                _safe_url(self.url),
                exc.__class__.__name__,
            )

    async def _ready(self) -> bool:
        """Whether to use Redis now: it is up, or it was down and answers again. Then every ban this process knows
        is written to it first (unless Redis has it), with what is left of it: a ban made during the outage, or
        one that a restarted Redis lost, is not lost."""
        if not self.down:
            return True
        if time.monotonic() < self._retry_at:
            return False
        try:
            for ip in list(self.local.banned):
                until = self.local.ban_ends(ip)
                if until is not None:
                    px = None if until == math.inf else max(1, int((until - time.monotonic()) * 1000))
                    await self.redis.set(self.key("ban", ip), "1", px=px, nx=True)
            await self.redis.ping()
        except self._errors as exc:
            self._lost(exc)
            return False
        self.down = False
        log.warning("Redis at %s is back", _safe_url(self.url))
        return True

    async def check(self, ip: str, passed: bool) -> bool:
        if not await self._ready():
            return await self.local.check(ip, passed)
        try:
            pipe = self.redis.pipeline(transaction=False)
            pipe.pttl(self.key("ban", ip))
            if passed:
                pipe.delete(self.key("fail", ip))
            ttl = (await pipe.execute())[0]
        except self._errors as exc:
            self._lost(exc)
            return await self.local.check(ip, passed)
        if ttl == -2:  # no ban in Redis: it is the authority while it answers (an unban reaches every process)
            self.local.banned.pop(ip, None)
            return False
        self.local.ban(ip, None if ttl < 0 else ttl / 1000)
        return True

    async def fail(self, ip: str, max_tries: int, ban_seconds: float | None) -> bool:
        if await self._ready():
            try:
                ms = 0 if ban_seconds is None else max(1, int(ban_seconds * 1000))
                keys = [self.key("fail", ip), self.key("ban", ip)]
                banned = bool(await self._fail_script(keys=keys, args=[max_tries, ms, FAILURE_TTL]))
            except self._errors as exc:
                self._lost(exc)
            else:
                if banned:
                    self.local.ban(ip, ban_seconds)
                return banned
        return await self.local.fail(ip, max_tries, ban_seconds)

    async def unban(self, ip: str) -> bool:
        was = await self.local.unban(ip)
        if not await self._ready():
            return was
        try:
            removed = await self.redis.delete(self.key("ban", ip), self.key("fail", ip))
        except self._errors as exc:
            self._lost(exc)
            return was
        return was or bool(removed)

    async def add(self, counters: Sequence[tuple[str, int]], ttl: int) -> list[int] | None:
        if not await self._ready():
            return None
        try:
            pipe = self.redis.pipeline(transaction=True)
            for name, amount in counters:
                key = self.key("count", name)
                pipe.incrby(key, amount)
                pipe.expire(key, ttl)
            values = await pipe.execute()
        except self._errors as exc:
            self._lost(exc)
            return None
        return [int(v) for v in values[::2]]

    async def close(self) -> None:
        await self.redis.aclose()


def _safe_url(url: str) -> str:
    """The URL without its password, for logs."""
    scheme, sep, rest = url.partition("://")
    if "@" in rest:
        rest = "***@" + rest.rpartition("@")[2]
    return f"{scheme}{sep}{rest}"


def open_state(redis_url: str | None) -> SharedState:
    return RedisState(redis_url) if redis_url else MemoryState()
