"""A machine of a zmqcross fleet (the seed's Cluster.js): asks the bridge for its share of
the shards, runs it as cluster processes of bots/bot.py, follows plan changes, and drains
cleanly on SIGTERM/SIGINT.

    ZMQCROSS_MACHINE_ID=machine-1 ZMQCROSS_AUTH_TOKEN=secret python bots/cluster.py
"""

from __future__ import annotations

import os
from pathlib import Path

from settings import Settings, setup_logging

from zmqcross import Client, Machine, run

BOT_FILE = os.environ.get("ZMQCROSS_BOT_FILE", str(Path(__file__).with_name("bot.py")))


async def main() -> None:
    settings = Settings()
    client = Client(
        agent="bot",
        host=settings.bridge_host,
        port=settings.bridge_port,
        auth_token=settings.auth_token,
        machine_id=settings.machine_id,
        rolling_restarts=settings.rolling_restarts,
        curve=settings.client_curve(),
    )

    @client.on("assignment")
    def assigned(share, reason):
        print(f"[{client.id}] assigned clusters {list(share.cluster_list)}: {reason}", flush=True)

    machine = Machine(
        BOT_FILE,
        client,
        manager_options={
            "spawn_delay": settings.spawn_delay,
            "heartbeat_timeout": settings.cluster_heartbeat_timeout,
        },
    )
    share = await machine.start()
    where = "standby" if share.standby else f"runs clusters {list(share.cluster_list)}"
    print(f"[{client.id}] {where}, shards {[list(s) for s in share.shard_list]}", flush=True)
    await machine.serve()


if __name__ == "__main__":
    setup_logging()
    run(main())  # uvloop when installed (zmqcross.run); the bots choose their own loop
