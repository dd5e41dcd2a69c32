"""The demo's dashboard: waits for the fleet, prints each cluster's guilds, looks a guild up, times evals.

Run by :func:`zmqcross.demo.main` as ``python -m zmqcross.demo.dashboard``; it reads the
settings ``zmqcross status`` reads (``ZMQCROSS_BRIDGE_PORT``, ``ZMQCROSS_KEYS``...).
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import time

import aiohttp

from ..cli.admin import admin_client
from ..cli.options import STATUS
from ..client import Client
from ..config import resolve
from ..errors import ZmqcrossError
from ..gateway import guild_id
from ..gateway.guilds import BOT_USER_ID

__all__ = ["main", "wait_for_fleet"]

GUILD = guild_id(1234)
"""The offline gateway's guild #1234, looked up with request_to_guild."""


async def wait_for_fleet(client: Client, timeout: float = 60.0) -> list[int]:
    """Guild counts of every cluster, once every cluster answers."""
    end = time.monotonic() + timeout
    while True:
        counts = await client.broadcast_eval("len(bot.guilds)", return_exceptions=True, timeout=5)
        if counts and not any(isinstance(c, ZmqcrossError) for c in counts):
            return counts
        if time.monotonic() > end:
            raise TimeoutError(f"the fleet did not come up within {timeout:g} s: {counts}")
        await asyncio.sleep(0.5)


async def show_fleet() -> None:
    """Print what the dashboard sees (the lines `make demo` shows)."""
    settings = resolve("status", STATUS, flags={"dashboard_id": "dashboard"}, env=os.environ, file={})
    async with admin_client(settings) as client:
        counts = await wait_for_fleet(client)
        for cluster, count in enumerate(counts):
            print(f"[dashboard] cluster {cluster}: {count} guilds", flush=True)
        print(f"[dashboard] total: {sum(counts)} guilds on {len(counts)} clusters", flush=True)

        guild = await client.request_to_guild({"guild_id": GUILD})
        print(
            f"[dashboard] request_to_guild({GUILD}) -> {guild['name']!r} on cluster {guild['cluster']} "
            f"(shard {guild['shard']}), roles {guild['roles']}",
            flush=True,
        )

        await ping_through_discord()
        await show_identifies(client)

        samples = []
        for _ in range(100):
            t0 = time.perf_counter()
            await client.broadcast_eval("1 + 1")
            samples.append((time.perf_counter() - t0) * 1000)
        samples.sort()
        print(
            f"[dashboard] broadcast_eval('1 + 1') over {len(counts)} clusters: p50 "
            f"{statistics.median(samples):.2f} ms, p99 {samples[98]:.2f} ms (100 calls)",
            flush=True,
        )


async def ping_through_discord(timeout: float = 15.0) -> None:
    """Say "@bot ping" in guild #1234 through the offline Discord and print the bot's answer.

    The message reaches the gateway session of the guild's shard, so the cluster holding
    that shard answers: a user's command, end to end, on the fleet.
    """
    api = os.environ.get("ZMQCROSS_DISCORD_API")
    if not api:
        return  # against real Discord there is no one to say it
    offline = api.split("/api/")[0] + "/_offline"
    content = f"<@{BOT_USER_ID}> ping"
    started = time.perf_counter()
    async with aiohttp.ClientSession() as http:
        body = {"guild_id": str(GUILD), "event": "MESSAGE_CREATE", "data": {"content": content}}
        async with http.post(f"{offline}/dispatch", json=body) as response:
            if response.status != 200:
                raise ZmqcrossError(
                    f"the offline Discord did not deliver the message: {await response.text()}"
                )
        end = time.monotonic() + timeout
        while True:
            async with http.get(f"{offline}/messages", params={"guild_id": str(GUILD)}) as response:
                replies = [m for m in (await response.json())["messages"] if m["content"].startswith("pong")]
            if replies:
                break
            if time.monotonic() > end:
                raise TimeoutError(f"nobody answered {content!r} in guild {GUILD} within {timeout:g} s")
            await asyncio.sleep(0.05)
    print(
        f"[dashboard] '@bot ping' in guild {GUILD} -> {replies[0]['content']!r} "
        f"({(time.perf_counter() - started) * 1000:.0f} ms through Discord)",
        flush=True,
    )


async def show_identifies(client: Client) -> None:
    """How the bridge paced the fleet's IDENTIFYs, and what the offline Discord thought of them."""
    queue = (await client.fleet_status()).identify
    if queue is None:
        return
    line = (
        f"[dashboard] IDENTIFY queue: {queue['granted']} slots granted in {queue['max_concurrency']} "
        f"buckets, one per {queue['interval']:g} s each"
    )
    api = os.environ.get("ZMQCROSS_DISCORD_API")
    if api:
        async with aiohttp.ClientSession() as http:
            async with http.get(api.split("/api/")[0] + "/_offline/identifies") as response:
                records = (await response.json())["identifies"]
        refused = sum(1 for r in records if not r["accepted"])
        line += f"; the offline Discord refused {refused} of {len(records)} IDENTIFYs"
    print(line, flush=True)


def main() -> int:
    """Run the dashboard; 0 when it saw the whole fleet, 1 otherwise."""
    try:
        asyncio.run(show_fleet())
    except (ZmqcrossError, TimeoutError) as exc:
        print(f"[dashboard] failed: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
