"""Settings of the simulated TGI server."""

from __future__ import annotations

from dataclasses import dataclass, field

from .validation import Limits

__all__ = ["TGI_VERSION", "SimSettings"]

TGI_VERSION = "3.3.6-dev0"


@dataclass
class SimSettings:
    """How the simulator behaves.

    ``token_delay`` and ``keepalive`` are in seconds (``keepalive`` 0 = no ``:`` comments); ``data_prefix`` is
    ``"data: "`` (TGI ≥ 2.1) or ``"data:"`` (TGI ≤ 2.0); ``chunking`` is ``"event"`` (one write per event) or
    ``"bytes:N"`` (the stream re-cut into N-byte writes, ignoring event boundaries).
    """

    model_id: str = "simulated/tgi-model"
    limits: Limits = field(default_factory=Limits)
    max_concurrent_requests: int = 128
    token_delay: float = 0.0
    data_prefix: str = "data: "
    keepalive: float = 0.0
    chunking: str = "event"
    api_key: str | None = None
    payload_limit: int = 2_000_000
    model_pipeline_tag: str | None = "text-generation"
    compute_type: str = "gpu+optimized"

    def __post_init__(self) -> None:
        if self.data_prefix not in ("data: ", "data:"):
            raise ValueError(f"data_prefix must be 'data: ' or 'data:', not {self.data_prefix!r}")
        if self.token_delay < 0 or self.keepalive < 0:
            raise ValueError("token_delay and keepalive must be >= 0")
        if self.max_concurrent_requests < 0 or self.payload_limit < 0:
            raise ValueError("max_concurrent_requests and payload_limit must be >= 0")
        self.chunk_size()  # fails early on a malformed chunking

    def chunk_size(self) -> int | None:
        """The write size of ``bytes:N`` chunking, or None for one write per event."""
        if self.chunking == "event":
            return None
        kind, _, size = self.chunking.partition(":")
        if kind == "bytes" and size.isdigit() and int(size) > 0:
            return int(size)
        raise ValueError(f"chunking must be 'event' or 'bytes:N' with N >= 1, not {self.chunking!r}")
