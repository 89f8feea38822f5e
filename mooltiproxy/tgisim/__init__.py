"""A simulated Hugging Face Text Generation Inference (TGI) server that follows TGI's HTTP contract.

Use ``start_simulator()`` in tests, or ``python -m mooltiproxy.tgisim`` from a shell. The model is fake and
deterministic; prompt directives (``<<say:TEXT>>``, ``<<delay:MS>>``, …, see ``model``) steer it.
"""

from __future__ import annotations

from aiohttp import web

from .server import create_app
from .settings import SimSettings
from .validation import Limits

__all__ = ["Limits", "SimSettings", "create_app", "start_simulator"]


async def start_simulator(
    settings: SimSettings | None = None, host: str = "127.0.0.1", port: int = 0
) -> tuple[web.AppRunner, str]:
    """Starts the simulator in the running event loop; returns its runner (``await runner.cleanup()`` to stop)
    and its base URL, e.g. ``http://127.0.0.1:41234``. Port 0 picks a free port."""
    # Like TGI, a request whose client went away stops generating (and frees its slot) at once.
    runner = web.AppRunner(create_app(settings), access_log=None, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    bound_host, bound_port = runner.addresses[0][:2]
    shown = f"[{bound_host}]" if ":" in bound_host else bound_host
    return runner, f"http://{shown}:{bound_port}"
