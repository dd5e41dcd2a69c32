"""The fleet's web dashboard: a non-bot client serving one live page of the whole fleet.

    ZMQCROSS_AUTH_TOKEN=secret python bots/dashboard.py     # then open http://127.0.0.1:8080/

Machines, their clusters and shards, ready state, guilds, restarts, heartbeat age and
eval latency, refreshed every second, with a guild lookup (``/?guild=ID``). The JSON
behind it is at /api/fleet and /api/guild/ID. ZMQCROSS_DASHBOARD_HOST and
ZMQCROSS_DASHBOARD_PORT say where the page is served (default 127.0.0.1:8080; 0 picks
a free port). `zmqcross dashboard` is the same with every setting as a flag.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys

from settings import Settings, setup_logging

from zmqcross import Client, ZmqcrossError
from zmqcross.cli.options import client_curve
from zmqcross.dashboard import Dashboard


async def main() -> None:
    settings = Settings()
    client = Client(
        agent="dashboard",
        machine_id=os.environ.get("ZMQCROSS_DASHBOARD_ID") or "dashboard",
        host=settings.bridge_host,
        port=settings.bridge_port,
        auth_token=settings.auth_token,
        # keys/allowed/dashboard.key_secret unless ZMQCROSS_KEY_NAME names another key
        curve=client_curve(settings.keys, settings.key_name or "dashboard"),
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with client:
        dashboard = Dashboard(
            client,
            host=os.environ.get("ZMQCROSS_DASHBOARD_HOST", "127.0.0.1"),
            port=int(os.environ.get("ZMQCROSS_DASHBOARD_PORT", "8080")),
        )
        async with dashboard:
            print(f"[dashboard] serving {dashboard.url}", flush=True)
            await stop.wait()


if __name__ == "__main__":
    setup_logging()
    try:
        asyncio.run(main())
    except (ZmqcrossError, OSError) as exc:
        print(f"[dashboard] failed: {exc}", file=sys.stderr)
        sys.exit(1)
