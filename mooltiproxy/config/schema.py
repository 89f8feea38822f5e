"""The config file's shape, as typed models (validated once, at start-up; never on the request path).

The original sections and keys (``system``, ``cerbere``, ``targets``, ``templates``) load unchanged; new keys are
optional. Unknown keys are errors, so a typo never silently does nothing.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "CerbereSection",
    "CooldownSection",
    "HealthSection",
    "MappingEntry",
    "ReplicaSection",
    "SystemSection",
    "TargetSection",
]

HttpMethod = Literal["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class SystemSection(_Strict):
    ssl: bool = False
    certfile: str = "certificates/cert.pem"
    keyfile: str = "certificates/key.pem"
    debug: bool = False
    #: ``json``: one JSON object per log line (the access line with its fields)
    log_format: Literal["text", "json"] = "text"
    #: ``HOST:PORT`` of a listener serving ``/-/metrics`` without a key (unset: on the main port, master key needed)
    metrics_host: str | None = None
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    #: seconds; bounds the upstream connect and every read (between chunks for streams)
    timeout: float = Field(default=30, gt=0)
    #: seconds allowed to open a connection to a target (a dead replica costs no more than this)
    connect_timeout: float = Field(default=3, gt=0)
    masterkey: str | None = None
    #: proxies whose X-Forwarded-For header is believed (addresses or CIDR ranges)
    trusted_proxies: list[str] = []
    #: origins allowed by CORS; ["*"] allows any
    cors: list[str] = ["*"]
    #: largest request body accepted, in bytes (413 above)
    max_body_size: int = Field(default=4 * 1024 * 1024, gt=0)
    #: seconds a client has to send a request's headers, from the connection's start or the end of the previous
    #: answer (an idle keep-alive connection closes after it too); bounds slowloris clients
    header_timeout: float = Field(default=15, gt=0)
    #: seconds a client has to send a request's whole body (408 after it); bounds slow-body clients
    body_timeout: float = Field(default=60, gt=0)
    #: open client connections per process (per worker); past it, a new connection gets a 503 and is closed
    max_connections: int = Field(default=1024, ge=1)
    max_redirects: int = Field(default=5, ge=0, le=20)
    #: connections kept per target
    pool_size: int = Field(default=256, ge=1)
    #: SQLite database of the virtual keys (``mooltiproxy keys``), relative to the config file; created when missing
    keys_db: str | None = None
    #: ``redis://host:port/db``: bans, failure counts and limit counters shared by every gateway process
    redis: str | None = None
    #: while Redis is unreachable, requests of keys with limits go on (open) or get a 503 (closed)
    redis_limits_on_failure: Literal["open", "closed"] = "open"
    #: processes serving the port (``auto``: one per core); 1 serves from the ``serve`` process itself
    workers: int | Literal["auto"] = 1
    #: seconds in-flight requests and streams get to finish on SIGTERM before they are cut
    grace_seconds: float = Field(default=30, ge=0)
    #: where ``serve`` writes its PID for ``mooltiproxy reload`` (default: mooltiproxy.pid next to the config)
    pid_file: str | None = None


class CerbereSection(_Strict):
    max_tries: int = Field(default=3, ge=1)
    whitelist: list[str] = []
    blacklist: list[str] = []
    #: seconds a ban lasts (default: for the life of the state, the process's memory or Redis)
    ban_seconds: float | None = Field(default=None, gt=0)
    #: failures and bans of an IPv6 address count for its network of this many bits (64: one host's /64)
    ban_ipv6_prefix: int = Field(default=128, ge=16, le=128)


class MappingEntry(_Strict):
    path: str | None = None
    in_: str | None = Field(default=None, alias="in")
    out: str | None = None
    prompter: str | None = None
    template: str | None = None
    methods: list[HttpMethod] | None = None
    #: upstream path for streamed requests (default: ``path`` with ``/generate`` → ``/generate_stream``)
    stream_path: str | None = None
    #: system prompt used when the conversation has none (fromTemplate, llama2_chat)
    default_system: str | None = None
    #: how the model writes tool calls (chatAnsTGItoOpenAI parses them); default: derived from the template
    tool_format: Literal["llama3", "hermes", "mistral", "none"] | None = None


class ReplicaSection(_Strict):
    url: str
    #: share of the requests, relative to the other replicas' weights
    weight: int = Field(default=1, ge=1, le=1000)


class CooldownSection(_Strict):
    #: failed answers (429, 502, 503, 504) in a row that take a replica out; a refused connection takes it out at once
    failures: int = Field(default=3, ge=1)
    #: seconds a replica stays out before it is tried again
    seconds: float = Field(default=10, gt=0)


class HealthSection(_Strict):
    #: path on the replica's server (not under the base URL's path), e.g. /health for vLLM, llama.cpp and TGI
    path: str = "/health"
    #: seconds between checks
    interval: float = Field(default=5, gt=0)
    #: seconds one check may take
    timeout: float = Field(default=2, gt=0)


class TargetSection(_Strict):
    #: ``openai``: an OpenAI-compatible server (vLLM, llama.cpp, Ollama, TGI's Messages API); its ``url`` is the
    #: OpenAI base URL (with ``/v1``) and ``mapping`` defaults to the OpenAI endpoints passed through
    api: Literal["openai"] | None = None
    url: str | None = None
    #: several servers behind one target, balanced (instead of ``url``)
    replicas: list[str | ReplicaSection] | None = None
    balance: Literal["round_robin", "least_inflight"] = "round_robin"
    #: the model names that route a request to this target (a name, or ``{client name: name sent upstream}``)
    models: list[str | dict[str, str]] | dict[str, str | None] | None = None
    #: targets tried, in order, when every replica of this one failed before the answer started
    fallbacks: list[str] = []
    #: further attempts on other replicas (or the same one after its Retry-After) before falling back
    retries: int = Field(default=2, ge=0, le=10)
    #: longest Retry-After the gateway waits for before retrying; a longer one goes back to the client
    max_retry_wait: float = Field(default=5, ge=0)
    connect_timeout: float | None = Field(default=None, gt=0)
    cooldown: CooldownSection = CooldownSection()
    health: HealthSection | None = None
    key: str | None = None
    envkey: str | None = None
    preserveMethod: bool = False
    #: model name answered to clients (default: the request's ``model``); listed by ``GET /models``
    model: str | None = None
    #: refuse request parameters the target cannot honour instead of ignoring them
    strict: bool = False
    timeout: float | None = Field(default=None, gt=0)
    #: the target's limits (TGI's launcher flags of the same names), so requests beyond them are refused clearly
    max_stop_sequences: int = Field(default=4, ge=0)
    max_top_n_tokens: int = Field(default=5, ge=0)
    max_best_of: int = Field(default=2, ge=1)
    #: most upstream requests one client request may cause (n choices × prompts)
    max_fanout: int = Field(default=128, ge=1)
    #: ``system_fingerprint`` answered to clients (default: none)
    system_fingerprint: str | None = None
    #: exposed paths; optional with ``api: openai``
    mapping: dict[str, Any] | None = None
