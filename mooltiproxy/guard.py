"""Cerbere, the guard: who is calling, and may they?

Order: ban (403) → blacklist (403) → master key, else a virtual key (401). A client IP that fails the key
``max_tries`` times is banned, unless whitelisted: for ``ban_seconds``, or for the life of the state (the process's
memory, or Redis; see ``state``). The client IP is the socket peer; ``X-Forwarded-For`` is believed only when the
peer is a trusted proxy, otherwise any client could dodge a ban with a header. An IPv4-mapped IPv6 address
(``::ffff:1.2.3.4``, as a dual-stack socket reports IPv4 peers) is the IPv4 address, for lists and bans alike. With
``cerbere.ban_ipv6_prefix: 64``, failures and bans count per /64 of an IPv6 address, so one host cannot dodge a ban
by walking through the addresses of its network.

The master key is compared in constant time. A virtual key is hashed, then looked up (see ``keys``); a revoked or
expired one is a 401 but not a failure (it was issued: nobody is guessing).
"""

from __future__ import annotations

import functools
import hmac
import ipaddress
import logging
from collections.abc import Callable, Iterable

from .config.model import IPNetwork
from .errors import Forbidden, Unauthorized
from .keys import KeyRing, VirtualKey
from .state import MemoryState, SharedState

__all__ = ["Guard", "ban_subject", "normal_address"]

log = logging.getLogger("mooltiproxy.guard")


def _ignore(*_args: object) -> None:
    pass


def _contains(networks: tuple[IPNetwork, ...], ip: str) -> bool:
    if not networks:
        return False
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return False
    return any(address in net for net in networks)


@functools.lru_cache(maxsize=4096)  # the same few peers ask again and again; parsing one costs microseconds
def normal_address(text: str) -> str | None:
    """``text`` as an IP address in its one canonical spelling (IPv4-mapped IPv6 as IPv4), or None."""
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)


def ban_subject(ip: str, ipv6_prefix: int = 128) -> str:
    """What failures and bans are counted against: the address, or its IPv6 network of ``ipv6_prefix`` bits."""
    if ipv6_prefix < 128 and ":" in ip:
        try:
            return str(ipaddress.IPv6Network(f"{ip}/{ipv6_prefix}", strict=False))
        except ValueError:
            return ip
    return ip


def _address(hop: str) -> str | None:
    """The address in one X-Forwarded-For hop (``1.2.3.4``, ``1.2.3.4:80``, ``[::1]:80``, ``::1``), normalised."""
    hop = hop.strip()
    if hop.startswith("["):
        hop = hop[1 : hop.find("]")] if "]" in hop else ""
    elif hop.count(":") == 1:
        hop = hop.split(":", 1)[0]
    return normal_address(hop)


class Guard:
    def __init__(
        self,
        master_key: str,
        *,
        max_tries: int = 3,
        whitelist: Iterable[IPNetwork] = (),
        blacklist: Iterable[IPNetwork] = (),
        trusted_proxies: Iterable[IPNetwork] = (),
        ban_seconds: float | None = None,
        ban_ipv6_prefix: int = 128,
        state: SharedState | None = None,
        keys: KeyRing | None = None,
    ) -> None:
        if not master_key:
            raise ValueError("a master key is required")
        self._expected = f"Bearer {master_key}".encode()
        self.max_tries = max_tries
        self.whitelist = tuple(whitelist)
        self.blacklist = tuple(blacklist)
        self.trusted_proxies = tuple(trusted_proxies)
        self.ban_seconds = ban_seconds
        self.ban_ipv6_prefix = ban_ipv6_prefix
        self.state: SharedState = state if state is not None else MemoryState()
        self.keys = keys
        #: told of each 401 with its reason (missing, invalid, revoked, expired), and of each ban (for the metrics)
        self.on_failure: Callable[[str], None] = _ignore
        self.on_ban: Callable[[], None] = _ignore

    def matches(self, given: bytes) -> bool:
        """Whether ``given`` (``Bearer <key>``) is the master key, compared in constant time."""
        return hmac.compare_digest(given, self._expected)

    def client_ip(self, peer: str | None, forwarded_for: str | None) -> str:
        """The caller's address: the peer, or the nearest untrusted hop of X-Forwarded-For behind our proxies."""
        ip = (normal_address(peer) or peer) if peer else "unknown"
        if forwarded_for and _contains(self.trusted_proxies, ip):
            for hop in reversed(forwarded_for.split(",")):
                address = _address(hop)
                if address is None:
                    break  # not an address: keep the last hop we can vouch for
                ip = address
                if not _contains(self.trusted_proxies, address):
                    break
        return ip

    async def check_address(self, ip: str, passed: bool = False) -> None:
        if await self.state.check(ban_subject(ip, self.ban_ipv6_prefix), passed):
            raise Forbidden("this address is banned after too many failed attempts", code="banned")
        if _contains(self.blacklist, ip):
            raise Forbidden("this address is not allowed", code="blacklisted")

    async def check(self, ip: str, authorization: str | None, api_key: str | None = None) -> VirtualKey | None:
        """Raise ``Forbidden`` or ``Unauthorized``, or return when the caller may go on: None for the master key,
        else the virtual key used.

        The key is ``Authorization: Bearer <key>``, or, without that header, ``x-api-key: <key>`` (as the
        Anthropic SDK sends it).
        """
        if not authorization and api_key:
            authorization = f"Bearer {api_key}"
        given = (authorization or "").strip().encode("utf-8", "surrogateescape")
        # The scheme is case-insensitive; the key is compared in constant time.
        if given[:7].lower() == b"bearer ":
            given = b"Bearer " + given[7:].strip()
        master = self.matches(given)
        key = None
        if not master and self.keys is not None and given[:7] == b"Bearer ":
            key = self.keys.find(given[7:])
        usable = key is not None and key.revoked_at is None and not key.expired()
        await self.check_address(ip, master or usable)
        if master:
            return None
        if key is not None:
            if key.revoked_at is not None:
                self.on_failure("revoked")
                raise Unauthorized(f"The API key '{key.name}' was revoked.")
            if key.expired():
                self.on_failure("expired")
                raise Unauthorized(f"The API key '{key.name}' has expired.")
            return key
        self.on_failure("invalid" if authorization else "missing")
        subject = ban_subject(ip, self.ban_ipv6_prefix)
        if not _contains(self.whitelist, ip) and await self.state.fail(subject, self.max_tries, self.ban_seconds):
            log.warning("banned %s after %d failed attempts", subject, self.max_tries)
            self.on_ban()
        if authorization:
            raise Unauthorized("Incorrect API key provided.")
        raise Unauthorized("Missing API key: send 'Authorization: Bearer <key>' or 'x-api-key: <key>'.")
