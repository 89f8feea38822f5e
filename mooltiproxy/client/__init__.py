"""A lean HTTP/1.1 client for the targets: pooled keep-alive connections, one request at a time on each.

Measured on the bench upstream, aiohttp's ``ClientSession`` spends about 110 µs of CPU per request; this client,
an ``asyncio.Protocol`` over the ``httptools`` (llhttp) response parser, about 15 (see bench/README.md). It does
what the gateway needs and nothing else: no cookies, no automatic redirects, decompression, proxies or auth (the
caller, ``upstream``, does redirects and adds the target's key).

Every wait is bounded: the connect by ``connect_timeout``, a free slot in the pool, the answer's headers and every
chunk of its body by ``read_timeout``. A connection is reused only after an answer was read to its end and the
server keeps it alive; one whose answer was not finished (the caller left, a timeout, an error) is closed. A
reused connection that the server closed before answering is replaced once by a new one, the usual race of
keep-alive clients; nothing had been answered on it, so the target has not processed the request.
"""

from .connection import Connection, Response
from .pool import Pool
from .wire import (
    BadResponse,
    ClientError,
    ConnectFailed,
    ConnectTimeout,
    Disconnected,
    InvalidHeader,
    Origin,
    ReadTimeout,
)

__all__ = [
    "BadResponse",
    "ClientError",
    "ConnectFailed",
    "ConnectTimeout",
    "Connection",
    "Disconnected",
    "InvalidHeader",
    "Origin",
    "Pool",
    "ReadTimeout",
    "Response",
]
