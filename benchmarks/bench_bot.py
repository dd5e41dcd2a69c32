"""The benchmark's bot: a plain AutoShardedClient cluster, answering the README's guild request."""

from __future__ import annotations

import discord

from zmqcross import ClusterClient, Shard, cluster_data

data = cluster_data()
bot = discord.AutoShardedClient(
    shard_ids=list(data.shard_list),
    shard_count=data.total_shards,
    intents=discord.Intents.default(),
    chunk_guilds_at_startup=False,
    guild_ready_timeout=0.1 if data.offline else 2.0,
    max_messages=None,
)
bot.cluster = ClusterClient(bot)
bot.machine = Shard(bot.cluster)


@bot.cluster.on_request
def guild_info(request):
    """Case 6a: the README's requestToGuild answer, {id, name, icon, owner_id, roles, channels}."""
    guild = bot.get_guild(int(request.data["guild_id"]))
    return {
        "id": guild.id,
        "name": guild.name,
        "icon": guild.icon.key if guild.icon else None,
        "owner_id": guild.owner_id,
        "roles": [{"id": r.id, "name": r.name} for r in guild.roles],
        "channels": [{"id": c.id, "name": c.name, "type": c.type.value} for c in guild.channels],
    }


@bot.cluster.on("message")
async def ack(message):
    """Case 8: every cluster acknowledges the bridge's broadcast message."""
    await bot.machine.send({"ack": message.data["seq"], "cluster": bot.cluster.id})


bot.run("offline-token", log_handler=None)
