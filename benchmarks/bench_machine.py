"""A benchmark machine: bots/cluster.py's Machine, plus requests the driver uses to time
things from a machine's side (case 6b, the cache cases) and to read its memory."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from zmqcross import Client, CurveClient, Machine, run

HERE = Path(__file__).resolve().parent


def rss_mb() -> float:
    """This process's resident memory, from /proc (what `ps` shows as RSS)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def timed(n: int, warmup: int, call) -> list[float]:
    for _ in range(warmup):
        await call()
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        await call()
        samples.append((time.perf_counter() - t0) * 1000)
    return samples


async def main() -> None:
    env = os.environ
    keys = env.get("ZMQCROSS_KEYS")
    machine_id = env["ZMQCROSS_MACHINE_ID"]
    curve = None
    if keys:
        curve = CurveClient.from_files(f"{keys}/allowed/{machine_id}.key_secret", server_key=f"{keys}/bridge.key")
    client = Client(
        agent="bot",
        machine_id=machine_id,
        port=int(env["ZMQCROSS_BRIDGE_PORT"]),
        auth_token=env["ZMQCROSS_AUTH_TOKEN"],
        curve=curve,
        request_timeout=60,
    )
    cache = None

    @client.on("bridge_request")
    async def bench(request):
        nonlocal cache
        op = request.data["op"]
        if op == "rss":
            return {"rss_mb": rss_mb()}
        n, warmup = request.data["n"], request.data["warmup"]
        if op == "time_requests":  # case 6b, timed here as the original times it in machine 1
            return await timed(n, warmup, lambda: client.request({"ping": 1}))
        if op == "time_cache":
            from zmqcross import CacheClient  # only when the bridge runs a cache

            cache = cache or CacheClient(client).cache["bench"]
            value = {"guild": 629145651778682880, "prefix": "!", "roles": [1, 2, 3]}
            await cache.set("key", value)
            return {
                "set": await timed(n, warmup, lambda: cache.set("key", value)),
                "get": await timed(n, warmup, lambda: cache.get("key")),
            }
        raise ValueError(f"unknown bench op {op!r}")

    machine = Machine(env.get("ZMQCROSS_BOT_FILE", str(HERE / "bench_bot.py")), client,
                      manager_options={"spawn_delay": 0})
    await machine.start()
    print("MACHINE READY", flush=True)
    await machine.serve()


if __name__ == "__main__":
    sys.exit(run(main()))
