"""The plug-in API: what mappers and prompters receive, and what they may return.

A route's mapping entry names up to two mappers and a prompter (config keys ``in``, ``out``, ``prompter``):

* **request mapper** (``in``): ``(payload, ctx) -> payload``, sync or async. ``payload`` is the client's parsed
  JSON body. It may set ``ctx.upstream_path`` (e.g. to the streaming endpoint) and ``ctx.stream`` (the answer
  will be an event stream), keep what the answer mapper needs in ``ctx.state``, return a ``Fanout`` to send
  several upstream requests at once, or raise ``BadRequest`` to refuse the request.
* **answer mapper** (``out``): ``(payload, ctx) -> payload``, sync or async, called with the upstream's parsed JSON
  answer (a list of answers after a ``Fanout``). It may also provide, as attributes of the callable:

  - ``stream(ctx) -> StreamTranslator``: used when ``ctx.stream`` is true, to translate the event stream;
  - ``error(status, body, ctx) -> GatewayError | None``: translates an upstream error answer (non-2xx).
    Without it, upstream errors are passed through as they are.
* **prompter**: ``(messages, ctx) -> (prompt, stops)``, sync or async; ``stops`` may be a string, a list or None.
  A request mapper calls it through ``await ctx.render(messages)``, which always returns a ``Prompt``.

Nothing here does I/O: mappers, prompters and translators are pure and are tested with plain data.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple, Protocol, runtime_checkable

from .errors import BadRequest, GatewayError

__all__ = [
    "AnswerMapper",
    "Fanout",
    "MappingContext",
    "Prompt",
    "PrompterFn",
    "RequestMapper",
    "StreamTranslator",
    "Template",
    "USAGE_COUNTS",
    "USAGE_TOKENS",
]

JSON = Any

#: key of ``ctx.state`` where a stream translator that knows them puts the tokens the answer used (prompt +
#: completion), so that a key's tokens-per-minute limit counts them
USAGE_TOKENS = "usage_tokens"
#: key of ``ctx.state`` where a stream translator puts ``(prompt tokens, completion tokens)`` it saw (either may be
#: None), for the token metrics
USAGE_COUNTS = "usage_counts"


class Prompt(NamedTuple):
    """A rendered prompt and the stop sequences that end the model's turn."""

    text: str
    stop: list[str]


@runtime_checkable
class Template(Protocol):
    """A resolved prompt template (role separators or a Jinja chat template), compiled at start-up."""

    name: str
    stop: list[str]

    def render(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        add_generation_prompt: bool = True,
        tools: Sequence[Mapping[str, Any]] | None = None,
        **kwargs: Any,
    ) -> Prompt:
        """Render ``messages``; raise ``BadRequest`` when the template refuses the conversation."""
        ...


class Fanout:
    """Returned by a request mapper to send several upstream requests; the answer mapper then gets a list."""

    __slots__ = ("payloads",)

    def __init__(self, payloads: Sequence[JSON]) -> None:
        self.payloads = list(payloads)


class StreamTranslator(Protocol):
    """Sans-IO translation of upstream event streams into the client's event stream.

    ``feed(index, data)`` gets raw upstream bytes of stream ``index`` (several only after a ``Fanout``) cut
    anywhere, and returns bytes for the client (maybe ``b""``). ``end(index)`` says stream ``index`` ended.
    ``finish()`` returns the trailing bytes once every stream ended. Any of them may raise a ``GatewayError``:
    before the first client byte was sent the gateway answers it with its HTTP status; afterwards it sends
    ``fail(error)`` and ends the stream.
    """

    content_type: str

    def feed(self, index: int, data: bytes) -> bytes: ...

    def end(self, index: int) -> bytes: ...

    def finish(self) -> bytes: ...

    def fail(self, error: GatewayError) -> bytes: ...


RequestMapper = Callable[[JSON, "MappingContext"], JSON | Fanout | Awaitable[JSON | Fanout]]
AnswerMapper = Callable[[JSON, "MappingContext"], JSON | Awaitable[JSON]]
PrompterFn = Callable[[list[dict[str, Any]], "MappingContext"], Any]


class MappingContext(Mapping[str, Any]):
    """Per-request context handed to mappers and prompters as their second argument (the original ``cfg``).

    As a mapping it reads the route's mapping entry as configured (``cfg["template"]``, ``cfg.get("path")``…),
    so mappers written for the original gateway keep working.
    """

    __slots__ = (
        "entry",
        "method",
        "options",
        "path",
        "payload",
        "prompter",
        "reply_headers",
        "state",
        "stream",
        "target",
        "template",
        "upstream_path",
    )

    def __init__(
        self,
        target: str,
        path: str,
        upstream_path: str,
        method: str = "POST",
        entry: Mapping[str, Any] | None = None,
        options: Mapping[str, Any] | None = None,
        template: Template | None = None,
        prompter: PrompterFn | None = None,
        payload: JSON = None,
    ) -> None:
        self.target = target
        self.path = path
        self.upstream_path = upstream_path
        self.method = method
        self.entry: Mapping[str, Any] = entry if entry is not None else {}
        #: target-level options: ``model`` (name answered to clients), ``strict``, and any other target key
        self.options: Mapping[str, Any] = options if options is not None else {}
        self.template = template
        self.prompter = prompter
        #: the client's parsed request body (``tools``, ``model``… for prompters and answer mappers)
        self.payload = payload
        #: set by a request mapper when the upstream answer is an event stream
        self.stream = False
        #: scratch space shared by the request mapper and the answer mapper of one request
        self.state: dict[str, Any] = {}
        #: headers of the upstream answer(s), one mapping per upstream request
        self.reply_headers: list[Mapping[str, str]] = []

    def __getitem__(self, key: str) -> Any:
        return self.entry[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.entry)

    def __len__(self) -> int:
        return len(self.entry)

    async def render(self, messages: list[dict[str, Any]]) -> Prompt:
        """Run the route's prompter on ``messages``; ``BadRequest`` when the route has none."""
        if self.prompter is None:
            raise BadRequest("this endpoint has no prompter to turn messages into a prompt", param="messages")
        result = self.prompter(messages, self)
        if type(result) is Prompt:  # what the built-in prompters return
            return result
        if inspect.isawaitable(result):
            result = await result
        return as_prompt(result)


def as_prompt(result: Any) -> Prompt:
    """Normalise what a prompter returned: ``(text, stops)`` with stops a string, a list or None."""
    if isinstance(result, Prompt):
        return result
    if isinstance(result, str):
        return Prompt(result, [])
    text, stops = result
    if stops is None:
        stop_list: list[str] = []
    elif isinstance(stops, str):
        stop_list = [stops]
    else:
        stop_list = [str(s) for s in stops]
    return Prompt(str(text), stop_list)
