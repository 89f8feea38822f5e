"""The upstream side: one pooled keep-alive client per target, redirects, and errors translated once, here.

aiohttp errors never leave this module: unreachable → ``UpstreamError`` (502), timeout → ``UpstreamTimeout``
(504). Bodies are not decompressed here (``auto_decompress=False``) so a pass-through route forwards the upstream
bytes untouched; ``decode_body`` decodes them when a mapper needs to read them.
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager

import aiohttp
from multidict import CIMultiDict
from yarl import URL

from .config.model import Target
from .errors import UpstreamError, UpstreamTimeout

__all__ = ["HOP_BY_HOP", "Upstream", "decode_body"]

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


class Upstream:
    """The pooled client of one target."""

    def __init__(self, target: Target, *, pool_size: int = 256, max_redirects: int = 5) -> None:
        self.target = target
        self.max_redirects = max_redirects
        self._pool_size = pool_size
        self._session: aiohttp.ClientSession | None = None
        self._authorization = f"Bearer {target.api_key}" if target.api_key else None

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(limit=self._pool_size, ttl_dns_cache=300, enable_cleanup_closed=True)
        timeout = aiohttp.ClientTimeout(total=None, connect=self.target.timeout, sock_read=self.target.timeout)
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

    def url(self, path: str, query: str = "") -> URL:
        raw = self.target.url + path + (f"?{query}" if query else "")
        return URL(raw, encoded=True)

    @asynccontextmanager
    async def request(
        self, method: str, path: str, query: str, headers: CIMultiDict[str], body: bytes | None
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """Send one request (following redirects) and yield the response, whose body is not read yet.

        ``headers`` is not changed: the target's key is added to a copy.
        """
        assert self._session is not None, "Upstream.start() was not awaited"
        url = self.url(path, query)
        headers = headers.copy()
        if self._authorization:
            headers["Authorization"] = self._authorization
        name = self.target.name
        try:
            for _hop in range(self.max_redirects + 1):
                response = await self._session.request(
                    method, url, headers=headers, data=body, allow_redirects=False, compress=None
                )
                if response.status not in _REDIRECTS or "Location" not in response.headers:
                    break
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
            else:
                response.release()
                raise UpstreamError(f"target '{name}' redirected more than {self.max_redirects} times")
            try:
                yield response
            finally:
                response.release()
        except asyncio.TimeoutError as exc:
            raise UpstreamTimeout(f"target '{name}' did not answer within {self.target.timeout:g} s") from exc
        except aiohttp.ClientConnectorError as exc:
            raise UpstreamError(f"target '{name}' is unreachable: {exc.os_error.strerror or exc}") from exc
        except aiohttp.ClientError as exc:
            raise UpstreamError(f"target '{name}' failed: {type(exc).__name__}: {exc}") from exc


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
