"""mooltiproxy: a small, fast LLM API translation gateway.

The public surface is the plug-in API for mapper and prompter authors; everything else is internal.
"""

from __future__ import annotations

from .errors import BadRequest, ConfigError, GatewayError, UpstreamError, UpstreamStatus
from .plugin import Fanout, MappingContext, Prompt, StreamTranslator, Template

__version__ = "0.2.0"

__all__ = [
    "BadRequest",
    "ConfigError",
    "Fanout",
    "GatewayError",
    "MappingContext",
    "Prompt",
    "StreamTranslator",
    "Template",
    "UpstreamError",
    "UpstreamStatus",
    "__version__",
]
