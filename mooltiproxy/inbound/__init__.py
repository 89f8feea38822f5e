"""The gateway's own HTTP/1.1 server: the listener, its client connections, the requests and answers on them."""

from .connection import Handler, PrepareHook
from .listener import Listener
from .messages import BodyError, BodyTooLarge, Request, Response, StreamResponse, json_response

__all__ = [
    "BodyError",
    "BodyTooLarge",
    "Handler",
    "Listener",
    "PrepareHook",
    "Request",
    "Response",
    "StreamResponse",
    "json_response",
]
