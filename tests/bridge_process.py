"""A bridge in its own process, for tests that kill it: ``python bridge_process.py PORT PUB_PORT``.

It answers ``"shard_map"`` requests with its shard map, logs each request it runs on
stdout (so a test can prove something was not run), and prints READY once listening.
"""

from __future__ import annotations

import asyncio
import sys

from zmqcross import Bridge


async def main(port: int, pub_port: int) -> None:
    bridge = Bridge(
        auth_token="test-token",
        port=port,
        pub_port=pub_port,
        total_shards=4,
        shards_per_cluster=1,
        total_machines=2,
        heartbeat_interval=0.1,
        heartbeat_timeout=0.5,
        identify_window=0.05,  # the tests' offline gateways use this window
    )

    @bridge.on("client_request")
    def answer(request, client):
        print(f"RAN {request.data!r}", flush=True)
        if request.data == "shard_map":
            return bridge.shard_map()
        return {"epoch": bridge.epoch, "data": request.data}

    await bridge.start()
    print("READY", flush=True)
    await bridge.wait_closed()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), int(sys.argv[2])))
