"""Shard-level health: each shard's state, latency and reconnects reported, and a shard that
stays down gets its cluster restarted while the other shards serve on.

The tracker and the records are pure; the fleet test uses real processes on an offline
gateway made to refuse one shard's reconnects.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest
from conftest import failed_test, free_port
from fleetkit import TOKEN, Processes, fleet_bridge, fleet_env, wait_clusters

from zmqcross import ZmqcrossError
from zmqcross.cluster._shardhealth import ShardHealth
from zmqcross.gateway import GatewayServer, guild_id, shard_of
from zmqcross.status import ClusterStatus, ShardStatus

pytestmark = pytest.mark.timeout(120)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_shard_moves_with_discord_py_s_events_and_counts_its_troubles() -> None:
    clock = Clock()
    health = ShardHealth([2, 3], clock=clock)
    health.move(3, "waiting")
    health.move(3, "identifying")
    health.observe("shard_connect", (3,))
    clock.now += 1
    health.observe("shard_ready", (3,))
    health.observe("message", ("not a shard event",))
    health.observe("shard_ready", (99,))  # not one of this cluster's shards: ignored
    clock.now += 5
    health.observe("shard_disconnect", (3,))
    clock.now += 2.5
    assert health.down_for(3) == 2.5 and health.down_for(2) == 8.5  # shard 2 never connected
    rows = health.wire({3: 0.0421, 2: float("inf")}, {3: 0.5})
    assert rows == [
        [2, "connecting", None, None, 0, 0, 8.5],
        [3, "disconnected", 0.0421, 0.5, 1, 0, 2.5],
    ]
    health.observe("shard_resumed", (3,))
    assert health.wire({}, {})[1] == [3, "ready", None, None, 1, 1, 0.0]


def test_a_shard_is_down_from_when_it_left_ready_not_counting_its_turns_in_the_queue() -> None:
    # A shard whose reconnects keep failing cycles disconnected -> waiting -> identifying ->
    # connecting -> disconnected; no move may restart its clock, or a zombie shard never
    # reaches shard_down_timeout and the dashboard never raises its alert. Time spent
    # waiting for an IDENTIFY turn is the fleet's queue, not the shard's failure: counting it
    # would restart a cluster the moment its shard's turn came after a long queue.
    clock = Clock()
    health = ShardHealth([0], clock=clock)
    health.observe("shard_ready", (0,))
    clock.now += 10
    health.observe("shard_disconnect", (0,))  # down from t=110
    for _ in range(2):
        clock.now += 1
        health.move(0, "waiting")
        clock.now += 30  # the queue
        assert health.down_for(0) == health.wire({}, {})[0][6]
        health.move(0, "identifying")
        clock.now += 1
        health.observe("shard_connect", (0,))
        clock.now += 1
        health.observe("shard_disconnect", (0,))
    clock.now += 2
    assert health.down_for(0) == 68 - 60  # 68 s out of ready, 60 of them queued
    assert health.wire({}, {})[0][6] == 8
    health.move(0, "waiting")
    clock.now += 100
    assert health.down_for(0) == 8  # still queued: the clock stands
    health.move(0, "identifying")
    clock.now += 0.5
    assert health.down_for(0) == 8.5
    health.observe("shard_ready", (0,))
    assert health.down_for(0) == 0
    clock.now += 3
    health.observe("shard_disconnect", (0,))
    clock.now += 0.5
    assert health.down_for(0) == 0.5  # back up in between: a new outage


def test_shard_records_survive_the_wire_and_refuse_what_is_not_one() -> None:
    shard = ShardStatus(3, "disconnected", 0.04, 1.5, 2, 1, 12.0)
    assert ShardStatus.from_row(shard.to_row()) == shard and not shard.up
    for bad in ([3, "ready"], [3, "ready", "fast", None, 0, 0, 0.0], "row", [True, "ready", None, None, 0, 0, 0]):
        with pytest.raises(ValueError, match="shard row"):
            ShardStatus.from_row(bad)
    cluster = ClusterStatus(1, (2, 3), 10, "ready", 5, 0, 1.0, 2.0, 3.0, None, shard_health=(shard,), rss=2**26)
    assert ClusterStatus.from_json(cluster.to_json()) == cluster
    older = {k: v for k, v in cluster.to_json().items() if k not in ("shard_health", "rss")}
    assert ClusterStatus.from_json(older).shard_health == ()  # a machine of an older version


# ---------------------------------------------------------------------------- a real fleet

DOWN = 3  # the shard made to fail: cluster 1 runs shards 2 and 3


@pytest.fixture
async def procs(gateway: GatewayServer, request: pytest.FixtureRequest) -> AsyncIterator[Processes]:
    port = free_port()
    processes = Processes(fleet_env(gateway.api_base, port, ZMQCROSS_SHARD_DOWN_TIMEOUT="4"))
    processes.port = port  # type: ignore[attr-defined]
    yield processes
    await processes.stop_all(failed=failed_test(request))


def shard_view(machines) -> dict[int, list[ShardStatus]]:  # type: ignore[no-untyped-def]
    """Every report of each shard, from current and retiring clusters alike."""
    view: dict[int, list[ShardStatus]] = {}
    for m in machines:
        for c in m.clusters:
            for s in c.shard_health:
                view.setdefault(s.id, []).append(s)
    return view


async def test_a_shard_that_stays_down_is_reported_and_its_cluster_restarted(
    procs, make_bridge, make_client, gateway: GatewayServer
) -> None:
    bridge = await fleet_bridge(make_bridge, procs.port, metrics_port=0)
    procs.machine("machine-1"), procs.machine("machine-2")
    dash = await make_client(
        auth_token=TOKEN, port=procs.port, pub_port=procs.port + 1, agent="dashboard", machine_id="dash"
    )
    await wait_clusters(dash, [0, 1, 2, 3])
    status = await bridge.status()
    clusters = {c.id: c for m in status.machines for c in m.clusters}
    assert sorted(s.id for c in clusters.values() for s in c.shard_health) == list(range(8))
    assert all(s.up and s.latency is not None and s.latency > 0 for c in clusters.values() for s in c.shard_health)
    for c in clusters.values():  # RSS as the kernel counts it
        with open(f"/proc/{c.pid}/status") as proc_status:
            vm_rss = next(int(line.split()[1]) * 1024 for line in proc_status if line.startswith("VmRSS:"))
        assert c.rss is not None and abs(c.rss - vm_rss) <= 0.1 * vm_rss, (c.rss, vm_rss)
    old_pid = clusters[1].pid

    gateway.refuse_shard(DOWN)
    assert await gateway.disconnect_shard(DOWN) == 1
    cut = time.monotonic()
    served: list[dict[int, bool]] = []
    text = ""
    async with aiohttp.ClientSession() as http:
        while True:  # down in status and in the metrics within a few seconds
            view = shard_view((await bridge.status()).machines)
            if not any(s.up for s in view[DOWN]):
                async with http.get(bridge.metrics.url) as response:
                    text = await response.text()
                if _metric(text, DOWN) == 0.0:
                    break
            assert time.monotonic() - cut < 5, (view[DOWN], [x for x in text.splitlines() if "shard_up" in x])
            await asyncio.sleep(0.2)
    detected = time.monotonic() - cut
    guild = next(guild_id(i) for i in range(64) if shard_of(guild_id(i), 8) == DOWN)
    with pytest.raises(ZmqcrossError, match=rf"guild {guild} is on shard {DOWN} of cluster 1, which is disconnected"):
        await dash.request_to_guild({"op": "guild"}, guild_id=guild)
    with pytest.raises(ZmqcrossError, match=rf"is on shard {DOWN} of cluster 1, which is disconnected"):
        await dash.broadcast_eval("bot.cluster.id", guild_id=guild)

    # After shard_down_timeout (4 s) the machine restarts cluster 1 (a handover: shard 2
    # serves on); once that has begun, the shard is let back.
    while True:
        status = await bridge.status()
        view = shard_view(status.machines)
        served.append({sid: any(s.up for s in reports) for sid, reports in view.items()})
        restarted = [c for m in status.machines for c in m.clusters if c.id == 1 and c.restarts >= 1]
        if restarted:
            break
        assert time.monotonic() - cut < 15, "cluster 1 was not restarted"
        await asyncio.sleep(0.2)
    assert time.monotonic() - cut >= 4.0
    gateway.refuse_shard(DOWN, False)
    while True:
        status = await bridge.status()
        view = shard_view(status.machines)
        served.append({sid: any(s.up for s in reports) for sid, reports in view.items()})
        current = [c for m in status.machines for c in m.clusters if c.id == 1 and c.state == "ready" and c.live]
        if current and current[0].pid != old_pid and all(s.up for s in current[0].shard_health):
            break
        assert time.monotonic() - cut < 60, status
        await asyncio.sleep(0.2)
    assert detected < 5
    others = [sid for sid in range(8) if sid != DOWN]
    assert all(sample.get(sid) for sample in served for sid in others), served  # the others never left
    assert (await dash.request_to_guild({"op": "guild", "guild_id": guild}))["shard"] == DOWN


def _metric(text: str, shard: int) -> float | None:
    for line in text.splitlines():
        if line.startswith("zmqcross_shard_up{") and f'shard="{shard}"' in line and 'cluster="1"' in line:
            return float(line.rsplit(" ", 1)[1])
    return None


QUEUE_WINDOW = 0.6  # one IDENTIFY per 0.6 s: 8 shards dropped at once wait up to 4.2 s for turns
QUEUE_DOWN_TIMEOUT = 2.0


async def test_a_long_identify_queue_after_a_fleet_wide_drop_restarts_no_cluster(
    make_bridge, make_client, request: pytest.FixtureRequest
) -> None:
    # Discord ends every session at once (op 9): every shard must IDENTIFY again, one turn at
    # a time. The back of the queue waits longer than shard_down_timeout, yet no shard is
    # broken: restarting its cluster as its turn comes would only send its other shard to the
    # back of the queue again.
    gateway = GatewayServer(guilds=64, identify_window=QUEUE_WINDOW)
    await gateway.start()
    port = free_port()
    procs = Processes(
        fleet_env(
            gateway.api_base,
            port,
            ZMQCROSS_SHARD_DOWN_TIMEOUT=str(QUEUE_DOWN_TIMEOUT),
            ZMQCROSS_IDENTIFY_WINDOW=str(QUEUE_WINDOW),
        )
    )
    try:
        bridge = await fleet_bridge(make_bridge, port, identify_window=QUEUE_WINDOW)
        procs.machine("machine-1"), procs.machine("machine-2")
        dash = await make_client(
            auth_token=TOKEN, port=port, pub_port=port + 1, agent="dashboard", machine_id="dash"
        )
        await wait_clusters(dash, [0, 1, 2, 3], timeout=60)
        pids = {c.id: c.pid for m in (await bridge.status()).machines for c in m.clusters}
        dropped = time.time()
        for shard in range(8):
            assert await gateway.invalidate(shard) == 1
        end = time.monotonic() + 40
        while True:
            status = await bridge.status()
            clusters = {c.id: c for m in status.machines for c in m.clusters}
            assert all(c.restarts == 0 for c in clusters.values()), status
            again = [r for r in gateway.identifies() if r["accepted"] and r["time"] > dropped]
            if len(again) == 8 and all(s.up for c in clusters.values() for s in c.shard_health):
                break
            assert time.monotonic() < end, (again, status)
            await asyncio.sleep(0.2)
        last_turn = max(r["time"] for r in again) - dropped
        assert last_turn > QUEUE_DOWN_TIMEOUT + 1, last_turn  # the queue was long enough to matter
        await asyncio.sleep(QUEUE_DOWN_TIMEOUT + 1.5)  # a late repair would show now
        status = await bridge.status()
        assert {c.id: c.pid for m in status.machines for c in m.clusters} == pids
        assert all(c.restarts == 0 for m in status.machines for c in m.clusters), status
    finally:
        await procs.stop_all(failed=failed_test(request))
        await gateway.close()
