"""The bridge of a zmqcross fleet (the seed's Server.js): plans shards, connects machines.

    ZMQCROSS_AUTH_TOKEN=secret python bots/bridge.py --total-shards 16 --shards-per-cluster 2

It reads the settings of `zmqcross bridge` (bots/settings.py), the shared cache
included (--cache-paths, --cache-persist-path: closing the bridge saves it), and adds
what the command does not: an answer to clients' requests.
"""

from __future__ import annotations

import asyncio
import signal

from settings import Settings, main

from zmqcross.cli.serve import build_bridge, describe_cache, serve_cache


async def serve(settings: Settings) -> None:
    bridge = build_bridge(settings)
    serve_cache(bridge, settings)  # None unless cache_paths are set; saved when the bridge closes

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
        if bridge.metrics is not None:
            print(f"[bridge] metrics on {bridge.metrics.url}", flush=True)
        cache = describe_cache(settings)
        if cache is not None:
            print(f"[bridge] {cache}", flush=True)
        await stop.wait()


if __name__ == "__main__":
    main("bridge", serve)
