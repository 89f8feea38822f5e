"""A minimal, fast fake TGI (and OpenAI) upstream for the benchmark: a raw asyncio ``Protocol`` on uvloop, no framework.

It must never be the bottleneck, so every answer is prepared once at start-up and the HTTP/1.1 parser only does
what the benchmark needs: keep-alive, request bodies with ``Content-Length``, requests handled one after the other
per connection (pipelined requests wait their turn).

Routes:

* ``POST /generate``: a fixed TGI answer with ``details`` and the ``x-prompt-tokens: 12`` header; ``?delay_ms=N``
  sends it after N ms;
* ``POST /generate_stream``: 50 TGI stream events, each its own write and its own HTTP chunk, the last one with
  ``generated_text`` and ``details`` (``input_length`` included); ``?delay_ms=N`` waits N ms before each event;
* ``POST /v1/chat/completions``: an OpenAI upstream (vLLM and the like) answering a fixed ``chat.completion`` with
  ``usage``, or, when the body has ``"stream":true``, 50 ``chat.completion.chunk`` events (each its own write and
  HTTP chunk, the last with ``finish_reason``) then ``data: [DONE]``; ``?delay_ms=N`` paces them too;
* ``GET /health``: ``{}``; anything else: 404.

Induced failures, for the soak (``bench/soak.py``): ``?fail=1`` on any ``POST`` route answers a 500 with a TGI
error body (``{"error": …, "error_type": "generation"}``); ``?cut=N`` ends a stream after its first N events by
closing the connection, without the chunk that ends the body.

Run: ``python bench/upstream.py [--host 127.0.0.1] [--port 0]``; it prints ``listening on HOST:PORT`` once ready.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from typing import cast
from urllib.parse import parse_qs

import orjson

ANSWER_TEXT = " Paris is the capital."
STREAM_EVENTS = 50
STREAM_TOKEN = " tok"
PROMPT_TOKENS = 12
MAX_HEAD = 64 * 1024
MAX_BODY = 16 * 1024 * 1024
MAX_DELAY_MS = 10_000


def generate_body() -> bytes:
    """The ``/generate`` answer: the text plus TGI ``details`` (6 tokens, the last one the end-of-sequence)."""
    pieces = [(3681, " Paris"), (338, " is"), (278, " the"), (7483, " capital"), (29889, "."), (2, "</s>")]
    tokens = [{"id": i, "text": t, "logprob": -0.1, "special": t == "</s>"} for i, t in pieces]
    details = {
        "finish_reason": "eos_token",
        "generated_tokens": len(pieces),
        "seed": None,
        "prefill": [],
        "tokens": tokens,
    }
    return orjson.dumps({"generated_text": ANSWER_TEXT, "details": details})


def stream_events(count: int = STREAM_EVENTS) -> list[bytes]:
    """The ``/generate_stream`` events, each already framed as one HTTP chunk (the last one ends the body)."""
    chunks: list[bytes] = []
    for i in range(1, count + 1):
        event: dict[str, object] = {
            "index": i,
            "token": {"id": i, "text": STREAM_TOKEN, "logprob": -0.1, "special": False},
            "generated_text": None,
            "details": None,
        }
        if i == count:
            event["generated_text"] = STREAM_TOKEN * count
            event["details"] = {
                "finish_reason": "length",
                "generated_tokens": count,
                "seed": None,
                "input_length": PROMPT_TOKENS,
            }
        data = b"data: " + orjson.dumps(event) + b"\n\n"
        chunk = b"%x\r\n%s\r\n" % (len(data), data)
        if i == count:
            chunk += b"0\r\n\r\n"
        chunks.append(chunk)
    return chunks


def chat_completion_body() -> bytes:
    """The OpenAI ``/v1/chat/completions`` answer: the same text as ``/generate``, with ``usage``."""
    choice = {
        "index": 0,
        "message": {"role": "assistant", "content": ANSWER_TEXT},
        "logprobs": None,
        "finish_reason": "stop",
    }
    usage = {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": 6, "total_tokens": PROMPT_TOKENS + 6}
    return orjson.dumps(
        {
            "id": "chatcmpl-bench0001",
            "object": "chat.completion",
            "created": 1700000000,
            "model": "gpt-4o-mini",
            "choices": [choice],
            "usage": usage,
        }
    )


def chat_chunk_events(count: int = STREAM_EVENTS) -> list[bytes]:
    """The OpenAI stream: ``count`` chunk events then ``[DONE]``, each framed as one HTTP chunk (the last ends it)."""
    chunks: list[bytes] = []
    for i in range(1, count + 1):
        delta: dict[str, str] = {"role": "assistant", "content": STREAM_TOKEN} if i == 1 else {"content": STREAM_TOKEN}
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": "length" if i == count else None}
        event = {
            "id": "chatcmpl-bench0002",
            "object": "chat.completion.chunk",
            "created": 1700000000,
            "model": "gpt-4o-mini",
            "choices": [choice],
        }
        data = b"data: " + orjson.dumps(event) + b"\n\n"
        chunks.append(b"%x\r\n%s\r\n" % (len(data), data))
    done = b"data: [DONE]\n\n"
    chunks.append(b"%x\r\n%s\r\n0\r\n\r\n" % (len(done), done))
    return chunks


def response(status: str, content_type: str, body: bytes, extra: bytes = b"") -> bytes:
    head = b"HTTP/1.1 %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n%s\r\n" % (
        status.encode(),
        content_type.encode(),
        len(body),
        extra,
    )
    return head + body


GENERATE = response(
    "200 OK",
    "application/json",
    generate_body(),
    b"x-prompt-tokens: %d\r\nx-generated-tokens: 6\r\n" % PROMPT_TOKENS,
)
STREAM_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
    b"Transfer-Encoding: chunked\r\nx-prompt-tokens: %d\r\n\r\n" % PROMPT_TOKENS
)
STREAM_CHUNKS = stream_events()
CHAT_COMPLETION = response("200 OK", "application/json", chat_completion_body())
CHAT_STREAM_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\nCache-Control: no-cache\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n"
)
CHAT_STREAM_CHUNKS = chat_chunk_events()
HEALTH = response("200 OK", "application/json", b"{}")
FAILURE = response(
    "500 Internal Server Error", "application/json", b'{"error":"induced failure","error_type":"generation"}'
)
NOT_FOUND = response("404 Not Found", "application/json", b'{"error":"not found","error_type":"not_found"}')
BAD_REQUEST = response("400 Bad Request", "text/plain", b"bad request", b"Connection: close\r\n")
TOO_LARGE = response("413 Payload Too Large", "text/plain", b"too large", b"Connection: close\r\n")
NO_CHUNKED = response("411 Length Required", "text/plain", b"send a Content-Length", b"Connection: close\r\n")


def number(params: dict[str, list[str]], name: str) -> float:
    """A number from parsed query parameters (0 when absent or invalid)."""
    values = params.get(name)
    if not values:
        return 0.0
    try:
        return float(values[0])
    except ValueError:
        return 0.0


def delay_of(params: dict[str, list[str]]) -> float:
    """``delay_ms`` from parsed query parameters, in seconds (0 when absent or invalid)."""
    return min(max(number(params, "delay_ms"), 0.0), MAX_DELAY_MS) / 1000


class Upstream(asyncio.Protocol):
    """One connection: parse a request, answer it, then the next one (keep-alive)."""

    __slots__ = ("buffer", "busy", "close_after", "timer", "transport")

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.busy = False  # a paced stream is being sent: later requests wait
        self.close_after = False
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass asyncio's

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.transport = None

    def data_received(self, data: bytes) -> None:
        self.buffer = self.buffer + data if self.buffer else data
        self.process()

    def process(self) -> None:
        # each turn consumes one complete request from the buffer, so the loop ends with it
        while self.buffer and not self.busy and self.transport is not None:
            if not self.handle_one():
                return

    def fail(self, answer: bytes) -> None:
        assert self.transport is not None
        self.transport.write(answer)
        self.transport.close()
        self.buffer = b""

    def handle_one(self) -> bool:
        """Answer the first request of the buffer; False when it is not complete yet."""
        buffer = self.buffer
        end = buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(buffer) > MAX_HEAD:
                self.fail(BAD_REQUEST)
            return False
        lines = buffer[:end].split(b"\r\n")
        parts = lines[0].split(b" ")
        if len(parts) != 3:
            self.fail(BAD_REQUEST)
            return False
        method, target, version = parts
        length = 0
        close = version == b"HTTP/1.0"
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            lower = name.strip().lower()
            if lower == b"content-length":
                try:
                    length = int(value.strip())
                except ValueError:
                    self.fail(BAD_REQUEST)
                    return False
            elif lower == b"transfer-encoding":
                self.fail(NO_CHUNKED)
                return False
            elif lower == b"connection":
                token = value.strip().lower()
                close = token == b"close" or (close and token != b"keep-alive")
        if length < 0 or length > MAX_BODY:
            self.fail(TOO_LARGE)
            return False
        total = end + 4 + length
        if len(buffer) < total:
            return False
        self.buffer = buffer[total:]
        self.close_after = close
        path, _, query = target.partition(b"?")
        self.answer(method, path, query, buffer, end + 4, total)
        return True

    def answer(self, method: bytes, path: bytes, query: bytes, buffer: bytes, start: int, stop: int) -> None:
        """Answer one request; its body is ``buffer[start:stop]`` (only the OpenAI route looks at it)."""
        transport = self.transport
        assert transport is not None
        params = parse_qs(query.decode("latin-1")) if query else {}
        if method == b"POST" and params and number(params, "fail"):
            transport.write(FAILURE)
        elif method == b"POST" and path == b"/generate":
            delay = delay_of(params) if params else 0.0
            if delay:
                self.busy = True
                self.timer = asyncio.get_running_loop().call_later(delay, self.later, GENERATE)
                return
            transport.write(GENERATE)
        elif method == b"POST" and path == b"/generate_stream":
            if self.stream(STREAM_HEAD, STREAM_CHUNKS, params):
                return
        elif method == b"POST" and path == b"/v1/chat/completions":
            if buffer.find(b'"stream":true', start, stop) < 0 and buffer.find(b'"stream": true', start, stop) < 0:
                transport.write(CHAT_COMPLETION)
            elif self.stream(CHAT_STREAM_HEAD, CHAT_STREAM_CHUNKS, params):
                return
        elif path == b"/health" and method in (b"GET", b"HEAD"):
            transport.write(HEALTH)
        else:
            transport.write(NOT_FOUND)
        self.done()

    def stream(self, head: bytes, chunks: list[bytes], params: dict[str, list[str]]) -> bool:
        """Send a stream: all at once, or paced by ``?delay_ms`` (then True: the request is not done yet);
        ``?cut=N``: only its first N events, then the connection is closed."""
        assert self.transport is not None
        delay = delay_of(params) if params else 0.0
        cut = int(number(params, "cut")) if params else 0
        if 0 < cut < len(chunks):
            chunks = chunks[:cut]
            self.close_after = True  # ``done`` closes the connection: the body ends without its last chunk
        self.transport.write(head)
        if delay:
            self.busy = True
            self.timer = asyncio.get_running_loop().call_later(delay, self.paced, chunks, 0, delay)
            return True
        for chunk in chunks:
            self.transport.write(chunk)
        return False

    def later(self, answer: bytes) -> None:
        """Send a delayed answer, then go on with the requests that wait."""
        self.timer = None
        if self.transport is None:
            return
        self.transport.write(answer)
        self.finished()

    def paced(self, chunks: list[bytes], index: int, delay: float) -> None:
        self.timer = None
        if self.transport is None:
            return
        self.transport.write(chunks[index])
        if index + 1 < len(chunks):
            self.timer = asyncio.get_running_loop().call_later(delay, self.paced, chunks, index + 1, delay)
            return
        self.finished()

    def finished(self) -> None:
        """A delayed answer is complete: go on with the requests that wait."""
        self.busy = False
        self.done()
        self.process()

    def done(self) -> None:
        if self.close_after and self.transport is not None:
            self.transport.close()
            self.buffer = b""


async def serve(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Upstream, host, port, backlog=1024, reuse_address=True)
    bound = server.sockets[0].getsockname()[1]
    print(f"listening on {host}:{bound}", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        server.close()  # open keep-alive connections end with the process


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Fake TGI upstream for the benchmark.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (printed once ready)")
    args = parser.parse_args(argv)
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a gateway dependency
        asyncio.run(serve(args.host, args.port))
        return 0
    if sys.version_info >= (3, 11):
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(serve(args.host, args.port))
    else:  # pragma: no cover - Python 3.10
        uvloop.install()
        asyncio.run(serve(args.host, args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
