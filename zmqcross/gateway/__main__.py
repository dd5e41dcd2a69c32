"""``python -m zmqcross.gateway`` (and ``zmqcross gateway``): serve the offline Discord.

Prints exactly one line, ``ZMQCROSS_DISCORD_API=<api base>``, once listening, and runs
until SIGTERM or SIGINT, then closes cleanly and exits 0. The gateway URL is derived
from the API base (:func:`~zmqcross.gateway.discordpy.gateway_url_for`), so that one
line is all a cluster process needs.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from collections.abc import Sequence

from .server import GatewayServer

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="zmqcross gateway",
        description=(
            "Serve an offline Discord (REST + Gateway v10) with synthetic guilds. Prints one line "
            "ZMQCROSS_DISCORD_API=<url> once listening; runs until SIGTERM or SIGINT."
        ),
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="TCP port (default 0: any free port)")
    parser.add_argument("--guilds", type=int, default=100, help="number of synthetic guilds (default 100)")
    parser.add_argument(
        "--shards-hint",
        type=int,
        default=None,
        metavar="K",
        help="shards recommended by /gateway/bot (default: one per 1,000 guilds)",
    )
    parser.add_argument("--token", default=None, help="accept only this bot token (default: any)")
    # On by default, as on Discord: see zmqcross.gateway.limits.
    parser.add_argument(
        "--max-concurrency",
        type=int,
        default=1,
        metavar="N",
        help="Discord's identify rate limit: N buckets (shard_id %% N), one IDENTIFY per bucket "
        "per --identify-window, refused with op 9 (default 1, Discord's; 0: no limit)",
    )
    parser.add_argument(
        "--identify-window",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="seconds a bucket stays taken after an accepted IDENTIFY (default 5, Discord's)",
    )
    parser.add_argument(
        "--session-budget",
        type=int,
        default=None,
        metavar="N",
        help="session starts allowed a day; the IDENTIFY after N closes with 4004 and ends every "
        "session, as on Discord (default: no limit)",
    )
    return parser


async def _serve(args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    server = GatewayServer(
        host=args.host,
        port=args.port,
        guilds=args.guilds,
        token=args.token,
        recommended_shards=args.shards_hint,
        max_concurrency=args.max_concurrency or None,
        identify_window=args.identify_window,
        session_budget=args.session_budget,
    )
    async with server:
        print(f"ZMQCROSS_DISCORD_API={server.api_base}", flush=True)
        await stop.wait()


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``zmqcross gateway``; returns the exit status (0 after SIGTERM/SIGINT)."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.guilds < 0 or (args.shards_hint is not None and args.shards_hint < 1):
        parser.error("--guilds must be >= 0 and --shards-hint >= 1")
    if args.max_concurrency < 0:
        parser.error("--max-concurrency must be >= 1 (or 0: no limit)")
    if args.identify_window < 0 or (args.session_budget is not None and args.session_budget < 0):
        parser.error("--identify-window and --session-budget must be >= 0")
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    asyncio.run(_serve(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
