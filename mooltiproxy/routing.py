"""Which target, and which route of it, serves a request: the ``target`` header, else the request's ``model``.

* A ``target`` header names the target (unknown → 404 ``unknown_target``).
* Otherwise, when targets list ``models:``, a JSON ``POST`` body's ``model`` picks the target that lists it. A model
  no target lists goes to the default target when that one accepts any model (it lists none); else it is a 404
  ``model_not_found`` naming the model.
* Otherwise the default target.

A target may rename a model for its upstream (``models: [{client name: upstream name}]``): the body is then sent
with the upstream's name. After the chosen target come its ``fallbacks`` that map the same path, in order.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from .config.model import Route, Settings, Target
from .errors import MethodNotAllowed, NotFound

__all__ = ["Hop", "is_json", "model_of", "parse_json", "pick_target", "renamed", "routes"]


def is_json(content_type: str | None) -> bool:
    """``application/json``, ``application/x+json``, parameters allowed (``; charset=utf-8``)."""
    if not content_type:
        return False
    mime = content_type.split(";", 1)[0].strip().lower()
    return mime == "application/json" or (mime.startswith("application/") and mime.endswith("+json"))


def parse_json(headers: Mapping[str, str], body: bytes) -> Any:
    """The body parsed as JSON when it is declared JSON and is valid, else None (the route decides what to do)."""
    if not body or not is_json(headers.get("Content-Type")):
        return None
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return None


def model_of(payload: Any) -> str | None:
    model = payload.get("model") if isinstance(payload, dict) else None
    return model if isinstance(model, str) else None


def pick_target(settings: Settings, header: str | None, model: str | None) -> Target:
    if header:
        target = settings.targets.get(header)
        if target is None:
            raise NotFound(f"unknown target '{header}'", param="target", code="unknown_target")
        return target
    default = settings.targets[settings.default_target]
    if model is None or not settings.model_index:
        return default
    name = settings.model_index.get(model)
    if name is not None:
        return settings.targets[name]
    if not default.models:
        return default
    raise NotFound(f"The model '{model}' does not exist", param="model", code="model_not_found")


def renamed(target: Target, payload: Any) -> str | None:
    """The model name to send when ``target`` renames the request's model for its upstream, else None."""
    model = model_of(payload)
    if model is None:
        return None
    upstream = target.models.get(model)
    return upstream if upstream is not None and upstream != model else None


class Hop:
    """One target to try, with its route; ``final`` when no fallback comes after it."""

    __slots__ = ("final", "route", "target")

    def __init__(self, target: Target, route: Route, final: bool) -> None:
        self.target = target
        self.route = route
        self.final = final


#: the methods a route without ``methods:`` forwards; TRACE and the others are refused (405)
FORWARDED_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})


def _allowed(route: Route, method: str) -> bool:
    return method in (FORWARDED_METHODS if route.methods is None else route.methods)


def routes(settings: Settings, target: Target, route: Route, path: str, method: str) -> list[Hop]:
    """The chosen target's route, then each fallback target's route for the same path and method."""
    if not _allowed(route, method):
        allow = ", ".join(sorted(FORWARDED_METHODS if route.methods is None else route.methods))
        raise MethodNotAllowed(
            f"method {method} is not allowed on '{path}' (allowed: {allow})", headers={"Allow": allow}
        )
    chain = [(target, route)]
    for name in target.fallbacks:
        fallback = settings.targets[name]
        other = fallback.find(path)
        if other is not None and _allowed(other, method):
            chain.append((fallback, other))
    return [Hop(t, r, i == len(chain) - 1) for i, (t, r) in enumerate(chain)]
