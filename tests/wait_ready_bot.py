"""A bot that asks the whole fleet something as soon as it is ready, as a new user writes it.

At discord.py's ``on_ready`` a task reports (by ``bot.machine.request``, to the test's
bridge) what a fleet-wide ``broadcast_eval`` gives without waiting, what a short
``wait_ready`` says while the fleet is still starting, and what ``broadcast_eval`` gives
after ``wait_ready``.
"""

from __future__ import annotations

import asyncio

import discord

from zmqcross import ClusterClient, Shard, ZmqcrossError, cluster_data

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
tasks: set[asyncio.Task[None]] = set()


async def outcome(work) -> dict:
    try:
        return {"ok": await work}
    except ZmqcrossError as exc:
        return {"error": f"{type(exc).__name__}: {exc.message}"}


async def ask_the_fleet() -> None:
    me = bot.cluster.id
    at_once = await outcome(bot.machine.broadcast_eval("bot.cluster.id"))
    await bot.machine.request({"step": "at_once", "cluster": me, **at_once})
    short = await outcome(bot.machine.wait_ready(timeout=1.5))
    await bot.machine.request({"step": "short_wait", "cluster": me, **short} | {"ok": None})
    own = await outcome(bot.machine.wait_ready(clusters=[me], timeout=5))
    ready = await outcome(bot.machine.wait_ready(timeout=90))
    after = await outcome(bot.machine.broadcast_eval("bot.cluster.id"))
    await bot.machine.request(
        {"step": "after_wait", "cluster": me, "own": "ok" in own, "ready": "ok" in ready, **after}
    )


@bot.event
async def on_ready() -> None:
    task = asyncio.create_task(ask_the_fleet())
    tasks.add(task)
    task.add_done_callback(tasks.discard)


bot.run("offline-token", log_handler=None)
