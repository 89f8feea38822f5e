"""The soak's traffic mix: the kinds of request, their weights, and what each must get back.

Each kind is one request to the gateway and the outcome it must have: a status and a substring of the answer, or,
for the kinds that break off, the way it breaks off. ``bench/mixgen.py`` sends them, in proportion to their weights,
and counts every other outcome as unexpected. The kinds are:

* the eight benchmark scenarios (``bench/scenarios.py``), answered 200 with their expected bytes;
* client errors: an unknown route (404), a body that is not JSON with a valid key (400), a wrong key in
  ``Authorization`` and in ``x-api-key`` (401; the soak's gateway config raises ``cerbere.max_tries`` so that they
  never ban the load generator's address);
* upstream errors: the fake upstream's ``?fail=1`` answers a 500, relayed (pass-through) or translated (chat, chat
  stream); its ``?cut=10`` closes the connection after 10 events of a stream: a translated stream ends with an error
  event, a passed-through one is cut short;
* clients that leave: after the first chunk of a paced stream (translated chat, Anthropic, OpenAI pass-through),
  while the gateway waits for a slow upstream answer (``/generate?delay_ms=50``, left after 10 ms), and halfway
  through sending a request body (a raw socket closed after half the bytes).
"""

from __future__ import annotations

from dataclasses import dataclass

from load import Loader
from scenarios import SCENARIOS

#: read the whole answer: its status and a substring are checked
READ = "read"
#: the answer starts (its status is checked) but its body is cut short: reading it must fail
BROKEN = "broken"
#: read the first chunk (status and substring checked), then close the connection
DROP = "drop"
#: leave after ``abort_ms``, before any answer: an answer that comes sooner is unexpected
ABORT = "abort"
#: send the head and half the body on a raw connection, wait ``abort_ms``, close
PARTIAL = "partial"
ACTIONS = (READ, BROKEN, DROP, ABORT, PARTIAL)

#: weights of the benchmark scenarios in the mix; every other kind weighs 1
WEIGHTS = {
    "passthrough": 4,
    "chat": 4,
    "stream": 3,
    "openai": 3,
    "openai_stream": 3,
    "anthropic": 3,
    "anthropic_stream": 3,
    "anthropic_openai": 2,
}
#: the upstream's pause before each event of the streams that clients leave (a stream then lasts about 100 ms)
DROP_DELAY_MS = 2
#: the upstream's pause before the ``/generate`` answer that the client leaves after ``ABORT_AFTER_MS``
SLOW_ANSWER_MS = 50
ABORT_AFTER_MS = 10
#: how long the half-sent body waits before its connection is closed
PARTIAL_WAIT_MS = 2
#: events of a stream before the upstream closes the connection
CUT_AFTER = 10
INVALID_JSON = '{"model": "gpt-4o-mini", "messages": ['
NOT_FOUND_PATH = "/v1/no-such-route"

#: the kinds beyond the scenarios: name, the scenario whose request it starts from, query string, status,
#: expected bytes, action, what it is
EXTRA_KINDS: tuple[tuple[str, str, str, int, str, str, str], ...] = (
    ("not_found", "chat", "", 404, "unknown_route", READ, f"404: GET {NOT_FOUND_PATH}, valid key"),
    ("bad_json", "chat", "", 400, "not valid JSON", READ, "400: a chat body that is not JSON, valid key"),
    ("bad_key", "chat", "", 401, "invalid_api_key", READ, "401: a wrong key in Authorization"),
    ("bad_key_anthropic", "anthropic", "", 401, "authentication_error", READ, "401: a wrong key in x-api-key"),
    ("upstream_500", "passthrough", "?fail=1", 500, "induced failure", READ, "upstream 500, passed through"),
    ("upstream_500_chat", "chat", "?fail=1", 500, "generation_failed", READ, "upstream 500, translated"),
    ("upstream_500_stream", "stream", "?fail=1", 500, "generation_failed", READ, "upstream 500 before a stream"),
    (
        "upstream_cut_stream",
        "stream",
        f"?cut={CUT_AFTER}",
        200,
        "upstream_error",
        READ,
        "upstream cut mid-stream: translated, ends with an error event",
    ),
    (
        "upstream_cut_anthropic",
        "anthropic_stream",
        f"?cut={CUT_AFTER}",
        200,
        "event: error",
        READ,
        "upstream cut mid-stream: Anthropic, ends with an error event",
    ),
    (
        "upstream_cut_openai",
        "openai_stream",
        f"?cut={CUT_AFTER}",
        200,
        "",
        BROKEN,
        "upstream cut mid-stream: passed through, cut short",
    ),
    ("client_drop_stream", "stream", f"?delay_ms={DROP_DELAY_MS}", 200, "data: ", DROP, "client leaves a stream"),
    (
        "client_drop_anthropic",
        "anthropic_stream",
        f"?delay_ms={DROP_DELAY_MS}",
        200,
        "event: ",
        DROP,
        "client leaves an Anthropic stream",
    ),
    (
        "client_drop_openai",
        "openai_stream",
        f"?delay_ms={DROP_DELAY_MS}",
        200,
        "data: ",
        DROP,
        "client leaves a passed-through stream",
    ),
    (
        "client_abort_wait",
        "passthrough",
        f"?delay_ms={SLOW_ANSWER_MS}",
        0,
        "",
        ABORT,
        f"client leaves after {ABORT_AFTER_MS} ms, the upstream answers after {SLOW_ANSWER_MS}",
    ),
    ("client_abort_body", "chat", "", 0, "", PARTIAL, "client leaves halfway through its body"),
)


@dataclass(frozen=True)
class Kind:
    """One kind of request and the outcome it must have."""

    name: str
    weight: int
    method: str
    url: str
    headers: dict[str, str]
    body: str
    #: the status the answer must have (``ABORT``, ``PARTIAL``: none)
    status: int
    #: bytes the answer (``DROP``: its first chunk) must contain
    expect: str = ""
    action: str = READ
    abort_ms: float = 0.0
    what: str = ""
    #: ``ABORT``: the upstream's pause; an answer read after it came in time, and only the client was late to leave
    #: (its own event loop stalled past both deadlines): counted as such, not as the gateway's fault
    answer_after_ms: float = 0.0


def mix(loader: Loader, wrong_key: str) -> list[Kind]:
    """Every kind of request of the soak, against the gateway ``loader`` loads."""
    scenarios = {s.name: s for s in SCENARIOS}
    specs = [(s.name, s.name, "", 200, s.gateway_expect.decode(), READ, s.title) for s in SCENARIOS]
    kinds: list[Kind] = []
    for name, scenario, query, status, expect, action, what in (*specs, *EXTRA_KINDS):
        load = loader.load_for(scenarios[scenario], True, 1, 1.0, "builtin", query)
        method, url, body, headers = "POST", load.url, load.body.decode(), load.headers
        if name == "not_found":
            method, url, body = "GET", loader.servers.gateway_url + NOT_FOUND_PATH, ""
        elif name == "bad_json":
            body = INVALID_JSON
        elif name == "bad_key":
            headers = {**headers, "Authorization": f"Bearer {wrong_key}"}
        elif name == "bad_key_anthropic":
            headers = {**headers, "x-api-key": wrong_key}
        abort_ms = {ABORT: ABORT_AFTER_MS, PARTIAL: PARTIAL_WAIT_MS}.get(action, 0.0)
        weight = WEIGHTS.get(name, 1)
        late = SLOW_ANSWER_MS if action == ABORT else 0.0
        kinds.append(Kind(name, weight, method, url, headers, body, status, expect, action, abort_ms, what, late))
    return kinds
