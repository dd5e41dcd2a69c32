"""Fleet operations under fault injection: real bridge and machine processes, real clusters.

Bridges are bots/bridge.py (when the test kills the bridge) or in-process (when the test
watches its events); machines are always bots/cluster.py processes with real discord.py
clusters on the offline gateway.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator

import pytest
from conftest import failed_test, free_port
from fleetkit import (
    TOKEN,
    Messages,
    Processes,
    assert_each_handled_once,
    fleet_bridge,
    fleet_env,
    wait_clusters,
)

from zmqcross import CacheServer, Client, ConnectionLost
from zmqcross.gateway import GatewayServer, guild_id

pytestmark = pytest.mark.timeout(120)

GUILDS = 64


@pytest.fixture
async def procs(gateway: GatewayServer, request: pytest.FixtureRequest) -> AsyncIterator[Processes]:
    port = free_port()
    processes = Processes(fleet_env(gateway.api_base, port))
    processes.port = port  # type: ignore[attr-defined]
    yield processes
    await processes.stop_all(failed=failed_test(request))


async def in_process_bridge(make_bridge, procs: Processes, **options):
    return await fleet_bridge(make_bridge, procs.port, **options)  # type: ignore[attr-defined]


async def dashboard(make_client, procs: Processes) -> Client:
    return await make_client(
        auth_token=TOKEN,
        port=procs.port,
        pub_port=procs.port + 1,  # type: ignore[attr-defined]
        agent="dashboard",
        machine_id="dashboard",
        connect_timeout=15,
    )


async def pids(client: Client) -> list[int]:
    return await client.broadcast_eval("import os\nos.getpid()")


async def test_bridge_sigkill_restarts_no_cluster(procs, make_client, gateway: GatewayServer) -> None:
    first = procs.bridge()
    await first.wait_line("listening")
    procs.machine("machine-1"), procs.machine("machine-2")
    dash = await dashboard(make_client, procs)
    await wait_clusters(dash, [0, 1, 2, 3])
    before = await pids(dash)
    sessions = {s["session_id"] for s in gateway.live_sessions()}

    first.signal(signal.SIGKILL)
    await first.wait_exit()
    killed = time.monotonic()
    second = procs.bridge()
    await second.wait_line("listening")
    await wait_clusters(dash, [0, 1, 2, 3], timeout=15)
    recovered = time.monotonic() - killed
    assert await pids(dash) == before  # no cluster restarted
    assert {s["session_id"] for s in gateway.live_sessions()} == sessions  # no session closed (lease 5 s)
    assert recovered < 10
    status = await dash.fleet_status()
    assert status.unassigned == () and not any(m.stale for m in status.machines)
    assert {c: len(h) for c, h in status.cluster_hosts().items()} == {0: 1, 1: 1, 2: 1, 3: 1}
    answer = await dash.request_to_guild({"op": "guild", "guild_id": guild_id(9)})
    assert answer["found"]


async def test_sigkilled_machine_fails_over_to_a_standby(procs, make_bridge, make_client) -> None:
    bridge = await in_process_bridge(make_bridge, procs)
    lost: list[tuple[str, str, float]] = []
    bridge.on("disconnect", lambda client, reason: lost.append((client.id, reason, time.monotonic())))
    m1, _ = procs.machine("machine-1"), procs.machine("machine-2")
    dash = await dashboard(make_client, procs)
    await wait_clusters(dash, [0, 1, 2, 3])
    standby = procs.machine("machine-3")
    await standby.wait_line("standby")
    held_by_m1 = list(bridge.shard_map()["held"]["machine-1"])

    doubled: list[dict] = []

    async def watch() -> None:  # no cluster may ever be listed on two machines
        while True:
            hosts = (await bridge.status()).cluster_hosts()
            if any(len(h) > 1 for h in hosts.values()):
                doubled.append(hosts)
            await asyncio.sleep(0.05)

    watcher = asyncio.create_task(watch())
    killed = time.monotonic()
    m1.signal(signal.SIGKILL)
    try:
        while not any(cid == "machine-1" for cid, _, _ in lost):
            assert time.monotonic() - killed < 5, "machine loss not detected within 5 s"
            await asyncio.sleep(0.01)
        await wait_clusters(dash, [0, 1, 2, 3])
    finally:
        watcher.cancel()
    detected = next(t for cid, _, t in lost if cid == "machine-1") - killed
    assert detected < 5
    assert bridge.shard_map()["held"]["machine-3"] == held_by_m1
    assert doubled == []
    hosts = (await bridge.status()).cluster_hosts()
    assert all(hosts[c] == ["machine-3"] for c in held_by_m1)


async def test_sigstopped_machine_is_found_silent_and_heals(procs, make_bridge, make_client) -> None:
    bridge = await in_process_bridge(make_bridge, procs)
    lost: list[tuple[str, str, float]] = []
    bridge.on("disconnect", lambda client, reason: lost.append((client.id, reason, time.monotonic())))
    _, m2 = procs.machine("machine-1"), procs.machine("machine-2")
    dash = await dashboard(make_client, procs)
    await wait_clusters(dash, [0, 1, 2, 3])
    before = await pids(dash)
    its = bridge.shard_map()["held"]["machine-2"]

    stopped = time.monotonic()
    m2.signal(signal.SIGSTOP)
    while not lost:
        assert time.monotonic() - stopped < 6, "a silent machine was not detected"
        await asyncio.sleep(0.05)
    client_id, reason, at = lost[0]
    assert client_id == "machine-2" and reason.startswith("silent for") and at - stopped <= 5.5
    t0 = time.monotonic()
    results = await dash.broadcast_eval("bot.cluster.id", return_exceptions=True, timeout=10)
    assert time.monotonic() - t0 < 2  # its slots fail at once, not after the timeout
    for cid in its:
        assert isinstance(results[cid], ConnectionLost) and "not running on any connected machine" in str(
            results[cid]
        )

    # Frozen for surely longer than its lease (5 s from its last ping, at most 1 s before the
    # freeze, plus the bridge's margin), so its clusters must have closed their sessions.
    await asyncio.sleep(max(0.0, stopped + 5 + 1 + 1 - time.monotonic()))
    m2.signal(signal.SIGCONT)
    await wait_clusters(dash, [0, 1, 2, 3], timeout=30)
    after = await pids(dash)
    # Frozen longer than its lease (5 s), its clusters closed their sessions and stopped; no
    # standby took them, so it got them back and started them again. The others never moved.
    assert all(after[c] == before[c] for c in range(4) if c not in its)
    assert all(after[c] != before[c] for c in its)


async def test_a_rolling_reshard_keeps_answering_and_handles_each_message_once(
    procs, make_bridge, make_client, gateway: GatewayServer
) -> None:
    bridge = await in_process_bridge(make_bridge, procs)
    cache = CacheServer(bridge, paths=[{"path": "handled", "max_size": 100_000}])
    procs.machine("machine-1"), procs.machine("machine-2")
    dash = await dashboard(make_client, procs)
    await wait_clusters(dash, [0, 1, 2, 3])
    polls: list[list] = []
    done = asyncio.Event()

    async def poll() -> None:
        while not done.is_set():
            polls.append(await dash.broadcast_eval("bot.cluster.id", return_exceptions=True, timeout=3))
            await asyncio.sleep(0.05)

    # Every 50 ms a message in 12 guilds: every shard of the old plan (8) and the new one (12).
    async with Messages(gateway.port, range(12)) as messages:
        poller = asyncio.create_task(poll())
        await asyncio.sleep(1.0)
        plan = await bridge.reshard(total_shards=12)
        assert plan.total_clusters == 6
        try:
            await wait_clusters(dash, [0, 1, 2, 3, 4, 5], timeout=60)
            end = time.monotonic() + 30
            while waiting := [
                (m.id, c.id, c.state, c.live)
                for m in (await bridge.status()).machines
                for c in m.clusters
                if c.state == "retiring" or not c.live
            ]:
                assert time.monotonic() < end, f"the roll has not ended: {waiting}"
                await asyncio.sleep(0.1)
            await asyncio.sleep(1.0)
        finally:
            done.set()
            await poller
    answered = [sum(not isinstance(r, Exception) for r in poll) for poll in polls]
    # one cluster per machine is swapped at a time: never more than two of six slots down
    assert len(polls) > 5 and min(answered) >= 2, answered
    assert await dash.broadcast_eval("sorted(bot.shards)") == [
        [0, 1],
        [2, 3],
        [4, 5],
        [6, 7],
        [8, 9],
        [10, 11],
    ]
    assert sum(await dash.broadcast_eval("len(bot.guilds)")) == GUILDS
    status = await bridge.status()
    assert not any(m.stale for m in status.machines) and status.unassigned == ()
    assert all(await dash.broadcast_eval("bot.cluster.live"))
    await assert_each_handled_once(cache, messages.sent)  # through the whole roll
    # A plan with no room for one machine: its clusters retire once their successors on the
    # other are ready, and it waits as a standby.
    await bridge.reshard(total_machines=1)
    end = time.monotonic() + 40
    while True:
        status = await bridge.status()
        hosts = {m.id: [(c.id, c.state, c.live) for c in m.clusters] for m in status.machines if m.agent == "bot"}
        if len(status.standbys) == 1 and sorted(len(h) for h in hosts.values()) == [0, 6]:
            if all(state == "ready" and live for h in hosts.values() for _, state, live in h):
                break
        assert time.monotonic() < end, hosts
        await asyncio.sleep(0.2)
    assert await dash.broadcast_eval("bot.cluster.id") == [0, 1, 2, 3, 4, 5]
    await cache.close()


async def test_sigterm_drains_and_the_standby_takes_over_at_once(procs, make_bridge, make_client) -> None:
    bridge = await in_process_bridge(make_bridge, procs)
    reasons: dict[str, str] = {}
    bridge.on("disconnect", lambda client, reason: reasons.setdefault(client.id, reason))
    m1, _ = procs.machine("machine-1"), procs.machine("machine-2")
    dash = await dashboard(make_client, procs)
    await wait_clusters(dash, [0, 1, 2, 3])
    standby = procs.machine("machine-3")
    await standby.wait_line("standby")
    held = list(bridge.shard_map()["held"]["machine-1"])

    started = time.monotonic()
    m1.signal(signal.SIGTERM)
    while bridge.shard_map()["held"].get("machine-3") != held:
        assert time.monotonic() - started < 2, "the standby was not handed the chunk at once"
        await asyncio.sleep(0.01)
    handed_over = time.monotonic() - started
    assert await m1.wait_exit(20) == 0
    assert reasons["machine-1"] == "left: the machine is shutting down"
    await wait_clusters(dash, [0, 1, 2, 3])
    assert handed_over < 2  # no heartbeat timeout (4 s) was waited for
    # The agent upgraded, machine-1 comes back: the new standby, nothing moves.
    upgraded = procs.machine("machine-1")
    await upgraded.wait_line("standby")
    assert bridge.shard_map()["held"]["machine-3"] == held
    assert (await bridge.status()).standbys == ("machine-1",)


async def test_a_standby_that_never_starts_its_chunk_is_reported_and_the_chunk_moves_on(
    procs, make_bridge, make_client
) -> None:
    bridge = await in_process_bridge(make_bridge, procs, claim_timeout=3.0)
    unclaimed: list[tuple[str, tuple[int, ...], float]] = []
    bridge.on(
        "assignment_unclaimed", lambda mid, clusters: unclaimed.append((mid, clusters, time.monotonic()))
    )
    m1, _ = procs.machine("machine-1"), procs.machine("machine-2")
    dash = await dashboard(make_client, procs)
    await wait_clusters(dash, [0, 1, 2, 3])
    # A standby run by hand (a client, no Machine) that asks for work and ignores what it is handed.
    idle = await make_client(
        auth_token=TOKEN,
        port=procs.port,
        pub_port=procs.port + 1,  # type: ignore[attr-defined]
        machine_id="idle",
        agent="bot",
    )
    assert (await idle.request_shard_data()).standby
    handed: list[list[int]] = []
    idle.on("assignment", lambda data, reason: handed.append(list(data.cluster_list)))
    spare = procs.machine("machine-3")
    await spare.wait_line("standby")
    held = list(bridge.shard_map()["held"]["machine-1"])

    m1.signal(signal.SIGTERM)  # drained: the first standby in line (idle) is handed its chunk
    started = time.monotonic()
    while not handed:
        assert time.monotonic() - started < 5, "the idle standby was never handed the chunk"
        await asyncio.sleep(0.02)
    assert handed == [held]
    status = await bridge.status()
    assert set(status.unassigned) == set() and bridge.shard_map()["held"]["idle"] == held
    await wait_clusters(dash, [0, 1, 2, 3], timeout=30)
    ((who, clusters, when),) = unclaimed
    assert (who, list(clusters)) == ("idle", held) and when - started >= 3.0
    assert bridge.shard_map()["held"]["machine-3"] == held
    machines = {m.id: m for m in (await bridge.status()).machines}
    assert "did not start them within claim_timeout=3 s" in (machines["idle"].stalled or "")
    assert not machines["idle"].standby and machines["machine-3"].clusters


async def test_bridge_restarted_with_a_new_plan(procs, make_client) -> None:
    first = procs.bridge()
    await first.wait_line("listening")
    procs.machine("machine-1")
    procs.machine("machine-2", ZMQCROSS_ROLLING_RESTARTS="0")
    dash = await dashboard(make_client, procs)
    await wait_clusters(dash, [0, 1, 2, 3])
    first.signal(signal.SIGKILL)
    await first.wait_exit()
    second = procs.bridge(ZMQCROSS_TOTAL_SHARDS="12")
    await second.wait_line("listening")
    end = time.monotonic() + 60
    while True:
        status = await dash.fleet_status()
        machines = {m.id: m for m in status.machines}
        rolled_in = machines.get("machine-1")
        if (
            "machine-2" in machines
            and rolled_in is not None
            and rolled_in.plan_version == status.plan_version
            and len(rolled_in.clusters) == 3  # the roll is over: no old cluster left, all three new ones
            and all(c.state == "ready" for c in rolled_in.clusters)
        ):
            break
        assert time.monotonic() < end, status
        await asyncio.sleep(0.2)
    assert not machines["machine-1"].stale and machines["machine-2"].stale
    rolled = [c for c in machines["machine-1"].clusters if c.state == "ready"]
    # machine-1 runs one of the new plan's two chunks, whichever it was handed on re-registering
    assert [c.shards for c in rolled] in ([(0, 1), (2, 3), (4, 5)], [(6, 7), (8, 9), (10, 11)])
    assert [c.shards for c in machines["machine-2"].clusters] in ([(0, 1), (2, 3)], [(4, 5), (6, 7)])


async def test_a_cut_off_machine_never_overlaps_the_standby_that_takes_its_shards(
    procs, make_bridge, make_client, gateway: GatewayServer
) -> None:
    # machine-2's agent frozen for 15 s, as behind a cut link: its clusters keep running, and
    # must close their sessions when its lease runs out, before the bridge gives its chunk to
    # the standby. Back, its claim is refused and it becomes a standby. Sampled every 100 ms,
    # no shard ever has two live sessions.
    bridge = await in_process_bridge(make_bridge, procs)
    _, m2 = procs.machine("machine-1"), procs.machine("machine-2")
    dash = await dashboard(make_client, procs)
    await wait_clusters(dash, [0, 1, 2, 3])
    standby = procs.machine("machine-3")
    await standby.wait_line("standby")
    its = list(bridge.shard_map()["held"]["machine-2"])

    doubled: list[list[int]] = []
    samples = 0

    def live_shards() -> list[int]:
        return sorted(s["shard"][0] for s in gateway.live_sessions())

    async def sample() -> None:
        nonlocal samples
        while True:
            shards = live_shards()
            samples += 1
            if len(shards) != len(set(shards)):
                doubled.append(shards)
            await asyncio.sleep(0.1)

    sampler = asyncio.create_task(sample())
    try:
        frozen = time.monotonic()
        m2.signal(signal.SIGSTOP)
        while live_shards() != list(range(8)) or bridge.shard_map()["held"].get("machine-3") != its:
            # lease 5 s + margin 0.5 s + the standby's start-up
            assert time.monotonic() - frozen < 5 + 0.5 + 15, (live_shards(), bridge.shard_map())
            await asyncio.sleep(0.1)
        served_again = time.monotonic() - frozen
        await asyncio.sleep(max(0.0, 15 - served_again))
        m2.signal(signal.SIGCONT)
        end = time.monotonic() + 20
        # (Until it has re-registered, machine-2 is not in the status at all.)
        while not any(m.id == "machine-2" and m.standby for m in (await bridge.status()).machines):
            assert time.monotonic() < end, "machine-2 did not become a standby"
            await asyncio.sleep(0.1)
        await asyncio.sleep(10)  # and nothing doubles after the heal either
    finally:
        sampler.cancel()
    assert doubled == [], doubled[:3]
    assert samples > 150 and live_shards() == list(range(8))
    status = await bridge.status()
    assert all(len(hosts) == 1 for hosts in status.cluster_hosts().values()), status.cluster_hosts()
    back = next(m for m in status.machines if m.id == "machine-2")
    assert not [c for c in back.clusters if c.state in ("starting", "ready")]
    print(f"clusters {its} served again {served_again:.1f} s after the freeze")
