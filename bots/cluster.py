"""A machine of a zmqcross fleet (the seed's Cluster.js): asks the bridge for its share of
the shards, runs it as cluster processes of the bot file, follows plan changes, and drains
cleanly on SIGTERM/SIGINT.

    ZMQCROSS_AUTH_TOKEN=secret python bots/cluster.py --machine-id machine-1 --bot bots/bot.py

It reads the settings of `zmqcross machine` (bots/settings.py): the bot file is
required (--bot or ZMQCROSS_BOT_FILE), as it is for the command.
"""

from __future__ import annotations

from settings import Settings, main

from zmqcross.cli.serve import build_machine


async def serve(settings: Settings) -> None:
    machine = build_machine(settings)
    client = machine.client

    @client.on("assignment")
    def assigned(share, reason):
        print(f"[{client.id}] assigned clusters {list(share.cluster_list)}: {reason}", flush=True)

    share = await machine.start()
    where = "standby" if share.standby else f"runs clusters {list(share.cluster_list)}"
    print(f"[{client.id}] {where}, shards {[list(s) for s in share.shard_list]}", flush=True)
    await machine.serve()


if __name__ == "__main__":
    main("machine", serve)
