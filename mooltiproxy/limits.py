"""Per-key limits: requests and tokens per minute, in fixed one-minute windows (of the wall clock, so every
gateway process counts in the same window), counted in the shared state.

* ``rpm``: each request adds one before it goes on; the one that goes over is refused.
* ``tpm``: the tokens of each answer (prompt + completion, from its ``usage``) are added once it is known; a request
  is refused while the window's tokens have reached the limit. The request that crosses the limit is served (its
  size is not known before the answer).

Over a limit the client gets OpenAI's 429: ``{"error": {"type": "requests"|"tokens", "code":
"rate_limit_exceeded", ...}}`` with ``Retry-After``, the seconds until the window ends. When the shared state cannot
count (Redis unreachable), requests go on (``redis_limits_on_failure: open``) or get a 503 (``closed``).
"""

from __future__ import annotations

import math
import time
from typing import Any

from .errors import GatewayError
from .keys import VirtualKey
from .state import SharedState

__all__ = ["WINDOW", "Limiter", "RateLimited", "usage_tokens"]

#: seconds of one window
WINDOW = 60
#: seconds a window's counters are kept (a little more than the window, for clocks slightly apart)
_TTL = 2 * WINDOW


class RateLimited(GatewayError):
    status = 429
    type = "requests"
    code = "rate_limit_exceeded"


def usage_tokens(answer: Any) -> int | None:
    """Prompt + completion tokens of an answer's ``usage`` (OpenAI's, or Anthropic's input + output)."""
    usage = answer.get("usage") if isinstance(answer, dict) else None  # parsed JSON: a dict or nothing
    if not isinstance(usage, dict):
        return None
    total = usage.get("total_tokens")
    if isinstance(total, int):
        return total
    parts = [usage.get(k) for k in ("prompt_tokens", "completion_tokens", "input_tokens", "output_tokens")]
    counts = [p for p in parts if isinstance(p, int)]
    return sum(counts) if counts else None


class Limiter:
    def __init__(self, state: SharedState, on_failure: str = "open") -> None:
        self.state = state
        self.closed = on_failure == "closed"

    async def admit(self, key: VirtualKey) -> None:
        """Raise ``RateLimited`` when ``key`` is over one of its limits in this window."""
        if key.rpm is None and key.tpm is None:
            return
        now = time.time()
        window = int(now // WINDOW)
        counters: list[tuple[str, int]] = []
        if key.rpm is not None:
            counters.append((f"{key.name}:rpm:{window}", 1))
        if key.tpm is not None:
            counters.append((f"{key.name}:tpm:{window}", 0))
        values = await self.state.add(counters, _TTL)
        if values is None:
            if self.closed:
                raise GatewayError(
                    "rate limits cannot be checked right now; try again shortly",
                    status=503,
                    code="rate_limits_unavailable",
                    headers={"Retry-After": "1"},
                )
            return
        wait = max(1, math.ceil((window + 1) * WINDOW - now))
        if key.rpm is not None and values[0] > key.rpm:
            raise _limited(key, "requests", "RPM", key.rpm, values[0] - 1, wait)
        if key.tpm is not None and values[-1] >= key.tpm:
            raise _limited(key, "tokens", "TPM", key.tpm, values[-1], wait)

    async def spend(self, key: VirtualKey, tokens: int | None) -> None:
        """Count the tokens an answer used against ``key``'s ``tpm``."""
        if key.tpm is None or not tokens:
            return
        window = int(time.time() // WINDOW)
        await self.state.add([(f"{key.name}:tpm:{window}", tokens)], _TTL)


def _limited(key: VirtualKey, kind: str, short: str, limit: int, used: int, wait: int) -> RateLimited:
    return RateLimited(
        f"Rate limit reached for key '{key.name}' on {kind} per min ({short}): Limit {limit}, Used {used}."
        f" Please try again in {wait}s.",
        type=kind,
        headers={"Retry-After": str(wait)},
    )
