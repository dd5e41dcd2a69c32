"""The fleet's web dashboard: a non-bot client serving one live page of the whole fleet.

    ZMQCROSS_AUTH_TOKEN=secret python bots/dashboard.py     # then open http://127.0.0.1:8080/

Machines, their clusters and shards, ready state, guilds, restarts, heartbeat age and
eval latency, refreshed every second, with a guild lookup (``/?guild=ID``). The JSON
behind it is at /api/fleet and /api/guild/ID. It reads the settings of `zmqcross
dashboard` (bots/settings.py): --host/--port or ZMQCROSS_DASHBOARD_HOST and
ZMQCROSS_DASHBOARD_PORT say where the page is served (default 127.0.0.1:8080; 0 picks a
free port), --allowed-hosts/ZMQCROSS_DASHBOARD_ALLOWED_HOSTS more names it answers to,
--client-id/ZMQCROSS_DASHBOARD_ID its id, --key-name its CURVE key.
"""

from __future__ import annotations

import asyncio
import signal

from settings import Settings, main

from zmqcross.cli.admin import admin_client
from zmqcross.dashboard.serve import build_dashboard


async def serve(settings: Settings) -> None:
    client = admin_client(settings, role="dashboard")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with client:
        async with build_dashboard(client, settings) as dashboard:
            print(f"[dashboard] serving {dashboard.url}", flush=True)
            await stop.wait()


if __name__ == "__main__":
    main("dashboard", serve)
