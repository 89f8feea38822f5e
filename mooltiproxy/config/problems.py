"""Collecting config problems, each with its YAML path, so they are all reported at once."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ValidationError

__all__ = ["Problems"]


class Problems:
    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, where: str, message: str) -> None:
        self.items.append(f"{where}: {message}" if where else message)

    def model(self, cls: type[BaseModel], data: Any, where: str) -> Any:
        """Validate ``data`` as ``cls``; record every error with its path and return None on failure."""
        try:
            return cls.model_validate(data if data is not None else {})
        except ValidationError as exc:
            for err in exc.errors():
                loc = ".".join([where, *(str(p) for p in err["loc"])]) if err["loc"] else where
                message = err["msg"]
                if err["type"] == "extra_forbidden":
                    message = "unknown key"
                self.add(loc, message)
            return None
