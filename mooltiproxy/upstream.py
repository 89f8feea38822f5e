"""The upstream side: one pooled keep-alive client per target, its replicas, retries, redirects, and errors
translated once, here.

A request goes to the replica the ``Balancer`` picks. A connection failure, or a 429/502/503/504 answer, is retried
on another replica (then on the same ones once their ``Retry-After`` is over, if it is short enough), at most
``retries`` more times: all of it happens before the answer is handed to the caller, so nothing has reached the
client yet and a stream is never retried once it started. When every attempt failed, the last answer is handed
over as it came — or, when the target has fallbacks left (``final=False``), ``Unavailable`` is raised so the
caller moves on to the next target.

aiohttp errors never leave this module: unreachable → ``UpstreamError`` (502), timeout → ``UpstreamTimeout``
(504). Bodies are not decompressed here (``auto_decompress=False``) so a pass-through route forwards the upstream
bytes untouched; ``decode_body`` decodes them when a mapper needs to read them.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import time
import zlib
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager

import aiohttp
from multidict import CIMultiDict
from yarl import URL

from .balancer import Balancer, Replica
from .config.model import Target
from .errors import UpstreamError, UpstreamTimeout

__all__ = ["HOP_BY_HOP", "RETRIED_STATUSES", "Unavailable", "Upstream", "decode_body", "retry_after"]

log = logging.getLogger("mooltiproxy")

#: headers that describe one connection, never forwarded either way (RFC 9110 §7.6.1)
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
#: answers that mean "this replica cannot serve now": retried elsewhere
RETRIED_STATUSES = frozenset({429, 502, 503, 504})
#: first pause before a replica is asked again (doubled each time), when it gave no Retry-After
_BACKOFF = 0.05
#: failures before the answer started, where the request cannot have been processed: another replica may take it
_CONNECT_ERRORS = (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError)
_BROKEN_ERRORS = (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError)


class Unavailable(UpstreamError):
    """Every replica of a target failed before answering; raised only when a fallback target can take over."""


def retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds from a ``Retry-After`` header (delay-seconds or an HTTP date), None when absent or unreadable."""
    value = headers.get("Retry-After")
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class Upstream:
    """The pooled client of one target."""

    def __init__(self, target: Target, *, pool_size: int = 256, max_redirects: int = 5) -> None:
        self.target = target
        self.max_redirects = max_redirects
        self.balancer = Balancer(target.replicas, target.balance, target.cooldown)
        self._pool_size = pool_size
        self._session: aiohttp.ClientSession | None = None
        self._authorization = f"Bearer {target.api_key}" if target.api_key else None

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(limit=self._pool_size, ttl_dns_cache=300, enable_cleanup_closed=True)
        timeout = aiohttp.ClientTimeout(
            total=None,
            connect=self.target.timeout,
            sock_connect=self.target.connect_timeout,
            sock_read=self.target.timeout,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=timeout,
            auto_decompress=False,
            skip_auto_headers=("User-Agent", "Accept-Encoding", "Content-Type"),
            cookie_jar=aiohttp.DummyCookieJar(),
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        assert self._session is not None, "Upstream.start() was not awaited"
        return self._session

    def auth_headers(self) -> dict[str, str]:
        return {"Authorization": self._authorization} if self._authorization else {}

    def url(self, path: str, query: str = "", replica: Replica | None = None) -> URL:
        base = replica.url if replica is not None else self.target.url
        raw = base + path + (f"?{query}" if query else "")
        return URL(raw, encoded=True)

    @asynccontextmanager
    async def request(
        self, method: str, path: str, query: str, headers: CIMultiDict[str], body: bytes | None, *, final: bool = True
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """Send one request to a replica (retrying, following redirects) and yield the answer, its body unread.

        ``headers`` is not changed: the target's key is added to a copy. ``final=False``: raise ``Unavailable``
        instead of handing over a failed answer, because a fallback target will be tried.
        """
        balancer = self.balancer
        tried: list[Replica] = []
        failure: UpstreamError | None = None
        for attempt in range(self.target.retries + 1):
            replica, wait = self._next(tried, attempt, final)
            if replica is None:
                break
            if wait > 0:
                await asyncio.sleep(wait)
            tried.append(replica)
            replica.inflight += 1
            try:
                try:
                    response = await self._send(replica, method, path, query, headers, body)
                except _CONNECT_ERRORS as exc:
                    balancer.failed(replica, refused=True)
                    failure = self._unreachable(replica, exc)
                    continue
                except UpstreamTimeout:  # sent, but no answer in time: it may be working on it, so not retried
                    balancer.failed(replica)
                    raise
                except _BROKEN_ERRORS as exc:
                    balancer.failed(replica)
                    failure = UpstreamError(f"target '{self.target.name}' failed: {type(exc).__name__}: {exc}")
                    continue
                if response.status in RETRIED_STATUSES:
                    balancer.failed(replica, retry_after=retry_after(response.headers))
                    last = attempt == self.target.retries or not self._can_retry()
                    if not last or not final:
                        log.info(
                            "target '%s': %s answered %d, trying again", self.target.name, replica.url, response.status
                        )
                        response.release()
                        failure = Unavailable(f"target '{self.target.name}' answered {response.status}")
                        continue
                else:
                    balancer.succeeded(replica)
                try:
                    yield response
                except asyncio.TimeoutError as exc:  # reading the body, between two chunks
                    raise self._timeout() from exc
                except aiohttp.ClientError as exc:
                    raise UpstreamError(f"target '{self.target.name}' failed: {type(exc).__name__}: {exc}") from exc
                finally:
                    response.release()
                return
            finally:
                replica.inflight -= 1
        if not final:
            raise Unavailable(failure.message if failure else f"target '{self.target.name}' has no replica up")
        raise failure or UpstreamError(f"target '{self.target.name}' has no replica up")

    def _next(self, tried: list[Replica], attempt: int, final: bool) -> tuple[Replica | None, float]:
        """The replica for this attempt and how long to wait before it."""
        balancer = self.balancer
        replica = balancer.pick(exclude=tried)
        if replica is not None:
            return replica, 0.0
        replica = balancer.pick()
        if replica is not None:  # every available replica was tried: ask again, a little later each time
            return replica, _BACKOFF * 2 ** (attempt - 1)
        replica, wait = balancer.soonest()
        if replica is None:
            return None, 0.0
        if attempt == 0:
            # every replica is out: with no fallback left, try the one due back first anyway (one connect attempt)
            return (replica, 0.0) if final else (None, 0.0)
        return (replica, wait) if wait <= self.target.max_retry_wait else (None, 0.0)

    def _can_retry(self) -> bool:
        """Whether ``_next`` would find a replica for another attempt (without moving the policy's turn)."""
        balancer = self.balancer
        now = balancer.clock()
        if any(r.available(now) for r in balancer.replicas):
            return True
        replica, wait = balancer.soonest()
        return replica is not None and wait <= self.target.max_retry_wait

    def _unreachable(self, replica: Replica, exc: Exception) -> UpstreamError:
        if isinstance(exc, aiohttp.ClientConnectorError):
            reason = exc.os_error.strerror or str(exc)
            return UpstreamError(f"target '{self.target.name}' is unreachable: {reason}")
        return UpstreamError(
            f"target '{self.target.name}' is unreachable: no connection within {self.target.connect_timeout:g} s"
        )

    async def _send(
        self, replica: Replica, method: str, path: str, query: str, headers: CIMultiDict[str], body: bytes | None
    ) -> aiohttp.ClientResponse:
        """One attempt on one replica, following redirects; connection errors are left to the caller."""
        url = self.url(path, query, replica)
        headers = headers.copy()
        if self._authorization:
            headers["Authorization"] = self._authorization
        name = self.target.name
        try:
            for _hop in range(self.max_redirects + 1):
                response = await self.session.request(
                    method, url, headers=headers, data=body, allow_redirects=False, compress=None
                )
                if response.status not in _REDIRECTS or "Location" not in response.headers:
                    return response
                response.release()
                try:
                    location = url.join(URL(response.headers["Location"]))
                except ValueError as exc:
                    raise UpstreamError(f"target '{name}' redirected to an invalid location") from exc
                if not self.target.preserve_method and (
                    response.status == 303 or (response.status in (301, 302) and method == "POST")
                ):
                    method, body = ("HEAD" if method == "HEAD" else "GET"), None
                    headers.popall("Content-Type", None)
                if not _same_site(url, location):
                    # never hand a target's key (or cookies) to another origin, nor over a downgraded scheme
                    headers.popall("Authorization", None)
                    headers.popall("Cookie", None)
                url = location
            response.release()
            raise UpstreamError(f"target '{name}' redirected more than {self.max_redirects} times")
        except (*_CONNECT_ERRORS, *_BROKEN_ERRORS):
            raise
        except asyncio.TimeoutError as exc:
            raise self._timeout() from exc
        except aiohttp.ClientError as exc:
            raise UpstreamError(f"target '{name}' failed: {type(exc).__name__}: {exc}") from exc

    def _timeout(self) -> UpstreamTimeout:
        return UpstreamTimeout(f"target '{self.target.name}' did not answer within {self.target.timeout:g} s")


def _same_site(current: URL, location: URL) -> bool:
    """Same origin, or the same host moving from http to https on its default port (a common upgrade redirect)."""
    if location.origin() == current.origin():
        return True
    return (
        location.host == current.host
        and current.scheme == "http"
        and location.scheme == "https"
        and location.is_default_port()
    )


def decode_body(body: bytes, headers: Mapping[str, str]) -> bytes:
    """Undo ``Content-Encoding`` gzip/deflate so a mapper can read the body."""
    encoding = headers.get("Content-Encoding", "").strip().lower()
    if not encoding or encoding == "identity":
        return body
    try:
        if encoding in ("gzip", "x-gzip"):
            return zlib.decompress(body, 16 + zlib.MAX_WBITS)
        if encoding == "deflate":
            try:
                return zlib.decompress(body)
            except zlib.error:
                return zlib.decompress(body, -zlib.MAX_WBITS)
    except zlib.error as exc:
        raise UpstreamError(f"the upstream answer is not valid {encoding}: {exc}") from exc
    raise UpstreamError(f"the upstream answer uses an unsupported Content-Encoding '{encoding}'")
