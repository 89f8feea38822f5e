"""The upstream side: one pooled keep-alive client per target, its replicas, retries, redirects, and errors
translated once, here.

A request goes to the replica the ``Balancer`` picks. A connection failure, or a 429/502/503/504 answer, is retried
on another replica (then on the same ones once their ``Retry-After`` is over, if it is short enough), at most
``retries`` more times: all of it happens before the answer is handed to the caller, so nothing has reached the
client yet and a stream is never retried once it started. When every attempt failed, the last answer is handed
over as it came — or, when the target has fallbacks left (``final=False``), ``Unavailable`` is raised so the
caller moves on to the next target.

The HTTP client is ``client.Pool``; its errors never leave this module: unreachable → ``UpstreamError`` (502),
timeout → ``UpstreamTimeout`` (504). Bodies are not decompressed (a pass-through route forwards the upstream bytes
untouched); ``decode_body`` decodes them when a mapper needs to read them.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import time
import zlib
from collections.abc import Mapping
from typing import Any

from multidict import CIMultiDict
from yarl import URL

from .balancer import Balancer, Replica
from .client import ClientError, ConnectFailed, ConnectTimeout, Disconnected, InvalidHeader, Origin, Pool, ReadTimeout
from .client import Response as Response
from .config.model import Target
from .errors import BadRequest, UpstreamError, UpstreamTimeout

__all__ = [
    "HOP_BY_HOP",
    "RETRIED_STATUSES",
    "Call",
    "Response",
    "Unavailable",
    "Upstream",
    "decode_body",
    "retry_after",
]

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
_CONNECT_ERRORS = (ConnectFailed, ConnectTimeout)
_BROKEN_ERRORS = (Disconnected,)


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
        self._pool: Pool | None = None
        self._authorization = f"Bearer {target.api_key}" if target.api_key else None
        #: each replica's origin and base path, split once
        self._bases = {r.url: _split(URL(r.url)) for r in self.balancer.replicas}

    async def start(self) -> None:
        self._pool = Pool(
            limit=self._pool_size, connect_timeout=self.target.connect_timeout, read_timeout=self.target.timeout
        )

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    @property
    def pool(self) -> Pool:
        assert self._pool is not None, "Upstream.start() was not awaited"
        return self._pool

    def auth_headers(self) -> dict[str, str]:
        return {"Authorization": self._authorization} if self._authorization else {}

    async def probe(self, replica: Replica, path: str, timeout: float) -> int | None:
        """GET ``path`` on the replica's server (not under its base path): the status, None when it failed."""
        origin, _ = self._bases[replica.url]
        try:
            headers = self.auth_headers().items()
            response = await self.pool.request(origin, "GET", path, headers, None, read_timeout=timeout)
        except ClientError:
            return None
        try:
            await response.read()
        except ClientError:
            return None
        finally:
            response.release()
        return response.status

    def request(
        self, method: str, path: str, query: str, headers: CIMultiDict[str], body: bytes | None, *, final: bool = True
    ) -> Call:
        """``async with upstream.request(…) as response``: one request to a replica (retrying, following
        redirects), and its answer with the body unread; leaving the block releases the connection.

        ``headers`` is not changed: the target's key is added to a copy. ``final=False``: raise ``Unavailable``
        instead of handing over a failed answer, because a fallback target will be tried.
        """
        return Call(self, method, path, query, headers, body, final)

    async def open(
        self, method: str, path: str, query: str, headers: CIMultiDict[str], body: bytes | None, final: bool
    ) -> tuple[Response, Replica]:
        """The answer, and the replica that gave it (its ``inflight`` still counts this request)."""
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
            answered = False
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
                    failure = UpstreamError(f"target '{self.target.name}' failed: {exc}")
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
                answered = True
                return response, replica
            finally:
                if not answered:
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
        if isinstance(exc, ConnectFailed):
            return UpstreamError(f"target '{self.target.name}' is unreachable: {exc}")
        return UpstreamError(
            f"target '{self.target.name}' is unreachable: no connection within {self.target.connect_timeout:g} s"
        )

    async def _send(
        self, replica: Replica, method: str, path: str, query: str, headers: CIMultiDict[str], body: bytes | None
    ) -> Response:
        """One attempt on one replica, following redirects; connection errors are left to the caller."""
        origin, base = self._bases[replica.url]
        target = base + path + (f"?{query}" if query else "")
        headers = headers.copy()
        if self._authorization:
            headers["Authorization"] = self._authorization
        name = self.target.name
        try:
            for _hop in range(self.max_redirects + 1):
                response = await self.pool.request(origin, method, target, headers.items(), body)
                if response.status not in _REDIRECTS or "Location" not in response.headers:
                    return response
                response.release()
                url = URL(f"{origin.scheme}://{origin.host_header}{target}", encoded=True)
                try:
                    location = url.join(URL(response.headers["Location"]))
                    next_origin, target = _split(location, with_query=True)
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
                origin = next_origin
            response.release()
            raise UpstreamError(f"target '{name}' redirected more than {self.max_redirects} times")
        except (*_CONNECT_ERRORS, *_BROKEN_ERRORS):
            raise
        except ReadTimeout as exc:
            raise self._timeout() from exc
        except InvalidHeader as exc:
            raise BadRequest(f"the request cannot be forwarded: {exc}") from exc
        except ClientError as exc:
            raise UpstreamError(f"target '{name}' failed: {exc}") from exc

    def _timeout(self) -> UpstreamTimeout:
        return UpstreamTimeout(f"target '{self.target.name}' did not answer within {self.target.timeout:g} s")


def _split(url: URL, with_query: bool = False) -> tuple[Origin, str]:
    """A URL's origin, and its path (with its query string when ``with_query``), as sent."""
    if url.scheme not in ("http", "https") or not url.raw_host or url.port is None:
        raise ValueError(f"not an http(s) URL: {url}")
    path = url.raw_path_qs if with_query else url.raw_path.rstrip("/")
    return Origin(url.scheme, url.raw_host, url.port), path


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


class Call:
    """One ``Upstream.request``: the answer on entry; on exit, the connection released, the replica's request
    counted done, and a failure while the body was read turned into the gateway's error (504 or 502)."""

    __slots__ = ("args", "replica", "response", "upstream")

    def __init__(
        self,
        upstream: Upstream,
        method: str,
        path: str,
        query: str,
        headers: CIMultiDict[str],
        body: bytes | None,
        final: bool,
    ) -> None:
        self.upstream = upstream
        self.args = (method, path, query, headers, body, final)
        self.response: Response | None = None
        self.replica: Replica | None = None

    async def __aenter__(self) -> Response:
        self.response, self.replica = await self.upstream.open(*self.args)
        return self.response

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        assert self.response is not None and self.replica is not None
        self.response.release()
        self.replica.inflight -= 1
        if isinstance(exc, ReadTimeout):  # reading the body, between two chunks
            raise self.upstream._timeout() from exc
        if isinstance(exc, ClientError):
            raise UpstreamError(f"target '{self.upstream.target.name}' failed: {exc}") from exc
