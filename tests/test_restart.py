"""Code deploys: clusters restarted one at a time across the fleet, each event handled once.

The run's bookkeeping is driven with a fake machine; the fleet test uses real bridge,
machine and cluster processes on the offline gateway, with messages flowing throughout.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from conftest import IDENTIFY_WINDOW, failed_test, free_port
from fleetkit import (
    ROOT,
    TOKEN,
    Messages,
    Processes,
    assert_each_handled_once,
    fleet_bridge,
    fleet_env,
    wait_clusters,
)

from zmqcross import CacheServer, ClientNotFound, ClusterManager, ConfigurationError, ZmqcrossError
from zmqcross._identify import IdentifyParams
from zmqcross.bridge._restart import Restarts, RestartState, pick_targets
from zmqcross.gateway import GatewayServer
from zmqcross.planning import ShardData
from zmqcross.protocol import RESTART_SERVICE

pytestmark = pytest.mark.timeout(120)

HOLDERS = {0: "m1", 1: "m1", 2: "m2", 3: "m2"}


def test_targets_are_named_by_cluster_machine_or_all_and_mistakes_say_what_runs() -> None:
    assert pick_targets(HOLDERS, everything=True) == (0, 1, 2, 3)
    assert pick_targets(HOLDERS, clusters=[3, 1, 3]) == (1, 3)
    assert pick_targets(HOLDERS, machines=["m2"]) == (2, 3)
    with pytest.raises(ConfigurationError, match=r"no machine runs cluster\(s\) \[9\]; running: \[0, 1, 2, 3\]"):
        pick_targets(HOLDERS, clusters=[1, 9])
    with pytest.raises(ConfigurationError, match=r"machine\(s\) \['m9'\] run no clusters; machines with clusters"):
        pick_targets(HOLDERS, machines=["m9"])
    with pytest.raises(ConfigurationError, match="exactly one of"):
        pick_targets(HOLDERS, clusters=[1], everything=True)


class FakeFleet:
    """Machines that restart a cluster in ``delay`` seconds, or fail the ones in ``broken``."""

    def __init__(self, delay: float = 0.02, broken: frozenset[int] = frozenset()) -> None:
        self.delay, self.broken = delay, broken
        self.asked: list[tuple[str, int]] = []
        self.running = 0
        self.most = 0
        self.records: list[dict] = []

    async def ask(self, machine: str, cluster: int, timeout: float) -> None:
        self.asked.append((machine, cluster))
        self.running += 1
        self.most = max(self.most, self.running)
        try:
            await asyncio.sleep(self.delay)
            if cluster in self.broken:
                raise ZmqcrossError(f"cluster {cluster}'s new process exited with code 1 before it was ready")
        finally:
            self.running -= 1

    def restarts(self) -> Restarts:
        return Restarts(ask=self.ask, holder=HOLDERS.get, progress=lambda run: self.records.append(run.to_json()))


async def test_a_restart_goes_one_cluster_at_a_time_and_says_where_it_is() -> None:
    fleet = FakeFleet()
    restarts = fleet.restarts()
    run = restarts.begin((0, 1, 2, 3))
    assert run.progress() == "restarting 1/4: cluster 0 on m1"
    with pytest.raises(ZmqcrossError, match=r"a restart is already running \(restarting 1/4"):
        restarts.begin((0,))
    await restarts.wait(run)
    assert fleet.asked == [("m1", 0), ("m1", 1), ("m2", 2), ("m2", 3)] and fleet.most == 1
    assert [r["progress"] for r in fleet.records][:3] == [
        "restarting 1/4: cluster 0 on m1",
        "restarting 1/4: cluster 0 on m1",
        "restarting 2/4: cluster 1 on m1",
    ]
    assert run.state is RestartState.DONE and fleet.records[-1]["progress"].startswith("restarted 4 cluster(s) in")


async def test_concurrency_restarts_that_many_at_once() -> None:
    fleet = FakeFleet()
    restarts = fleet.restarts()
    await restarts.wait(restarts.begin((0, 1, 2, 3), concurrency=2))
    assert fleet.most == 2 and sorted(c for _, c in fleet.asked) == [0, 1, 2, 3]


async def test_the_first_failure_stops_the_roll_and_names_the_cluster() -> None:
    fleet = FakeFleet(broken=frozenset({1}))
    restarts = fleet.restarts()
    run = restarts.begin((0, 1, 2, 3))
    with pytest.raises(ZmqcrossError, match=r"restart failed after 1/4: cluster 1 on machine 'm1': .*exited"):
        await restarts.wait(run)
    assert fleet.asked == [("m1", 0), ("m1", 1)] and run.done == [0]


async def test_a_cancelled_restart_finishes_its_cluster_and_starts_no_other() -> None:
    fleet = FakeFleet(delay=0.2)
    restarts = fleet.restarts()
    run = restarts.begin((0, 1, 2, 3))
    await asyncio.sleep(0.05)
    restarts.cancel()
    with pytest.raises(ZmqcrossError, match=r"restart cancelled after 1/4"):
        await restarts.wait(run)
    assert fleet.asked == [("m1", 0)] and run.done == [0]
    await restarts.wait(restarts.begin((2,)))  # the next one may start


async def test_restart_requests_that_cannot_be_met_are_refused_saying_why(make_bridge, make_client) -> None:
    bridge = await make_bridge()
    ops = await make_client(bridge, machine_id="ops", agent="dashboard")
    with pytest.raises(ConfigurationError, match=r"no machine runs cluster\(s\) \[1\]; running: none"):
        await bridge.restart(clusters=[1])
    for options, message in [
        ({"clusters": "0,1"}, "clusters must be a non-empty list of cluster ids"),
        ({"machines": [["m1"]]}, "machines must be a list of machine ids"),
        ({"all": True, "timeout": "soon"}, "timeout must be a positive number of seconds"),
        ({"all": True, "concurrency": 0}, "concurrency must be a positive integer"),
        ({"every": True}, r"restart got unknown option\(s\) \['every'\]"),
        ({}, "exactly one of clusters"),
    ]:
        with pytest.raises(ZmqcrossError, match=message):
            await ops.call_service(RESTART_SERVICE, options)
    assert await ops.cancel_restart() is None  # nothing ran


async def test_a_machine_restarts_one_cluster_at_a_time_and_never_during_a_roll(gateway: GatewayServer) -> None:
    # A bare ClusterManager, no bridge: its handovers are its own.
    manager = ClusterManager(
        ROOT / "tests" / "fleet_bot.py",
        total_shards=2,
        shard_list=[[0], [1]],
        env={"ZMQCROSS_DISCORD_API": gateway.api_base, "ZMQCROSS_LOG_LEVEL": "WARNING"},
        identify=IdentifyParams(window=IDENTIFY_WINDOW),
    )
    try:
        await manager.spawn()
        before = {c.id: c.pid for c in manager.clusters}
        status = await manager.restart(1)
        assert status.pid not in (None, before[1]) and status.state == "ready" and status.live
        with pytest.raises(ClientNotFound, match=r"this machine runs no cluster 7 \(it runs \[0, 1\]\)"):
            await manager.restart(7)
        plan = ShardData(
            total_shards=4,
            shard_list=((0, 1), (2, 3)),
            cluster_list=(0, 1),
            total_clusters=2,
            plan_version="next",
            identify=IdentifyParams(window=IDENTIFY_WINDOW),
        )
        rolling = asyncio.create_task(manager.roll(plan))
        await asyncio.sleep(0.2)
        with pytest.raises(ZmqcrossError, match="cluster 0 was not restarted: a handover is under way"):
            await manager.restart(0)
        await rolling
        assert [(c.shards, c.state, c.live) for c in manager.statuses()] == [
            ((0, 1), "ready", True),
            ((2, 3), "ready", True),
        ]
    finally:
        await manager.close()


# ---------------------------------------------------------------------------- a real fleet


@pytest.fixture
async def procs(gateway: GatewayServer, tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Processes]:
    port = free_port()
    bot = tmp_path / "bot.py"
    shutil.copy(ROOT / "tests" / "fleet_bot.py", bot)
    processes = Processes(fleet_env(gateway.api_base, port, ZMQCROSS_BOT_FILE=str(bot)))
    processes.port = port  # type: ignore[attr-defined]
    processes.bot = bot  # type: ignore[attr-defined]
    yield processes
    await processes.stop_all(failed=failed_test(request))


async def test_a_fleet_restart_under_load_replaces_every_process_and_handles_each_message_once(
    procs, make_bridge, make_client, gateway: GatewayServer
) -> None:
    bridge = await fleet_bridge(make_bridge, procs.port)
    cache = CacheServer(bridge, paths=[{"path": "handled", "max_size": 100_000}])
    progress: list[str] = []
    bridge.on("restart_progress", lambda record: progress.append(record["progress"]))
    procs.machine("machine-1"), procs.machine("machine-2")
    dash = await make_client(
        auth_token=TOKEN, port=procs.port, pub_port=procs.port + 1, agent="dashboard", machine_id="dash"
    )
    await wait_clusters(dash, [0, 1, 2, 3])
    pids = await dash.broadcast_eval("import os\nos.getpid()")
    answered: list[int] = []
    done = asyncio.Event()

    async def poll() -> None:
        while not done.is_set():
            results = await dash.broadcast_eval("bot.cluster.id", return_exceptions=True, timeout=3)
            answered.append(sum(not isinstance(r, Exception) for r in results))
            await asyncio.sleep(0.1)

    async with Messages(gateway.port, range(8)) as messages:  # guilds 0-7: one on each shard
        poller = asyncio.create_task(poll())
        await asyncio.sleep(0.5)
        try:
            record = await bridge.restart(all=True)
            await asyncio.sleep(0.5)
        finally:
            done.set()
            await poller
    holder = {c: m for m, clusters in bridge.shard_map()["held"].items() for c in clusters}
    assert record["state"] == "done" and record["done"] == [0, 1, 2, 3]
    assert progress[0] == f"restarting 1/4: cluster 0 on {holder[0]}"
    assert f"restarting 3/4: cluster 2 on {holder[2]}" in progress
    after = await dash.broadcast_eval("import os\nos.getpid()")
    assert all(a != b for a, b in zip(pids, after, strict=True)), (pids, after)
    assert min(answered) >= 3, answered  # never more than one cluster missing
    await assert_each_handled_once(cache, messages.sent)

    # A bot file that no longer imports: the roll stops at the first cluster, all old ones serve.
    procs.bot.write_text("raise RuntimeError('the new version is broken')\n")
    with pytest.raises(ZmqcrossError) as failed:
        await bridge.restart(all=True)
    message = failed.value.message
    assert message.startswith(f"restart failed after 0/4: cluster 0 on machine '{holder[0]}': cluster 0's new"), message
    assert "RuntimeError: the new version is broken" in message and "serves on" in message
    assert await dash.broadcast_eval("import os\nos.getpid()") == after
    status = await bridge.status()
    assert status.restart is not None and status.restart["state"] == "failed"
    assert all(c.state == "ready" and c.live for m in status.machines for c in m.clusters)
    await cache.close()
