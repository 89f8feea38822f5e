"""Configuration: the file's schema, its loading and checking, and the resolved settings."""

from __future__ import annotations

from .load import KEY_ENV, build_settings, load_config, read_config_file
from .model import Route, Settings, Target

__all__ = ["KEY_ENV", "Route", "Settings", "Target", "build_settings", "load_config", "read_config_file"]
