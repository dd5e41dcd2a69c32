"""A fleet across hosts: network namespaces on one Linux bridge, the real commands, CURVE on.

    bridge   10.231.0.1   zmqcross bridge + zmqcross gateway (the offline Discord)
    m1       10.231.0.11  zmqcross machine machine-1 (2 clusters)
    m2       10.231.0.12  zmqcross machine machine-2 (2 clusters)
    ops      10.231.0.20  a dashboard the test drives over stdin/stdout

Every hop crosses a veth pair and the switch, so unplugging a host's port is a pulled
cable: packets vanish, no connection is reset. Needs root and iproute2 (`.ci/run`
installs it); skipped otherwise. Namespaces are named zx-<pid>-<host> and deleted at
the end even when a test fails.
"""

from __future__ import annotations

import os
import shlex
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from netkit import ROOT, Dashboard, Network, Service, clean_env, sweep_stale_namespaces, why_no_netns

from zmqcross import generate_keypair, shard_for_guild
from zmqcross.gateway import guild_id

pytestmark = pytest.mark.timeout(90)

GUILDS = 64
TOTAL_SHARDS, SHARDS_PER_CLUSTER = 8, 2
BRIDGE_PORT, GATEWAY_PORT = 4444, 8090
DETECTION_LIMIT = 5.5
"""Seconds within which the bridge must drop an unplugged machine (heartbeat timeout 4 s, interval 1 s)."""


@dataclass
class Fleet:
    net: Network
    bridge: Service
    dashboard: Dashboard
    machines: dict[str, Service]

    def eval(self, script: str, timeout: float = 5.0) -> dict[str, Any]:
        return self.dashboard.call("broadcast_eval", {"script": script, "timeout": timeout})

    def status(self) -> dict[str, Any]:
        answer = self.dashboard.call("fleet_status")
        assert "ok" in answer, answer
        return answer["ok"]  # type: ignore[no-any-return]

    def clusters_of(self, machine_id: str) -> list[int]:
        machines = {m["id"]: m for m in self.status()["machines"]}
        return sorted(c["id"] for c in machines[machine_id]["clusters"])


def wait_until(what: str, check: Any, timeout: float) -> float:
    """Poll ``check()`` until true; the seconds it took."""
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < timeout, f"{what}: not within {timeout} s"
        time.sleep(0.1)
    return time.monotonic() - started


def all_answer(fleet: Fleet) -> bool:
    answer = fleet.eval("bot.cluster.id", timeout=3)
    return answer.get("ok") == [0, 1, 2, 3]


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    reason = why_no_netns()
    if reason:
        pytest.skip(reason)
    sweep_stale_namespaces()
    try:
        net = Network()
    except RuntimeError as exc:
        pytest.skip(f"cannot create network namespaces here: {exc}")
    services: list[Service] = []
    try:
        bridge_ip = net.add_host("bridge", 1)
        for host, octet in (("m1", 11), ("m2", 12), ("ops", 20)):
            net.add_host(host, octet)

        keys = tmp_path_factory.mktemp("netns") / "keys"
        generate_keypair(keys, "bridge")
        for name in ("machine-1", "machine-2", "dashboard"):
            generate_keypair(keys / "allowed", name)
        env = clean_env(
            ZMQCROSS_AUTH_TOKEN="netns-token",
            ZMQCROSS_KEYS=str(keys),
            ZMQCROSS_BRIDGE_HOST=bridge_ip,
            ZMQCROSS_BRIDGE_PORT=str(BRIDGE_PORT),
            ZMQCROSS_LOG_LEVEL="WARNING",
        )

        def start(name: str, host: str, command_line: str) -> Service:
            argv = ["-m", "zmqcross", *shlex.split(command_line)]
            service = Service(name, argv, env=env, netns=net.netns(host))
            services.append(service)
            return service

        gateway = start(
            "gateway", "bridge", f"gateway --host {bridge_ip} --port {GATEWAY_PORT} --guilds {GUILDS}"
        )
        api = gateway.wait_line(r"ZMQCROSS_DISCORD_API=(\S+)").group(1)
        assert api == f"http://{bridge_ip}:{GATEWAY_PORT}/api/v10"
        bridge = start(
            "bridge",
            "bridge",
            f"bridge --host {bridge_ip} --total-shards {TOTAL_SHARDS} "
            f"--shards-per-cluster {SHARDS_PER_CLUSTER} --total-machines 2 "
            # keys it does not name may only request and use the cache: machines host, the ops host evals
            f"--permissions 'machine-*=host,eval,request,cache; dashboard=eval,request,cache'",
        )
        bridge.wait_line(rf"listening on tcp://{bridge_ip}:{BRIDGE_PORT} .*CURVE on")
        bot = shlex.quote(str(ROOT / "tests" / "fleet_bot.py"))
        machines = {
            machine_id: start(
                machine_id,
                host,
                f"machine --machine-id {machine_id} --bot {bot} --spawn-delay 0 --discord-api {api}",
            )
            for machine_id, host in (("machine-1", "m1"), ("machine-2", "m2"))
        }
        for machine in machines.values():
            machine.wait_line("2/2 clusters ready", timeout=60)
        dashboard = Dashboard(env=env, netns=net.netns("ops"))
        services.append(dashboard.service)
        yield Fleet(net, bridge, dashboard, machines)
    finally:
        for service in reversed(services):
            service.stop(timeout=15)
        net.close()


def test_the_fleet_spans_four_hosts(fleet: Fleet) -> None:
    status = fleet.status()
    machines = {m["id"]: m for m in status["machines"]}
    assert machines["machine-1"]["address"] == fleet.net.hosts["m1"]
    assert machines["machine-2"]["address"] == fleet.net.hosts["m2"]
    assert (
        next(m for m in status["machines"] if m["agent"] == "dashboard")["address"] == fleet.net.hosts["ops"]
    )
    assert sorted(fleet.clusters_of("machine-1") + fleet.clusters_of("machine-2")) == [0, 1, 2, 3]
    assert status["unassigned"] == []
    # every cluster process is on its machine's host: its own namespace, not the bridge's
    pids = fleet.eval("import os\nos.getpid()")["ok"]
    where = {os.readlink(f"/proc/{pid}/ns/net") for pid in pids}
    assert len(where) == 2 and os.readlink(f"/proc/{os.getpid()}/ns/net") not in where


def test_broadcast_eval_across_the_hops(fleet: Fleet) -> None:
    assert fleet.eval("bot.cluster.id")["ok"] == [0, 1, 2, 3]
    counts = fleet.eval("len(bot.guilds)")["ok"]
    assert sum(counts) == GUILDS and all(counts)
    assert fleet.eval("sorted(bot.shards)")["ok"] == [[0, 1], [2, 3], [4, 5], [6, 7]]


def test_request_to_guild_across_the_hops(fleet: Fleet) -> None:
    for index in (0, 1, 17, 42, GUILDS - 1):
        gid = guild_id(index)
        answer = fleet.dashboard.call("request_to_guild", {"op": "guild", "guild_id": gid})
        assert "ok" in answer, answer
        shard = shard_for_guild(gid, TOTAL_SHARDS)
        assert answer["ok"]["found"] and answer["ok"]["shard"] == shard
        assert answer["ok"]["cluster"] == shard // SHARDS_PER_CLUSTER


def test_an_unplugged_machine_fails_fast_then_heals_with_the_same_clusters(fleet: Fleet) -> None:
    wait_until("every cluster answering", lambda: all_answer(fleet), 20)
    pids_before = fleet.eval("import os\nos.getpid()")["ok"]
    lost, kept = fleet.clusters_of("machine-2"), fleet.clusters_of("machine-1")

    seen = len(fleet.bridge.lines)
    fleet.net.cut("m2")
    try:
        detected = wait_until(
            "the bridge dropping machine-2",
            lambda: any("'machine-2' disconnected (silent for" in line for line in fleet.bridge.lines[seen:]),
            DETECTION_LIMIT + 2,
        )
        assert detected < DETECTION_LIMIT
        print(f"machine-2 unplugged: dropped by the bridge after {detected:.1f} s")
        status = fleet.status()
        assert "machine-2" not in {m["id"] for m in status["machines"]} and status["unassigned"] == lost

        answer = fleet.eval("bot.cluster.id", timeout=10)
        assert answer["elapsed"] < 2  # the lost clusters fail at once, not after the 10 s timeout
        results = answer["ok"]
        for cid in kept:
            assert results[cid] == cid
        for cid in lost:
            assert results[cid]["error"] == "ConnectionLost"
            assert "not running on any connected machine" in results[cid]["message"]

        on_lost = next(i for i in range(GUILDS) if shard_for_guild(guild_id(i), TOTAL_SHARDS) // 2 in lost)
        on_kept = next(i for i in range(GUILDS) if shard_for_guild(guild_id(i), TOTAL_SHARDS) // 2 in kept)
        answer = fleet.dashboard.call("request_to_guild", {"op": "guild", "guild_id": guild_id(on_lost)})
        assert answer["failed"]["error"] == "ConnectionLost" and answer["elapsed"] < 2, answer
        assert "which no connected machine runs" in answer["failed"]["message"]
        answer = fleet.dashboard.call("request_to_guild", {"op": "guild", "guild_id": guild_id(on_kept)})
        assert answer["ok"]["found"]
    finally:
        fleet.net.restore("m2")
    restored = time.monotonic()

    # It registers again, whether it noticed the silence itself or the bridge told it to.
    wait_until(
        "machine-2 registering again",
        lambda: sum("registered with the bridge" in line for line in fleet.machines["machine-2"].lines) >= 2,
        10,
    )
    wait_until("machine-2 back with its clusters", lambda: all_answer(fleet), 30)
    print(f"machine-2 plugged back: every cluster answers after {time.monotonic() - restored:.1f} s")
    assert fleet.eval("import os\nos.getpid()")["ok"] == pids_before  # no cluster was restarted
    status = fleet.status()
    assert status["unassigned"] == [] and fleet.clusters_of("machine-2") == lost
    assert all(c["restarts"] == 0 for m in status["machines"] for c in m["clusters"])
