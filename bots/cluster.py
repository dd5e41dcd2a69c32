"""A machine of a zmqcross fleet (the seed's Cluster.js): asks the bridge for its share of
the shards and runs it as cluster processes of bots/bot.py.

    ZMQCROSS_MACHINE_ID=machine-1 ZMQCROSS_AUTH_TOKEN=secret python bots/cluster.py
"""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

from settings import Settings, setup_logging

from zmqcross import Client, ClusterManager

BOT_FILE = os.environ.get("ZMQCROSS_BOT_FILE", str(Path(__file__).with_name("bot.py")))


async def main() -> None:
    settings = Settings()
    client = Client(
        agent="bot",
        host=settings.bridge_host,
        port=settings.bridge_port,
        auth_token=settings.auth_token,
        machine_id=settings.machine_id,
        curve=settings.client_curve(),
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    await client.connect()
    share = await client.request_shard_data()
    if share.standby:
        print(f"[{client.id}] standby: every chunk of the plan is taken", flush=True)
        await stop.wait()
        await client.close()
        return
    print(
        f"[{client.id}] runs clusters {list(share.cluster_list)}, shards {[list(s) for s in share.shard_list]}",
        flush=True,
    )
    manager = ClusterManager.from_shard_data(
        BOT_FILE,
        share,
        spawn_delay=settings.spawn_delay,
        heartbeat_timeout=settings.cluster_heartbeat_timeout,
    )
    client.listen(manager)
    spawning = asyncio.create_task(manager.spawn())
    await stop.wait()
    spawning.cancel()
    await manager.close()
    await client.close("machine shutting down")


if __name__ == "__main__":
    setup_logging()
    asyncio.run(main())
