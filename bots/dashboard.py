"""A dashboard: a non-bot client that reads the whole fleet (the seed's dashboard example).

python bots/dashboard.py            # wait for the fleet, print it, look up a guild
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time

from settings import Settings, setup_logging

from zmqcross import Client, ZmqcrossError

GUILD = (150000000000 + 1234) << 22  # guild #1234 of the offline gateway


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


async def main() -> None:
    settings = Settings()
    client = Client(
        agent="dashboard",
        machine_id=settings.machine_id or "dashboard",
        host=settings.bridge_host,
        port=settings.bridge_port,
        auth_token=settings.auth_token,
        curve=settings.client_curve(),
    )
    async with client:
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


if __name__ == "__main__":
    setup_logging()
    try:
        asyncio.run(main())
    except (ZmqcrossError, TimeoutError) as exc:
        print(f"[dashboard] failed: {exc}", file=sys.stderr)
        sys.exit(1)
