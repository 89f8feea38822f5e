"""``GET /models``: an OpenAI model list built from the targets.

Answered when the chosen target does not map the path, and always (without a ``target`` header) when targets
route by model: the list is then every routable model. A target's models are its ``models:`` names, else its
configured ``model``, else the ``model_id`` of its TGI ``/info`` (fetched once, then cached), else its name.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import orjson
from multidict import CIMultiDict

from .config.model import Settings
from .errors import GatewayError, NotFound
from .inbound import Response, json_response
from .upstream import Upstream

__all__ = ["ModelList"]

log = logging.getLogger("mooltiproxy")

#: how long a failed /info look-up is remembered before it is tried again
RETRY_AFTER_FAILURE = 60.0


class ModelList:
    def __init__(self, settings: Settings, upstreams: dict[str, Upstream]) -> None:
        self.settings = settings
        self.upstreams = upstreams
        self.created = int(time.time())
        self._known: dict[str, str] = {}
        self._failed: dict[str, float] = {}

    async def model_of(self, name: str) -> str:
        target = self.settings.targets[name]
        configured = target.options.get("model")
        if configured:
            return str(configured)
        if name in self._known:
            return self._known[name]
        if time.monotonic() - self._failed.get(name, -RETRY_AFTER_FAILURE) < RETRY_AFTER_FAILURE:
            return name
        model = await self._fetch_info(name)
        if model is None:
            self._failed[name] = time.monotonic()
            return name
        self._known[name] = model
        return model

    async def _fetch_info(self, name: str) -> str | None:
        try:
            async with self.upstreams[name].request("GET", "/info", "", CIMultiDict(), None) as resp:
                if resp.status != 200:
                    return None
                info: Any = orjson.loads(await resp.read())
        except (GatewayError, orjson.JSONDecodeError) as exc:
            log.info("no /info from target '%s': %s", name, exc)
            return None
        model = info.get("model_id") if isinstance(info, dict) else None
        return model if isinstance(model, str) and model else None

    async def listing(self, only: str | None) -> list[dict[str, Any]]:
        names = [only] if only else list(self.settings.targets)
        looked_up = [n for n in names if not self.settings.targets[n].models]
        found = dict(zip(looked_up, await asyncio.gather(*(self.model_of(n) for n in looked_up)), strict=True))
        seen: dict[str, dict[str, Any]] = {}
        for name in names:
            for model in self.settings.targets[name].models or [found[name]]:
                seen.setdefault(model, {"id": model, "object": "model", "created": self.created, "owned_by": name})
        return list(seen.values())

    @staticmethod
    def handles(path: str) -> bool:
        """``/models`` or ``/models/{id}``, with or without ``/v1``."""
        bare = path[3:] if path.startswith("/v1/") else path
        return bare == "/models" or bare.startswith("/models/")

    async def answer(self, path: str, target: str | None) -> Response:
        """Answer a path ``handles`` accepted; ``target`` lists only that target's model."""
        data = await self.listing(target)
        bare = path[3:] if path.startswith("/v1/") else path
        if bare.startswith("/models/"):
            wanted = bare[len("/models/") :]
            for model in data:
                if model["id"] == wanted:
                    return json_response(orjson.dumps(model))
            raise NotFound(f"The model '{wanted}' does not exist", param="model", code="model_not_found")
        return json_response(orjson.dumps({"object": "list", "data": data}))
