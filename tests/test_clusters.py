"""A whole fleet on loopback: offline gateway, bridge, two machine processes, four discord.py clusters.

The machines are the shipped bots/cluster.py, run as real processes; each spawns real
cluster processes running an unmodified discord.py AutoShardedClient.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from conftest import IDENTIFY_WINDOW, free_port

from zmqcross import (
    Bridge,
    BroadcastEvalError,
    Client,
    ConfigurationError,
    ConnectionLost,
    MessageTooLarge,
    RemoteError,
    RequestTimeout,
    ScriptError,
    shard_for_guild,
)
from zmqcross.gateway import GatewayServer, guild_id

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(90)]

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "fleet-token"
GUILDS = 64
TOTAL_SHARDS = 8  # 4 clusters of 2 shards, 2 per machine


class Fleet:
    def __init__(
        self, gateway: GatewayServer, bridge: Bridge, dashboard: Client, machines: list[subprocess.Popen]
    ):
        self.gateway, self.bridge, self.dashboard, self.machines = gateway, bridge, dashboard, machines

    async def pids(self) -> list[int]:
        return await self.dashboard.broadcast_eval("import os\nos.getpid()")

    async def wait_all_answer(self, timeout: float = 40.0) -> list:
        end = time.monotonic() + timeout
        while True:
            results = await self.dashboard.broadcast_eval(
                "bot.is_ready() and len(bot.guilds)", return_exceptions=True, timeout=5
            )
            if results and all(isinstance(r, int) and r > 0 for r in results):
                return results
            if time.monotonic() > end:
                raise AssertionError(f"fleet not answering after {timeout} s: {results}")
            await asyncio.sleep(0.2)


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def fleet() -> AsyncIterator[Fleet]:
    gateway = GatewayServer(guilds=GUILDS, identify_window=IDENTIFY_WINDOW)
    await gateway.start()
    bridge = Bridge(
        auth_token=TOKEN,
        port=free_port(),
        pub_port=free_port(),
        total_shards=TOTAL_SHARDS,
        shards_per_cluster=2,
        total_machines=2,
        identify_window=IDENTIFY_WINDOW,
    )
    await bridge.start()

    @bridge.on("client_request")
    def answer(request, client):
        return {"bridge_got": request.data, "from": client.id}

    env = {
        **os.environ,
        "ZMQCROSS_DISCORD_API": gateway.api_base,
        "ZMQCROSS_AUTH_TOKEN": TOKEN,
        "ZMQCROSS_BRIDGE_PORT": str(bridge.port),
        "ZMQCROSS_SPAWN_DELAY": "0",
        "ZMQCROSS_BOT_FILE": str(ROOT / "tests" / "fleet_bot.py"),
        "ZMQCROSS_LOG_LEVEL": "WARNING",
        "ZMQCROSS_CLUSTER_HEARTBEAT_TIMEOUT": "4",
    }
    env.pop("ZMQCROSS_KEYS", None)
    machines = [
        subprocess.Popen(
            [sys.executable, str(ROOT / "bots" / "cluster.py")],
            env={**env, "ZMQCROSS_MACHINE_ID": f"machine-{i}"},
            stdout=subprocess.DEVNULL,
        )
        for i in (1, 2)
    ]
    dashboard = Client(
        auth_token=TOKEN,
        port=bridge.port,
        pub_port=bridge.pub_port,
        agent="dashboard",
        machine_id="dashboard",
    )
    await dashboard.connect()
    fleet = Fleet(gateway, bridge, dashboard, machines)
    try:
        await fleet.wait_all_answer()
        yield fleet
    finally:
        for proc in machines:
            proc.send_signal(signal.SIGTERM)
        for proc in machines:
            try:
                await asyncio.to_thread(proc.wait, 20)
            except subprocess.TimeoutExpired:
                proc.kill()
        await dashboard.close()
        await bridge.close()
        await gateway.close()


async def test_every_guild_is_held_exactly_once(fleet: Fleet) -> None:
    counts = await fleet.dashboard.broadcast_eval("len(bot.guilds)")
    assert len(counts) == 4 and sum(counts) == GUILDS
    owners = await fleet.bridge.broadcast_eval("sorted(g.id for g in bot.guilds)")
    every = sorted(gid for ids in owners for gid in ids)
    assert every == sorted(guild_id(i) for i in range(GUILDS))


async def test_string_function_async_and_context_evals(fleet: Fleet) -> None:
    d = fleet.dashboard
    assert await d.broadcast_eval("bot.cluster.id") == [0, 1, 2, 3]
    assert await d.broadcast_eval("n = len(bot.shards)\nn * 10") == [20, 20, 20, 20]
    assert await d.broadcast_eval("await asyncio.sleep(0.01)\nbot.cluster.id * 2") == [0, 2, 4, 6]

    def shards(bot, context):
        return [sorted(bot.shards), context["tag"]]

    async def slow_double(bot, context):
        await asyncio.sleep(0.01)
        return bot.cluster.id * context

    quoted = 'it\'s "quoted" \\ and \\" weird'
    assert await d.broadcast_eval(shards, context={"tag": quoted}) == [
        [[0, 1], quoted],
        [[2, 3], quoted],
        [[4, 5], quoted],
        [[6, 7], quoted],
    ]
    assert await fleet.bridge.broadcast_eval(slow_double, context=3) == [0, 3, 6, 9]
    assert await d.broadcast_eval(lambda bot, ctx: ctx + [bot.cluster.id], context=["x"]) == [
        ["x", 0],
        ["x", 1],
        ["x", 2],
        ["x", 3],
    ]


async def test_discord_objects_become_data(fleet: Fleet) -> None:
    gid = guild_id(5)
    (guild,) = [g for g in await fleet.dashboard.broadcast_eval(f"bot.get_guild({gid})") if g is not None]
    assert guild["id"] == gid and guild["name"] == "Guild 5"
    assert guild["roles"][0] == gid and len(guild["roles"]) == 3  # ids, @everyone first
    assert len(guild["channels"]) == 4 and all(isinstance(c, int) for c in guild["channels"])
    roles, channels = [
        r for r in await fleet.dashboard.broadcast_eval(f"g = bot.get_guild({gid})\ng and (g.roles, g.channels)") if r
    ][0]
    assert roles[0]["name"] == "@everyone" and roles[0]["id"] == gid and roles[0]["guild_id"] == gid
    assert sorted(c["type"] for c in channels) == [0, 0, 2, 4]
    assert sorted(c["id"] for c in channels) == sorted(guild["channels"])
    summary = await fleet.dashboard.broadcast_eval("bot", clusters=[0])  # the original never answers 'this'
    assert summary[0]["ready"] is True and summary[0]["shard_ids"] == [0, 1]


async def test_targeting_clusters_shards_and_guilds(fleet: Fleet) -> None:
    d = fleet.dashboard
    assert await d.broadcast_eval("bot.cluster.id", clusters=[3, 1]) == [1, 3]
    assert await d.broadcast_eval("bot.cluster.id", shards=[5, 4, 0]) == [0, 2]
    for i in (0, 7, 13, 42, 63):
        gid = guild_id(i)
        expected = shard_for_guild(gid, TOTAL_SHARDS) // 2
        assert await d.broadcast_eval("bot.cluster.id", guild_id=gid) == [expected]
        assert await d.broadcast_eval(f"bot.get_guild({gid}) is not None", guild_id=gid) == [True]
    with pytest.raises(ConfigurationError, match="clusters=\\[9\\]: the plan has clusters 0 to 3"):
        await d.broadcast_eval("1", clusters=[9])
    with pytest.raises(ConfigurationError, match="at most one of clusters=, shards= and guild_id="):
        await d.broadcast_eval("1", clusters=[0], shards=[0])


async def test_remote_exception_arrives_with_its_traceback(fleet: Fleet) -> None:
    with pytest.raises(BroadcastEvalError) as info:
        await fleet.dashboard.broadcast_eval("1 / (bot.cluster.id - 2)")
    error = info.value
    assert list(error.errors) == [2] and "1 of 4 clusters failed: cluster 2: ZeroDivisionError" in str(error)
    assert error.results[:2] == [-0.5, -1.0] and error.results[3] == 1.0
    remote = error.errors[2]
    assert isinstance(remote, RemoteError) and remote.remote_type == "ZeroDivisionError"
    assert "<broadcast_eval>" in (remote.remote_traceback or "")
    mixed = await fleet.dashboard.broadcast_eval("1 / (bot.cluster.id - 2)", return_exceptions=True)
    assert isinstance(mixed[2], RemoteError) and mixed[3] == 1.0


async def test_script_mistakes_fail_at_the_call_site(fleet: Fleet) -> None:
    local = 5
    with pytest.raises(ScriptError, match="uses variables from its enclosing scope \\(local\\)"):
        await fleet.dashboard.broadcast_eval(lambda bot, ctx: local)
    with pytest.raises(ScriptError, match="does not compile"):
        await fleet.dashboard.broadcast_eval("len(bot.guilds")
    with pytest.raises(BroadcastEvalError, match="cannot be sent as JSON"):
        await fleet.dashboard.broadcast_eval("object()", clusters=[0])


async def test_request_to_guild_reaches_the_owner_for_every_shard(fleet: Fleet) -> None:
    seen_shards = set()
    for i in range(16):  # guilds 0..15 cover all 8 shards twice
        gid = guild_id(i)
        answer = await fleet.dashboard.request_to_guild({"op": "guild", "guild_id": gid})
        shard = shard_for_guild(gid, TOTAL_SHARDS)
        assert answer["found"] and answer["shard"] == shard and answer["cluster"] == shard // 2
        seen_shards.add(shard)
        assert (await fleet.bridge.request_to_guild({"op": "guild", "guild_id": gid}))["found"]
    assert seen_shards == set(range(TOTAL_SHARDS))
    with pytest.raises(RemoteError, match="ValueError: cluster 1 was asked to fail"):
        await fleet.dashboard.request_to_guild({"op": "fail", "guild_id": guild_id(2)})


async def test_shard_api_from_inside_a_bot(fleet: Fleet) -> None:
    gid = guild_id(3)  # lives on cluster 1 of machine with clusters 0-1 or 2-3
    fleet_view = await fleet.dashboard.request_to_guild({"op": "fleet_eval", "guild_id": gid})
    assert [c for c, _ in fleet_view] == [0, 1, 2, 3] and sum(n for _, n in fleet_view) == GUILDS
    payload = {"text": "quote \" apostrophe ' backslash \\ newline \n brace } ${x} `tick`", "n": [1, None]}
    answer = await fleet.dashboard.request_to_guild({"op": "ask_bridge", "guild_id": gid, "payload": payload})
    assert answer["bridge_got"] == payload and answer["from"].startswith("machine-")
    far = guild_id(60)
    answer = await fleet.dashboard.request_to_guild({"op": "ask_guild", "guild_id": gid, "target": far})
    assert answer["found"] and answer["cluster"] == shard_for_guild(far, TOTAL_SHARDS) // 2


async def test_eval_in_flight_when_its_cluster_dies(fleet: Fleet) -> None:
    pids = await fleet.pids()
    victim = 1
    call = asyncio.create_task(
        fleet.dashboard.broadcast_eval(
            f"await asyncio.sleep(30 if bot.cluster.id == {victim} else 0)\nbot.cluster.id",
            timeout=20,
            return_exceptions=True,
        )
    )
    await asyncio.sleep(0.3)
    started = time.monotonic()
    os.kill(pids[victim], signal.SIGKILL)
    results = await call
    assert time.monotonic() - started < 5  # not the 20 s timeout
    assert results[0] == 0 and results[2:] == [2, 3]
    assert isinstance(results[victim], ConnectionLost) and f"cluster {victim} exited (code -9)" in str(
        results[victim]
    )
    await fleet.wait_all_answer()  # respawned
    new_pids = await fleet.pids()
    assert new_pids[victim] != pids[victim]
    assert [p for i, p in enumerate(new_pids) if i != victim] == [
        p for i, p in enumerate(pids) if i != victim
    ]


async def test_a_result_over_the_frame_limit_fails_its_slot_saying_so(fleet: Fleet) -> None:
    results = await fleet.dashboard.broadcast_eval(
        "'x' * (65 << 20) if bot.cluster.id == 2 else bot.cluster.id", return_exceptions=True, timeout=30
    )
    assert results[:2] == [0, 1] and results[3] == 3
    assert isinstance(results[2], MessageTooLarge)  # not a timeout: the cluster answered at once
    assert "cluster 2's result is 68157442 bytes of JSON; the limit is 67108864 (max_frame_bytes)" in str(
        results[2]
    )


async def test_sigkilled_cluster_is_respawned_and_answers_again(fleet: Fleet) -> None:
    pids = await fleet.pids()
    os.kill(pids[3], signal.SIGKILL)
    down = await fleet.dashboard.broadcast_eval("bot.cluster.id", return_exceptions=True)
    assert down[:3] == [0, 1, 2]
    counts = await fleet.wait_all_answer()
    assert sum(counts) == GUILDS
    assert (await fleet.pids())[3] != pids[3]


async def test_hung_cluster_is_killed_and_respawned(fleet: Fleet) -> None:
    pids = await fleet.pids()
    script = "import time\nif bot.cluster.id == 2:\n    time.sleep(60)\nbot.cluster.id"
    results = await fleet.dashboard.broadcast_eval(script, timeout=2, return_exceptions=True)
    assert results[:2] == [0, 1] and results[3] == 3
    assert isinstance(results[2], RequestTimeout)
    await fleet.wait_all_answer()  # the watchdog kills it after 4 s without heartbeats; it comes back
    assert (await fleet.pids())[2] != pids[2]
