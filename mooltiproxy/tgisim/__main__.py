"""``python -m mooltiproxy.tgisim``: serve the simulated TGI until Ctrl-C."""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Sequence

from aiohttp import web

from . import Limits, SimSettings, start_simulator


def _parser() -> argparse.ArgumentParser:
    defaults, limits = SimSettings(), Limits()
    p = argparse.ArgumentParser(prog="python -m mooltiproxy.tgisim", description="Serve a simulated TGI.")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=3000, help="0 picks a free port")
    p.add_argument("--model-id", default=defaults.model_id)
    p.add_argument("--token-delay", type=float, default=0.0, help="seconds before each token")
    p.add_argument("--data-prefix", choices=["data: ", "data:"], default="data: ", help="'data:' as TGI <= 2.0")
    p.add_argument("--keepalive", type=float, default=0.0, help="seconds of silence before a ':' comment")
    p.add_argument("--chunking", default="event", help="'event' or 'bytes:N'")
    p.add_argument("--api-key", default=None)
    p.add_argument("--payload-limit", type=int, default=defaults.payload_limit)
    p.add_argument("--max-concurrent-requests", type=int, default=defaults.max_concurrent_requests)
    p.add_argument("--max-best-of", type=int, default=limits.max_best_of)
    p.add_argument("--max-stop-sequences", type=int, default=limits.max_stop_sequences)
    p.add_argument("--max-top-n-tokens", type=int, default=limits.max_top_n_tokens)
    p.add_argument("--max-input-tokens", type=int, default=limits.max_input_tokens)
    p.add_argument("--max-total-tokens", type=int, default=limits.max_total_tokens)
    p.add_argument("--max-client-batch-size", type=int, default=limits.max_client_batch_size)
    p.add_argument("--disable-grammar-support", action="store_true")
    return p


def settings_from_args(argv: Sequence[str] | None = None) -> tuple[SimSettings, str, int]:
    args = _parser().parse_args(argv)
    limits = Limits(
        max_best_of=args.max_best_of,
        max_stop_sequences=args.max_stop_sequences,
        max_top_n_tokens=args.max_top_n_tokens,
        max_input_tokens=args.max_input_tokens,
        max_total_tokens=args.max_total_tokens,
        max_client_batch_size=args.max_client_batch_size,
        disable_grammar_support=args.disable_grammar_support,
    )
    settings = SimSettings(
        model_id=args.model_id,
        limits=limits,
        max_concurrent_requests=args.max_concurrent_requests,
        token_delay=args.token_delay,
        data_prefix=args.data_prefix,
        keepalive=args.keepalive,
        chunking=args.chunking,
        api_key=args.api_key,
        payload_limit=args.payload_limit,
    )
    return settings, args.host, args.port


def _serve(settings: SimSettings, host: str, port: int) -> None:
    from ..runner import run, serve_forever

    async def start() -> list[web.AppRunner]:
        runner, url = await start_simulator(settings, host, port)
        print(f"TGI simulator ({settings.model_id}) listening on {url}", flush=True)
        return [runner]

    run(serve_forever(start))


def main(argv: Sequence[str] | None = None) -> int:
    try:
        settings, host, port = settings_from_args(argv)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    with contextlib.suppress(KeyboardInterrupt):
        _serve(settings, host, port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
