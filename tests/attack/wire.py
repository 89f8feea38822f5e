"""Raw sockets for the attack suite: bytes as an attacker writes them, answers as they come back."""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from typing import Any

import orjson


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def exchange(url: str, data: bytes, *, wait: float = 3.0) -> tuple[bytes, bool]:
    """Send ``data``, read until the server closes (True) or stays quiet for ``wait`` seconds (False)."""
    received = b""
    with socket.create_connection(("127.0.0.1", port_of(url)), timeout=wait) as sock:
        sock.sendall(data)
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except TimeoutError:
            return received, False
        except ConnectionResetError:
            pass
    return received, True


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes
    raw_head: bytes = field(repr=False, default=b"")

    def json(self) -> Any:
        return orjson.loads(self.body)

    def error(self) -> dict[str, Any]:
        """The OpenAI-shaped error of the answer, checked for its shape."""
        error = self.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}, error
        assert isinstance(error["message"], str) and error["message"]
        return dict(error)


def answers(data: bytes) -> list[Answer]:
    """Every HTTP/1.1 answer in ``data``, in order (bodies framed by Content-Length, as the gateway's are)."""
    out: list[Answer] = []
    while data:
        head, sep, rest = data.partition(b"\r\n\r\n")
        assert sep, f"an incomplete answer: {data[:200]!r}"
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", len(rest)))
        out.append(Answer(status, headers, rest[:length], head))
        data = rest[length:]
    return out


def one_answer(url: str, data: bytes, *, wait: float = 3.0) -> Answer:
    """The single answer to ``data``; the gateway must also have closed the connection after it."""
    received, closed = exchange(url, data, wait=wait)
    found = answers(received)
    assert len(found) == 1, received
    assert closed, "the connection stayed open"
    return found[0]


def get(path: str, key: str, *extra: str, method: str = "GET", body: bytes = b"") -> bytes:
    """One request's bytes, ``Connection: close``; ``extra`` are raw header lines."""
    lines = [f"{method} {path} HTTP/1.1", "Host: gateway", f"Authorization: Bearer {key}", *extra]
    if body:
        lines.append(f"Content-Length: {len(body)}")
    lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
