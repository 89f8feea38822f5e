"""Server-sent events: an incremental, sans-IO decoder and the encoder for OpenAI-style data-only events.

The decoder follows the WHATWG event-stream rules that matter for relaying LLM streams
(https://html.spec.whatwg.org/multipage/server-sent-events.html#event-stream-interpretation):

* lines end with ``\\r\\n``, ``\\n`` or ``\\r``, also when a ``\\r\\n`` pair is split across two reads;
* an empty line dispatches the event; several ``data`` lines are joined with ``\\n``;
* ``data:value`` and ``data: value`` are the same (one leading space is dropped);
* comment lines (``:`` keep-alives) and other fields (``event``, ``id``, ``retry``) are ignored;
* bytes are decoded as UTF-8 only once a line is complete, so a character cut between reads is fine.

Only the ``data`` of each event is returned: the upstreams we read (TGI) send nothing else.
"""

from __future__ import annotations

__all__ = ["DONE", "SSEDecoder", "encode_data"]

#: the terminator of OpenAI streams
DONE = b"data: [DONE]\n\n"

_LINE_ENDS = (b"\r\n", b"\n", b"\r")


class SSEDecoder:
    """Turns a byte stream cut anywhere into the ``data`` strings of its events.

    ``feed(chunk)`` returns the events completed by ``chunk``; ``flush()`` returns what is left when the
    stream ended (an event whose closing blank line never came is still returned).
    """

    __slots__ = ("_buffer", "_data", "_skip_lf")

    def __init__(self) -> None:
        self._buffer = b""
        self._data: list[str] | None = None
        # a chunk ended with "\r": a "\n" starting the next chunk belongs to the same line end
        self._skip_lf = False

    def feed(self, chunk: bytes) -> list[str]:
        if not chunk:
            return []
        if self._skip_lf:
            self._skip_lf = False
            if chunk[:1] == b"\n":
                chunk = chunk[1:]
                if not chunk:
                    return []
        buffer = self._buffer + chunk if self._buffer else chunk
        lines = buffer.splitlines(keepends=True)
        last = lines[-1]
        if last.endswith(b"\r"):
            self._skip_lf = True
            self._buffer = b""
        elif last.endswith(b"\n"):
            self._buffer = b""
        else:
            self._buffer = last
            lines.pop()
        events: list[str] = []
        for line in lines:
            self._line(line, events)
        return events

    def flush(self) -> list[str]:
        events: list[str] = []
        if self._buffer:
            self._line(self._buffer, events)
            self._buffer = b""
        self._skip_lf = False
        if self._data is not None:
            events.append("\n".join(self._data))
            self._data = None
        return events

    def _line(self, line: bytes, events: list[str]) -> None:
        for end in _LINE_ENDS:
            if line.endswith(end):
                line = line[: -len(end)]
                break
        if not line:
            if self._data is not None:
                events.append("\n".join(self._data))
                self._data = None
            return
        if line.startswith(b"data:"):
            value = line[6:] if line.startswith(b"data: ") else line[5:]
            text = value.decode("utf-8", "replace")
            if self._data is None:
                self._data = [text]
            else:
                self._data.append(text)
        elif line == b"data":  # a field name alone means an empty value
            if self._data is None:
                self._data = [""]
            else:
                self._data.append("")
        # comments (":…") and every other field are ignored


def encode_data(data: bytes) -> bytes:
    """One data-only event around an already encoded payload."""
    return b"data: " + data + b"\n\n"
