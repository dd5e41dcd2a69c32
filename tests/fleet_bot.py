"""The bot the cluster tests run: bots/bot.py's shape plus handlers that drive the Shard API."""

from __future__ import annotations

import os

import discord

from zmqcross import CacheClient, ClusterClient, Shard, cluster_data

data = cluster_data()
bot = discord.AutoShardedClient(
    shard_ids=list(data.shard_list),
    shard_count=data.total_shards,
    intents=discord.Intents.default(),
    chunk_guilds_at_startup=False,
    guild_ready_timeout=0.1,
)
bot.cluster = ClusterClient(bot)
bot.machine = Shard(bot.cluster)
storage = CacheClient(bot.machine)


@bot.event
async def on_message(message: discord.Message) -> None:
    # Counted on the bridge (the tests that dispatch messages give it a "handled" cache path).
    await storage.cache["handled"].incr(str(message.id))


@bot.cluster.on_request
async def handle(request):
    op = request.data.get("op")
    if op == "guild":
        guild = bot.get_guild(int(request.data["guild_id"]))
        return {
            "cluster": bot.cluster.id,
            "pid": os.getpid(),
            "found": guild is not None,
            "shard": guild.shard_id if guild else None,
        }
    if op == "fleet_eval":  # a bot asking every cluster on every machine
        return await bot.machine.broadcast_eval(lambda bot, context: [bot.cluster.id, len(bot.guilds)])
    if op == "ask_bridge":
        return await bot.machine.request(request.data["payload"])
    if op == "ask_guild":
        return await bot.machine.request_to_guild({"op": "guild", "guild_id": request.data["target"]})
    if op == "fail":
        raise ValueError(f"cluster {bot.cluster.id} was asked to fail")
    return {"cluster": bot.cluster.id, "echo": request.data}


bot.run("offline-token", log_handler=None)
