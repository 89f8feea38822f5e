"""Request ids and the log formats.

Every request has an id: the client's ``X-Request-Id`` when it is a sane value (1 to 128 visible ASCII characters,
no spaces), else a new one (32 hex digits). It is sent to the target, returned on every answer and written in the
access line; with ``system.log_format: json``, every record logged while the request is served carries it too.

``json``: one JSON object per line. The access line (logger ``mooltiproxy.access``) has the fields ``time``,
``level``, ``request_id``, ``client``, ``method``, ``path``, ``target``, ``route``, ``model``, ``status``,
``upstream_ms``, ``total_ms``, ``tokens_in``, ``tokens_out``; other records have ``time``, ``level``, ``logger``,
``message`` (and ``request_id`` during a request, ``error`` with the traceback of an exception).
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import sys
import time
from collections.abc import Mapping
from contextvars import ContextVar
from datetime import datetime, timezone
from typing import Any, TextIO

import orjson

__all__ = [
    "ACCESS_LOGGER",
    "ACCESS_TEXT",
    "JsonFormatter",
    "RequestInfo",
    "access",
    "configure_logging",
    "current",
    "start",
]

ACCESS_LOGGER = "mooltiproxy.access"
#: the text access line, formatted from the access record's fields
ACCESS_TEXT = (
    '%(client)s "%(method)s %(path)s" target=%(target)s status=%(status)d upstream_ms=%(upstream_ms).1f'
    " total_ms=%(total_ms).1f request_id=%(request_id)s"
)
_TEXT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_TEXT_PID = "%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s"
_MAX_ID = 128


class RequestInfo:
    """The request being served (one per request: the server runs each request in a task of its own)."""

    __slots__ = ("id", "open", "stream")

    def __init__(self, request_id: str) -> None:
        self.id = request_id
        #: the handler has not finished yet
        self.open = True
        #: the answer is an event stream that has started (counted in the in-flight streams until the end)
        self.stream = False


current: ContextVar[RequestInfo | None] = ContextVar("mooltiproxy_request", default=None)


def sane(value: str | None) -> bool:
    """A client's request id worth keeping: 1-128 visible ASCII characters."""
    return (
        value is not None and 0 < len(value) <= _MAX_ID and value.isascii() and value.isprintable() and " " not in value
    )


def start(header: str | None) -> RequestInfo:
    """The id of a new request (the client's when sane, else a new one), made current."""
    # A made id has to be unique, not secret: the random module's generator (reseeded in each forked worker), not
    # a system call per request.
    info = RequestInfo(header if header is not None and sane(header) else f"{random.getrandbits(128):032x}")
    current.set(info)
    return info


def _time(created: float) -> str:
    return datetime.fromtimestamp(created, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class JsonFormatter(logging.Formatter):
    """One JSON object per record; the access record's fields are its arguments (a mapping).

    ``pid``: each object also has the ``pid`` of the process that wrote it."""

    def __init__(self, pid: bool = False) -> None:
        super().__init__()
        self.pid = pid

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {"time": _time(record.created), "level": record.levelname.lower()}
        if self.pid:
            out["pid"] = record.process
        if record.name == ACCESS_LOGGER and isinstance(record.args, Mapping):
            out.update(record.args)
        else:
            out["logger"] = record.name
            out["message"] = record.getMessage()
            info = current.get()
            if info is not None:
                out["request_id"] = info.id
            if record.exc_info:
                out["error"] = self.formatException(record.exc_info)
        return orjson.dumps(out, default=str).decode()


class TextFormatter(logging.Formatter):
    """The text format, with the time of day formatted once per second rather than for every line."""

    _second = -1
    _text = ""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return self.stamp(record.created, int(record.msecs))

    def stamp(self, created: float, msecs: int) -> str:
        second = int(created)
        if second != self._second:
            self._second, self._text = second, time.strftime("%Y-%m-%d %H:%M:%S", self.converter(second))
        return f"{self._text},{msecs:03d}"


class _Direct:
    """The access line written straight to the one handler ``configure_logging`` installed, as its formatter
    would write it: a ``LogRecord`` and the logging machinery cost more than the rest of a pass-through request's
    bookkeeping. Whenever anything else listens (another handler, a filter, a test's capture), the line goes
    through ``logging`` as any record does."""

    def __init__(self, handler: logging.StreamHandler[TextIO], json: bool, pid: bool) -> None:
        self.handler = handler
        self.json = json
        self.pid = pid
        self.text = handler.formatter if isinstance(handler.formatter, TextFormatter) else TextFormatter(_TEXT)
        self.root = logging.getLogger()
        self.logger = logging.getLogger(ACCESS_LOGGER)
        self._second = -1
        self._prefix = self._who = ""

    def alone(self) -> bool:
        root, logger, handler = self.root, self.logger, self.handler
        return (
            len(root.handlers) == 1
            and root.handlers[0] is handler
            and not logger.handlers
            and not logger.filters
            and not root.filters
            and not handler.filters
            and logger.propagate
            and handler.level <= logging.INFO
        )

    def json_line(self, f: Mapping[str, Any]) -> str:
        out: dict[str, object] = {"time": _time(time.time()), "level": "info"}
        if self.pid:
            out["pid"] = os.getpid()
        out.update(f)
        return orjson.dumps(out, default=str).decode()

    def text_line(self, client: str, method: str, path: str, target: str, status: int, up: float, total: float) -> str:
        """The text line of ``ACCESS_TEXT`` (without its request id), formatted here rather than by logging."""
        now = time.time()
        second = int(now)
        if second != self._second:
            who = f"INFO [{os.getpid()}]" if self.pid else "INFO"
            self._second, self._prefix = second, self.text.stamp(second, 0)[:-3]
            self._who = f" {who} {ACCESS_LOGGER}: "
        return (
            f'{self._prefix}{int((now - second) * 1000):03d}{self._who}{client} "{method} {path}" target={target} '
            f"status={status:d} upstream_ms={up:.1f} total_ms={total:.1f} request_id="
        )

    def write(self, text: str) -> None:
        handler = self.handler
        with handler.lock or contextlib.nullcontext():
            handler.stream.write(text)
            handler.stream.flush()


_direct: _Direct | None = None
_access = logging.getLogger(ACCESS_LOGGER)


def access(
    request_id: str,
    client: str,
    method: str,
    path: str,
    target: str,
    route: str,
    model: str | None,
    status: int,
    upstream_seconds: float,
    total_seconds: float,
    tokens_in: int | None,
    tokens_out: int | None,
) -> None:
    """Log one access line (the caller has checked that the access logger is enabled for INFO)."""
    direct = _direct
    if direct is not None and not direct.json and direct.alone():
        try:  # the common case, formatted without the record's mapping
            up, total = upstream_seconds * 1000, total_seconds * 1000
            direct.write(direct.text_line(client, method, path, target, status, up, total) + request_id + "\n")
            return
        except Exception:  # a closed or broken stream: let logging report it its own way
            pass
    fields = {
        "request_id": request_id,
        "client": client,
        "method": method,
        "path": path,
        "target": target,
        "route": route,
        "model": model,
        "status": status,
        "upstream_ms": round(upstream_seconds * 1000, 1),
        "total_ms": round(total_seconds * 1000, 1),
        "tokens_in": tokens_in,
        "tokens_out": tokens_out,
    }
    if direct is not None and direct.json and direct.alone():
        try:
            direct.write(direct.json_line(fields) + "\n")
            return
        except Exception:
            pass
    _access.info(ACCESS_TEXT, fields)


def configure_logging(debug: bool, log_format: str = "text", pid: bool = False) -> None:
    """Log to standard error, as text (the default) or one JSON object per line.

    ``pid``: every record says which process wrote it (``[PID]`` after the level, or a ``pid`` field), as the
    processes of ``serve --workers N`` do."""
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter(pid=pid))
    else:
        handler.setFormatter(TextFormatter(_TEXT_PID if pid else _TEXT))
    logging.basicConfig(level=logging.DEBUG if debug else logging.INFO, handlers=[handler])
    global _direct
    _direct = _Direct(handler, log_format == "json", pid) if logging.getLogger().handlers == [handler] else None
    # No format here names the source line, the thread or the multiprocessing name: skip looking them up on every
    # record (the logging HOWTO's "Optimization"), a few µs per access line.
    logging._srcfile = None
    logging.logThreads = False
    logging.logMultiprocessing = False
    if not debug:
        logging.getLogger("aiohttp").setLevel(logging.WARNING)
