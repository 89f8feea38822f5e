"""TGI ``/generate_stream`` events → OpenAI ``chat.completion.chunk`` / ``text_completion`` event streams.

Chunks go out as tokens arrive. The only text held back is the shortest tail that could still become a stop
sequence (OpenAI never returns a stop sequence, TGI streams it token by token): when a stop sequence completes,
the text before it goes out and the choice finishes with ``stop``; at the end of the generation the held tail
is sent, as the non-streamed answer keeps it (TGI can also finish with ``stop_sequence`` on a stop that was the
text of a special token, which is not text here). Special tokens are not text.

Chat: a ``{"role": "assistant", "content": ""}`` chunk together with the first content, content chunks, a
``delta: {}`` chunk carrying ``finish_reason``; legacy: ``text`` chunks, then ``text: ""`` + ``finish_reason``.
With ``stream_options.include_usage`` every chunk has ``"usage": null`` and a last chunk ``choices: []``
carries the usage. Then ``data: [DONE]``. Several upstream streams (``n`` > 1) interleave, one choice each.

Tool calls (chat requests with ``tools`` on a route with a tool-call format): content goes out as above until
a tool-call marker begins (only a tail that could still become one is held back, after the stop sequences'
hold-back); the rest is kept until the choice ends. If it parses as calls, each call goes out as a
``tool_calls`` delta with its ``id``, ``type`` and ``name`` (``arguments: ""``), then one with its arguments,
and the choice finishes with ``tool_calls``; otherwise the kept text goes out as content and the choice
finishes as it would have.

Errors: a TGI error event raises the translated ``GatewayError``; so does a stream that ends before its final
event (``UpstreamError``). Before the first byte went out the gateway answers them with their HTTP status.
"""

from __future__ import annotations

from typing import Any

import orjson

from ..errors import GatewayError, UpstreamError
from ..plugin import USAGE_COUNTS, USAGE_TOKENS, MappingContext
from ..sse import DONE, SSEDecoder, encode_data
from ._common import (
    ChatLogprobs,
    RequestState,
    TextLogprobs,
    earliest_stop,
    envelope,
    finish_reason,
    held_tail,
    tool_call_id,
)
from ._tgi_errors import event_error
from .toolcalls import ToolCall, ToolTextStream

__all__ = ["OpenAIStream"]

_Token = tuple[int, int, dict[str, Any], Any]  # start, end, TGI token, its top tokens


class _Choice:
    __slots__ = (
        "decoder",
        "emitted",
        "finished",
        "held",
        "index",
        "prompt_tokens",
        "queue",
        "received",
        "started",
        "stopped",
        "stream",
        "tokens",
        "tools",
    )

    def __init__(self, stream: int, index: int, tools: ToolTextStream | None) -> None:
        self.decoder = SSEDecoder()
        self.stream = stream  # the index of the upstream stream
        self.index = index  # the OpenAI choice index
        self.started = False  # the first chunk of the choice went out
        self.stopped = False  # a stop sequence completed: the rest of the upstream stream is not text
        self.finished = False  # the upstream's final event arrived
        self.held = ""  # text not sent yet
        self.emitted = 0  # characters sent
        self.received = 0  # characters received
        self.tokens = 0  # tokens generated (special ones included), up to the stop when one completed
        self.prompt_tokens: int | None = None
        self.queue: list[_Token] = []  # tokens whose logprobs are not sent yet
        self.tools = tools  # the tool-call reader of the text, when the request's tool calls are parsed


class OpenAIStream:
    """``StreamTranslator`` of TGI event streams into one OpenAI event stream."""

    content_type = "text/event-stream"

    def __init__(self, state: RequestState, ctx: MappingContext) -> None:
        self._state = state
        self._ctx = ctx
        self._chat = state.chat
        self._stops = state.stops
        self._choices: dict[int, _Choice] = {}
        head = envelope(state, "chat.completion.chunk" if state.chat else "text_completion")
        self._head = b"data: " + orjson.dumps(head)[:-1] + b',"choices":'
        self._tail = b',"usage":null}\n\n' if state.include_usage else b"}\n\n"

    # -- StreamTranslator

    def feed(self, index: int, data: bytes) -> bytes:
        choice = self._choice(index)
        out: list[bytes] = []
        for event in choice.decoder.feed(data):
            self._event(choice, event, out)
        return b"".join(out)

    def end(self, index: int) -> bytes:
        choice = self._choice(index)
        out: list[bytes] = []
        for event in choice.decoder.flush():
            self._event(choice, event, out)
        if not choice.finished:
            raise UpstreamError("upstream stream ended before the generation finished")
        return b"".join(out)

    def finish(self) -> bytes:
        expected = max(len(self._state.slots), len(self._choices))
        if any(i not in self._choices or not self._choices[i].finished for i in range(expected)):
            raise UpstreamError("upstream stream ended before the generation finished")
        prompts: dict[int, int] = {}
        completion = 0
        for i, choice in self._choices.items():
            prompt = self._state.slots[i].prompt if i < len(self._state.slots) else 0
            if choice.prompt_tokens is not None:
                prompts.setdefault(prompt, choice.prompt_tokens)
            completion += choice.tokens
        prompt_total = sum(prompts.values())
        self._ctx.state[USAGE_TOKENS] = prompt_total + completion
        self._ctx.state[USAGE_COUNTS] = (prompt_total, completion)
        if not self._state.include_usage:
            return DONE
        usage = {
            "prompt_tokens": prompt_total,
            "completion_tokens": completion,
            "total_tokens": prompt_total + completion,
        }
        return self._head + b'[],"usage":' + orjson.dumps(usage) + b"}\n\n" + DONE

    def fail(self, error: GatewayError) -> bytes:
        return encode_data(error.to_json())

    # -- events

    def _choice(self, index: int) -> _Choice:
        choice = self._choices.get(index)
        if choice is None:
            slots = self._state.slots
            fmt = self._state.tool_format
            tools = ToolTextStream(fmt, self._state.tool_names) if fmt is not None and self._chat else None
            choice = self._choices[index] = _Choice(index, slots[index].choice if index < len(slots) else index, tools)
        return choice

    def _event(self, choice: _Choice, data: str, out: list[bytes]) -> None:
        if not data or choice.finished:
            return
        try:
            event = orjson.loads(data)
        except orjson.JSONDecodeError:
            raise UpstreamError("the model server sent an event that is not JSON") from None
        if not isinstance(event, dict):
            raise UpstreamError("the model server sent an event that is not a JSON object")
        if event.get("error") is not None:
            replies = self._ctx.reply_headers
            raise event_error(event, replies[choice.stream] if choice.stream < len(replies) else None, self._chat)
        token = event.get("token")
        if isinstance(token, dict):
            self._token(choice, token, event.get("top_tokens"), out)
        details = event.get("details")
        if details is not None or event.get("generated_text") is not None:
            self._final(choice, details if isinstance(details, dict) else None, out)

    def _token(self, choice: _Choice, token: dict[str, Any], tops: Any, out: list[bytes]) -> None:
        if choice.stopped:
            return
        choice.tokens += 1
        if token.get("special"):
            return
        text = token.get("text")
        if not isinstance(text, str):
            text = ""
        start = choice.received
        choice.received += len(text)
        if self._state.logprobs is not None:
            choice.queue.append((start, choice.received, token, tops))
        held = choice.held + text
        choice.held = held
        if self._stops:
            cut = earliest_stop(held, self._stops)
            if cut != -1:
                choice.stopped = True
                self._release(choice, cut, out, last=True)
                self._finish(choice, "stop", out)
                return
            keep = held_tail(held, self._stops)
        else:
            keep = 0
        if keep < len(held):
            self._release(choice, len(held) - keep, out, last=False)

    def _final(self, choice: _Choice, details: dict[str, Any] | None, out: list[bytes]) -> None:
        choice.finished = True
        reason = None
        if details is not None:
            reason = details.get("finish_reason")
            prompt = details.get("input_length")
            if isinstance(prompt, int):
                choice.prompt_tokens = prompt
            generated = details.get("generated_tokens")
            if isinstance(generated, int) and not choice.stopped:
                choice.tokens = generated
        if choice.stopped:
            return
        self._release(choice, len(choice.held), out, last=True)
        self._finish(choice, finish_reason(reason), out)

    # -- chunks

    def _release(self, choice: _Choice, count: int, out: list[bytes], *, last: bool) -> None:
        """Send the first ``count`` held characters (``last``: and drop the rest)."""
        text = choice.held[:count]
        choice.held = "" if last else choice.held[count:]
        choice.emitted += count
        logprobs = None
        if self._state.logprobs is not None and choice.queue:
            logprobs = self._logprobs(choice, last)
        if choice.tools is not None:
            text = choice.tools.feed(text)
        if text or logprobs is not None:
            self._content(choice, text, logprobs, out)

    def _logprobs(self, choice: _Choice, last: bool) -> dict[str, Any] | None:
        emitted = choice.emitted
        queue = choice.queue
        n = 0
        if last:  # a token partly sent counts as sent
            while n < len(queue) and queue[n][0] < emitted:
                n += 1
        else:
            while n < len(queue) and queue[n][1] <= emitted:
                n += 1
        if n == 0:
            if last:
                queue.clear()
            return None
        top = self._state.logprobs or 0
        builder = ChatLogprobs(top) if self._chat else TextLogprobs(top)
        for start, _end, token, tops in queue[:n]:  # no echo prefix: echo with logprobs is refused
            builder.add(token, tops, start)
        if last:
            queue.clear()
        else:
            del queue[:n]
        return builder.result()

    def _prefix(self, choice: _Choice) -> str:
        state = self._state
        if not state.echo:
            return ""
        slots = state.slots
        prompt = slots[choice.stream].prompt if choice.stream < len(slots) else 0
        return state.prompts[prompt] if prompt < len(state.prompts) else ""

    def _start(self, choice: _Choice, out: list[bytes]) -> str:
        """Begin the choice: the chat role chunk; the legacy echo text, returned to prepend."""
        choice.started = True
        if self._chat:
            role = {"role": "assistant", "content": ""}
            out.append(self._chunk({"index": choice.index, "delta": role, "logprobs": None, "finish_reason": None}))
            return ""
        return self._prefix(choice)

    def _content(self, choice: _Choice, text: str, logprobs: dict[str, Any] | None, out: list[bytes]) -> None:
        if not choice.started:
            text = self._start(choice, out) + text
        if self._chat:
            body = {"index": choice.index, "delta": {"content": text}, "logprobs": logprobs, "finish_reason": None}
        else:
            body = {"text": text, "index": choice.index, "logprobs": logprobs, "finish_reason": None}
        out.append(self._chunk(body))

    def _finish(self, choice: _Choice, reason: str, out: list[bytes]) -> None:
        if choice.tools is not None:
            rest, calls = choice.tools.end()
            if rest:
                self._content(choice, rest, None, out)
            if calls:
                self._tool_calls(choice, calls, out)
                reason = "tool_calls"
        if not choice.started:
            prefix = self._start(choice, out)
            if prefix:  # legacy echo of a choice without text
                out.append(
                    self._chunk({"text": prefix, "index": choice.index, "logprobs": None, "finish_reason": None})
                )
        if self._chat:
            body: dict[str, Any] = {"index": choice.index, "delta": {}, "logprobs": None, "finish_reason": reason}
        else:
            body = {"text": "", "index": choice.index, "logprobs": None, "finish_reason": reason}
        out.append(self._chunk(body))

    def _tool_calls(self, choice: _Choice, calls: list[ToolCall], out: list[bytes]) -> None:
        """Per call, a delta with its id, type and name, then one with its arguments."""
        index = choice.index
        if not choice.started:
            choice.started = True
            role = {"role": "assistant", "content": None}
            out.append(self._chunk({"index": index, "delta": role, "logprobs": None, "finish_reason": None}))
        fmt = self._state.tool_format or ""
        for k, call in enumerate(calls):
            head = {
                "index": k,
                "id": tool_call_id(fmt),
                "type": "function",
                "function": {"name": call.name, "arguments": ""},
            }
            args = {"index": k, "function": {"arguments": call.arguments}}
            for part in (head, args):
                delta = {"tool_calls": [part]}
                out.append(self._chunk({"index": index, "delta": delta, "logprobs": None, "finish_reason": None}))

    def _chunk(self, choice: dict[str, Any]) -> bytes:
        return self._head + b"[" + orjson.dumps(choice) + b"]" + self._tail
