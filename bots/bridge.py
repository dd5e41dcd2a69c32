"""The bridge of a zmqcross fleet (the seed's Server.js): plans shards, connects machines.

ZMQCROSS_AUTH_TOKEN=secret ZMQCROSS_TOTAL_SHARDS=16 python bots/bridge.py
"""

from __future__ import annotations

import asyncio
import signal

from settings import Settings, setup_logging

from zmqcross import Bridge, run


async def main() -> None:
    settings = Settings()
    bridge = Bridge(
        auth_token=settings.auth_token,
        host=settings.listen_host,
        port=settings.bridge_port,
        total_shards=settings.total_shards,
        shards_per_cluster=settings.shards_per_cluster,
        total_machines=settings.total_machines,
        curve=settings.server_curve(),
    )

    @bridge.on("connect")
    def connected(client, initial_data):
        print(f"[bridge] {client.agent} {client.id!r} connected from {client.address}", flush=True)

    @bridge.on("client_request")
    async def answer(request, client):
        # Any client, or any bot through bot.machine.request(...), can ask the bridge things.
        if request.data == "guild_count":
            counts = await bridge.broadcast_eval("len(bot.guilds)")
            return sum(counts)
        return {"echo": request.data, "from": client.id}

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with bridge:
        print(f"[bridge] listening on {bridge.endpoint}, plan {bridge.plan.version}", flush=True)
        await stop.wait()


if __name__ == "__main__":
    setup_logging()
    run(main())  # uvloop when installed (zmqcross.run)
