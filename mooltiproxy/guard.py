"""Cerbere, the guard: who is calling, and may they?

Order: blacklist (403) → ban (403) → master key (401). A client IP that fails the key ``max_tries`` times is
banned for the life of the process, unless whitelisted. The client IP is the socket peer; ``X-Forwarded-For`` is
believed only when the peer is a trusted proxy, otherwise any client could dodge a ban with a header.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
from collections import OrderedDict
from collections.abc import Iterable

from .config.model import IPNetwork
from .errors import Forbidden, Unauthorized

__all__ = ["Guard"]

log = logging.getLogger("mooltiproxy.guard")

#: failure counters kept at most (oldest forgotten first), so a flood of addresses cannot exhaust memory
MAX_TRACKED = 65536


def _contains(networks: tuple[IPNetwork, ...], ip: str) -> bool:
    if not networks:
        return False
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return False
    return any(address in net for net in networks)


def _address(hop: str) -> str | None:
    """The address in one X-Forwarded-For hop (``1.2.3.4``, ``1.2.3.4:80``, ``[::1]:80``, ``::1``), normalised."""
    hop = hop.strip()
    if hop.startswith("["):
        hop = hop[1 : hop.find("]")] if "]" in hop else ""
    elif hop.count(":") == 1:
        hop = hop.split(":", 1)[0]
    try:
        return str(ipaddress.ip_address(hop))
    except ValueError:
        return None


class Guard:
    def __init__(
        self,
        master_key: str,
        *,
        max_tries: int = 3,
        whitelist: Iterable[IPNetwork] = (),
        blacklist: Iterable[IPNetwork] = (),
        trusted_proxies: Iterable[IPNetwork] = (),
    ) -> None:
        if not master_key:
            raise ValueError("a master key is required")
        self._expected = f"Bearer {master_key}".encode()
        self.max_tries = max_tries
        self.whitelist = tuple(whitelist)
        self.blacklist = tuple(blacklist)
        self.trusted_proxies = tuple(trusted_proxies)
        self._failures: OrderedDict[str, int] = OrderedDict()
        self.banned: set[str] = set()

    def client_ip(self, peer: str | None, forwarded_for: str | None) -> str:
        """The caller's address: the peer, or the nearest untrusted hop of X-Forwarded-For behind our proxies."""
        ip = peer or "unknown"
        if forwarded_for and _contains(self.trusted_proxies, ip):
            for hop in reversed(forwarded_for.split(",")):
                address = _address(hop)
                if address is None:
                    break  # not an address: keep the last hop we can vouch for
                ip = address
                if not _contains(self.trusted_proxies, address):
                    break
        return ip

    def check_address(self, ip: str) -> None:
        if ip in self.banned:
            raise Forbidden("this address is banned after too many failed attempts", code="banned")
        if _contains(self.blacklist, ip):
            raise Forbidden("this address is not allowed", code="blacklisted")

    def check(self, ip: str, authorization: str | None, api_key: str | None = None) -> None:
        """Raise ``Forbidden`` or ``Unauthorized``, or return when the caller may go on.

        The key is ``Authorization: Bearer <key>``, or, without that header, ``x-api-key: <key>`` (as the
        Anthropic SDK sends it).
        """
        self.check_address(ip)
        if not authorization and api_key:
            authorization = f"Bearer {api_key}"
        given = (authorization or "").strip().encode("utf-8", "surrogateescape")
        # The scheme is case-insensitive; the key is compared in constant time.
        if given[:7].lower() == b"bearer ":
            given = b"Bearer " + given[7:].strip()
        if hmac.compare_digest(given, self._expected):
            if self._failures:
                self._failures.pop(ip, None)
            return
        self._fail(ip)
        if authorization:
            raise Unauthorized("Incorrect API key provided.")
        raise Unauthorized("Missing API key: send 'Authorization: Bearer <key>' or 'x-api-key: <key>'.")

    def _fail(self, ip: str) -> None:
        if _contains(self.whitelist, ip):
            return
        count = self._failures.pop(ip, 0) + 1
        if count >= self.max_tries:
            self.banned.add(ip)
            log.warning("banned %s after %d failed attempts", ip, count)
            return
        self._failures[ip] = count
        if len(self._failures) > MAX_TRACKED:
            self._failures.popitem(last=False)
