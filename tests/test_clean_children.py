"""Cluster processes never re-run the machine's script (issue 17, item 5).

A machine script written at module level, without ``if __name__ == "__main__":`` (as the
README's snippets read, and as Cluster.js ports come out), must run a fleet: with
multiprocessing's spawn method every cluster process would import it again and connect
to the bridge as the machine. Whatever still re-runs a machine's code in a child fails at
once, naming the cause, and never connects.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from conftest import TOKEN, free_port

from zmqcross import ClusterManager, ConfigurationError
from zmqcross.client._client import _refuse_in_a_child
from zmqcross.gateway import GatewayServer

pytestmark = pytest.mark.timeout(60)

BOT = Path(__file__).resolve().parent / "fleet_bot.py"

UNGUARDED = """
import asyncio, os
import zmqcross

print("machine script top level ran in pid", os.getpid(), flush=True)
client = zmqcross.Client(auth_token=os.environ["T"], port=int(os.environ["P"]), machine_id="m0")
machine = zmqcross.Machine(os.environ["BOT"], client)
asyncio.run(machine.run())
"""


async def test_a_machine_script_without_a_main_guard_runs_its_fleet(
    tmp_path: Path, make_bridge, gateway: GatewayServer
) -> None:
    port = free_port()
    bridge = await make_bridge(port=port, pub_port=port + 1, total_shards=2, shards_per_cluster=1, total_machines=1)
    left: list[str] = []
    bridge.on("disconnect", lambda client, reason: left.append(f"{client.id}: {reason}"))
    script = tmp_path / "machine.py"
    script.write_text(textwrap.dedent(UNGUARDED))
    env = {**os.environ, "T": TOKEN, "P": str(port), "BOT": str(BOT), "ZMQCROSS_DISCORD_API": gateway.api_base}
    proc = subprocess.Popen([sys.executable, str(script)], env=env, stdout=subprocess.PIPE, text=True)
    try:
        end = time.monotonic() + 40
        while True:
            status = await bridge.status()
            states = [c.state for m in status.machines for c in m.clusters]
            if states == ["ready", "ready"]:
                break
            assert time.monotonic() < end, (states, left)
            assert proc.poll() is None, "the machine script exited"
            await asyncio.sleep(0.2)
        assert [c.id for c in bridge.clients] == ["m0"] and left == []
        assert sorted(s["shard"][0] for s in gateway.live_sessions()) == [0, 1]
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = await asyncio.to_thread(proc.communicate, timeout=30)
    assert out.count("machine script top level ran") == 1, out  # in the machine, never in a cluster


def test_a_child_re_running_a_machine_script_fails_before_connecting(monkeypatch: pytest.MonkeyPatch) -> None:
    class Main:
        __name__ = "__mp_main__"  # how multiprocessing's spawn imports the parent's script

    monkeypatch.setitem(sys.modules, "__main__", Main())
    with pytest.raises(ConfigurationError, match='re-running the machine\'s script.*if __name__ == "__main__"'):
        _refuse_in_a_child("m0", "bot")


def test_a_bot_file_may_not_start_a_machine_agent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ZMQCROSS_CLUSTER_PROCESS", "3")
    with pytest.raises(ConfigurationError, match="cluster 3 tried to connect to the bridge as machine 'm0'"):
        _refuse_in_a_child("m0", "bot")
    _refuse_in_a_child("watcher", "dashboard")  # other agents may connect from a bot


async def test_a_cluster_told_to_stop_while_its_shards_cannot_connect_still_exits(
    gateway: GatewayServer,
) -> None:
    # REST answers, the gateway port refuses connections: discord.py's launch_shard retries
    # every 5 s whether or not the client was closed, so bot.run() would never return.
    manager = ClusterManager(
        BOT,
        total_shards=1,
        shard_list=[[0]],
        env={
            "ZMQCROSS_DISCORD_API": gateway.api_base,
            "ZMQCROSS_DISCORD_GATEWAY": f"ws://127.0.0.1:{free_port()}/",
            "ZMQCROSS_LOG_LEVEL": "WARNING",
        },
    )
    await manager.spawn(timeout=2.0)  # not ready: it keeps trying to connect
    (status,) = manager.clusters
    assert status.state == "starting" and status.pid is not None
    stopped = time.monotonic()
    await manager.close(timeout=15.0)  # asks it to close; kills it only after 15 s
    (status,) = manager.clusters
    assert status.exit_code == 0 and time.monotonic() - stopped < 8, status  # it ended itself
