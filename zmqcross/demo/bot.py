"""The example bot (the seed's Bot.js), run once per cluster by a ClusterManager.

It ships inside the package so `zmqcross demo` runs anywhere; ``bots/bot.py`` runs this
same file, so there is one example bot to read and to change. The same file runs against
real Discord (set DISCORD_TOKEN) and against the offline gateway (ZMQCROSS_DISCORD_API, as
`make demo` sets it). It answers ``request_to_guild({"guild_id": ...})`` with the guild
as the demo's dashboard prints it, "@bot ping" with the cluster and shard that answered, and
``!guilds`` with a count over the whole fleet.
"""

from __future__ import annotations

import os

import discord

from zmqcross import ClusterClient, Shard, cluster_data

data = cluster_data()
bot = discord.AutoShardedClient(
    shard_ids=list(data.shard_list),
    shard_count=data.total_shards,
    intents=discord.Intents.default(),
    chunk_guilds_at_startup=False,
    # discord.py waits this long after the last GUILD_CREATE before on_ready; the
    # offline gateway sends them all at once.
    guild_ready_timeout=0.1 if data.offline else 2.0,
)
# discord.py's client has no slots for these; the fleet's evals reach them as bot.cluster, bot.machine.
bot.cluster = ClusterClient(bot)  # type: ignore[attr-defined]
bot.machine = Shard(bot.cluster)  # type: ignore[attr-defined]


@bot.cluster.on_request  # type: ignore[attr-defined]
def guild_info(request):  # type: ignore[no-untyped-def]
    """Answer request_to_guild({"guild_id": ...}) for a guild this cluster holds."""
    guild = bot.get_guild(int(request.data["guild_id"]))
    if guild is None:
        raise LookupError(f"guild {request.data['guild_id']} is not in cluster {bot.cluster.id}")  # type: ignore[attr-defined]
    return {
        "id": guild.id,
        "name": guild.name,
        "cluster": bot.cluster.id,  # type: ignore[attr-defined]
        "shard": guild.shard_id,
        "roles": [role.name for role in guild.roles],
        "channels": [channel.name for channel in guild.channels],
    }


@bot.event
async def on_message(message: discord.Message) -> None:
    # "@bot ping": answered by the cluster whose shard holds the guild. A mention carries its
    # text without the privileged message-content intent, so this works on real Discord too.
    if bot.user is not None and bot.user in message.mentions and message.content.endswith(" ping"):
        shard = message.guild.shard_id if message.guild is not None else None
        await message.reply(f"pong from cluster {bot.cluster.id} (shard {shard})")  # type: ignore[attr-defined]
        return
    # A command that needs the whole fleet: every cluster on every machine answers.
    if message.content == "!guilds":
        counts = await bot.machine.broadcast_eval("len(bot.guilds)")  # type: ignore[attr-defined]
        await message.channel.send(f"{sum(counts)} guilds across {len(counts)} clusters")


bot.run(os.environ.get("DISCORD_TOKEN", "offline-token"), log_handler=None)
