"""The resolved, immutable settings the gateway runs on (built from the config file by ``load``)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any

from ..plugin import AnswerMapper, MappingContext, PrompterFn, RequestMapper, Template

__all__ = ["Cooldown", "HealthCheck", "IPNetwork", "ReplicaSpec", "Route", "Settings", "Target"]

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class Route:
    """One mapped inbound path of a target, with its plug-ins resolved."""

    inbound: str
    upstream_path: str
    methods: frozenset[str] | None
    request_mapper: RequestMapper | None
    answer_mapper: AnswerMapper | None
    prompter: PrompterFn | None
    template: Template | None
    entry: dict[str, Any]

    @property
    def translates(self) -> bool:
        return self.request_mapper is not None or self.answer_mapper is not None

    def context(self, target: Target, method: str = "POST", payload: Any = None) -> MappingContext:
        """A fresh per-request context for this route's plug-ins."""
        # positional: a class called with keywords gets them through a new dict, which costs more than the rest
        return MappingContext(
            target.name,
            self.inbound,
            self.upstream_path,
            method,
            self.entry,
            target.options,
            self.template,
            self.prompter,
            payload,
        )


@dataclass(frozen=True)
class ReplicaSpec:
    url: str  # base URL without trailing slash
    weight: int = 1


@dataclass(frozen=True)
class Cooldown:
    failures: int = 3
    seconds: float = 10.0


@dataclass(frozen=True)
class HealthCheck:
    path: str = "/health"
    interval: float = 5.0
    timeout: float = 2.0


@dataclass(frozen=True)
class Target:
    name: str
    url: str  # base URL of the first replica, without trailing slash
    api_key: str | None
    preserve_method: bool
    timeout: float
    options: dict[str, Any]
    routes: dict[str, Route]
    api: str | None = None
    replicas: tuple[ReplicaSpec, ...] = ()
    balance: str = "round_robin"
    #: client model name -> name sent upstream (the same when not rewritten); empty: any model
    models: dict[str, str] = field(default_factory=dict)
    fallbacks: tuple[str, ...] = ()
    retries: int = 2
    max_retry_wait: float = 5.0
    connect_timeout: float = 3.0
    cooldown: Cooldown = Cooldown()
    health: HealthCheck | None = None

    def find(self, path: str) -> Route | None:
        """The route for ``path``; a ``/v1`` prefix is optional when only the bare path is mapped."""
        route = self.routes.get(path)
        if route is None and path.startswith("/v1/"):
            route = self.routes.get(path[3:])
        return route


@dataclass(frozen=True)
class Settings:
    host: str
    port: int
    master_key: str
    targets: dict[str, Target]
    default_target: str
    timeout: float = 30.0
    debug: bool = False
    #: "text" or "json" (one object per line)
    log_format: str = "text"
    #: (host, port) of the key-less metrics listener, or None: ``/-/metrics`` on the main port with the master key
    metrics_host: tuple[str, int] | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    trusted_proxies: tuple[IPNetwork, ...] = ()
    cors_origins: tuple[str, ...] = ("*",)
    max_body_size: int = 4 * 1024 * 1024
    header_timeout: float = 15.0
    body_timeout: float = 60.0
    max_connections: int = 1024
    max_redirects: int = 5
    pool_size: int = 256
    max_tries: int = 3
    whitelist: tuple[IPNetwork, ...] = ()
    blacklist: tuple[IPNetwork, ...] = ()
    #: seconds a ban lasts (None: for the life of the state)
    ban_seconds: float | None = None
    #: failures and bans of an IPv6 address count for its network of this many bits (128: the address)
    ban_ipv6_prefix: int = 128
    #: the virtual keys' SQLite database (resolved against the config file's folder), or None: master key only
    keys_db: str | None = None
    #: Redis URL of the shared state, or None: the process's memory
    redis: str | None = None
    redis_limits_on_failure: str = "open"
    #: worker processes (``auto`` resolved to the number of cores); 1: the serving process itself
    workers: int = 1
    #: seconds in-flight requests get on SIGTERM
    grace_seconds: float = 30.0
    #: the PID file ``serve`` writes (resolved against the config file's folder), or None: none
    pid_file: str | None = None
    #: True when the master key came from the config file rather than MOOLTIPROXY_KEY
    key_from_file: bool = False
    source: str = "config"
    warnings: tuple[str, ...] = field(default=())
    #: model name -> target serving it, from the targets' ``models``
    model_index: dict[str, str] = field(default_factory=dict)

    @property
    def secrets(self) -> tuple[str, ...]:
        """Every secret the gateway knows, for redaction in logs."""
        keys = [self.master_key] + [t.api_key for t in self.targets.values() if t.api_key]
        return tuple(k for k in keys if k)
