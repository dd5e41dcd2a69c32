"""Prometheus metrics: scraped over HTTP and parsed with prometheus_client's own parser.

The fleet test runs `zmqcross bridge --metrics-port` as a process, one bots/cluster.py
machine and one Machine in this process (with MachineMetrics), on the offline gateway.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import Callable

import aiohttp
import pytest
from conftest import free_port
from fleetkit import ROOT, TOKEN, Proc, Processes, fleet_env, wait_clusters
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from zmqcross import (
    AccessPolicy,
    Bridge,
    CacheClient,
    CachePath,
    CacheServer,
    Client,
    ConfigurationError,
    Machine,
    PermissionDenied,
    RemoteError,
    ZmqcrossError,
)
from zmqcross.gateway import GatewayServer, guild_id
from zmqcross.metrics import OUTCOMES, BridgeMetrics, MachineMetrics

pytestmark = pytest.mark.timeout(120)

GUILDS = 64

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(url: str) -> Samples:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = await response.text()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def total(samples: Samples, name: str, **labels: str) -> float:
    """Sum of ``name`` over the series whose labels include ``labels``."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= ls)


async def scrape_until(
    url: str, check: Callable[[Samples], bool], timeout: float = 30.0, what: str = "values"
) -> Samples:
    end = time.monotonic() + timeout
    samples: Samples = {}
    while time.monotonic() < end:
        samples = await scrape(url)
        if check(samples):
            return samples
        await asyncio.sleep(0.2)
    raise AssertionError(f"the metrics never showed {what}: {sorted(samples.items())}")


# --------------------------------------------------------------------------- one bridge, no clusters


async def test_bridge_metrics_count_requests_refusals_and_the_cache(make_bridge, make_client) -> None:
    policy = AccessPolicy(agents={"viewer": ["request"]})
    bridge = await make_bridge(metrics_port=0, permissions=policy)
    cache = CacheServer(bridge, paths=[CachePath("guilds", max_size=100)])

    @bridge.on("client_request")
    def answer(request, client):
        if request.data == "boom":
            raise ValueError("asked to fail")
        return {"echo": request.data}

    try:
        ops = await make_client(bridge, machine_id="ops", agent="ops")
        viewer = await make_client(bridge, machine_id="viewer", agent="viewer")
        metrics = bridge.metrics
        assert metrics is not None and metrics.port > 0
        assert metrics.url == f"http://127.0.0.1:{metrics.port}/metrics"

        for n in range(3):
            assert await ops.request(n) == {"echo": n}
        with pytest.raises(RemoteError):
            await ops.request("boom")
        with pytest.raises(PermissionDenied):
            await viewer.broadcast_eval("1")
        storage = CacheClient(ops)
        await storage.cache["guilds"].set("1", {"prefix": "!"})
        assert await storage.cache["guilds"].get("1") == {"prefix": "!"}
        assert await storage.cache["guilds"].get("2") is None

        samples = await scrape(metrics.url)
        assert value(samples, "zmqcross_requests_total", kind="request", outcome="ok") == 3
        assert value(samples, "zmqcross_requests_total", kind="request", outcome="remote") == 1
        assert value(samples, "zmqcross_requests_total", kind="eval", outcome="permission_denied") == 1
        assert value(samples, "zmqcross_requests_total", kind="service:cache", outcome="ok") == 3
        assert value(samples, "zmqcross_request_duration_seconds_count", kind="request") == 4
        assert value(samples, "zmqcross_request_duration_seconds_count", kind="eval") is None  # refusals only
        assert value(samples, "zmqcross_request_duration_seconds_bucket", kind="request", le="+Inf") == 4
        assert value(samples, "zmqcross_cache_entries") == 1
        assert value(samples, "zmqcross_cache_hits_total") == 1
        assert value(samples, "zmqcross_cache_misses_total") == 1
        assert value(samples, "zmqcross_cache_hit_ratio") == 0.5  # the cache service was found by itself
        assert value(samples, "zmqcross_clients", agent="ops") == 1
        assert value(samples, "zmqcross_clients", agent="viewer") == 1
        assert value(samples, "zmqcross_machines") == 0
        assert value(samples, "zmqcross_plan_shards") == 4 and value(samples, "zmqcross_plan_clusters") == 2
        assert value(samples, "zmqcross_clusters_unassigned") == 2
        assert value(samples, "zmqcross_bridge_protocol_errors_total") == 0
        assert value(samples, "zmqcross_bridge_messages_received_total") >= 10  # 2 registrations, 8 calls
        # A registry of its own: nothing of the bridge's lands in prometheus_client's global one.
        assert (
            REGISTRY.get_sample_value("zmqcross_requests_total", {"kind": "request", "outcome": "ok"}) is None
        )
    finally:
        await cache.close()

    url = metrics.url
    await bridge.close()
    assert bridge.metrics is None
    with pytest.raises(aiohttp.ClientConnectionError):
        await scrape(url)


async def test_metrics_alongside_another_observer(make_bridge, make_client) -> None:
    bridge = await make_bridge()
    seen: list[tuple[str, str]] = []
    bridge.observe(lambda kind, outcome, seconds: seen.append((kind, outcome)))
    bridge.on("client_request", lambda request, client: "ok")
    cache = CacheServer(bridge, paths=[CachePath("a")])
    client = await make_client(bridge, machine_id="c")
    try:
        async with BridgeMetrics(bridge, port=0, cache=cache, max_age=0.0) as metrics:
            await client.request("x")
            samples = await scrape(metrics.url)
            assert value(samples, "zmqcross_requests_total", kind="request", outcome="ok") == 1
            assert value(samples, "zmqcross_cache_hit_ratio") is None  # no lookup yet: no made-up ratio
            assert value(samples, "zmqcross_cache_entries") == 0
        assert seen == [("request", "ok")]
        await client.request("y")  # after close: the other observer still sees every answer
        assert seen == [("request", "ok"), ("request", "ok")]
        assert value(samples, "zmqcross_requests_total", kind="request", outcome="ok") == 1
    finally:
        await cache.close()


async def test_error_codes_a_peer_writes_cannot_grow_the_label_set(make_bridge, make_client) -> None:
    # A peer chooses the code of the errors it answers with; each code used to become a
    # series of its own (5,000 series and a 100 MB scrape from one client with `request`).
    bridge = await make_bridge(metrics_port=0)
    asker = await make_client(bridge, machine_id="asker", agent="dashboard")
    liar = await make_client(bridge, machine_id="liar", agent="bot")

    def answer(request):
        if request.data == "honest":
            raise ValueError("an ordinary failure")  # travels as code "remote"
        error = ZmqcrossError("made up")
        error.code = f"forged-{request.data}"  # whatever the peer likes
        raise error

    liar.on("bridge_request", answer)
    forged = 3000
    for start in range(0, forged, 250):
        outcomes = await asyncio.gather(
            *(asker.request_to_client(n, client_id="liar") for n in range(start, start + 250)),
            return_exceptions=True,
        )
        assert all(isinstance(o, RemoteError) for o in outcomes)
    with pytest.raises(RemoteError):
        await asker.request_to_client("honest", client_id="liar")

    metrics = bridge.metrics
    assert metrics is not None
    samples = await scrape(metrics.url)
    relayed = {
        dict(labels)["outcome"]: v
        for (name, labels), v in samples.items()
        if name == "zmqcross_requests_total" and dict(labels)["kind"] == "relay"
    }
    assert relayed == {"other": forged, "remote": 1}
    series = [name for name, _ in samples if name == "zmqcross_requests_total"]
    assert len(series) <= len(OUTCOMES) * 10


async def test_a_taken_metrics_port_fails_the_start_and_frees_the_bridge_ports(make_bridge) -> None:
    taken = await make_bridge(metrics_port=0)
    assert taken.metrics is not None
    port = free_port()
    with pytest.raises(
        ConfigurationError, match=f"cannot serve metrics on 127.0.0.1 port {taken.metrics.port}"
    ):
        await Bridge(auth_token="t", port=port, metrics_port=taken.metrics.port).start()
    again = await make_bridge(port=port)  # nothing was left bound by the failed start
    assert again.port == port
    with pytest.raises(ConfigurationError, match="metrics_port must be a TCP port number"):
        Bridge(auth_token="t", metrics_port=70000)


# --------------------------------------------------------------------------- a real fleet


class Command(Proc):
    """``python -m zmqcross ARGV...``, its stdout lines collected like fleetkit's processes."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str]) -> None:
        super().__init__(name, [sys.executable, "-m", "zmqcross", *argv], env)


async def test_fleet_metrics_match_the_fleet(gateway: GatewayServer) -> None:
    port, metrics_port = free_port(), free_port()
    procs = Processes(fleet_env(gateway.api_base, port))
    bridge = Command("bridge", ["bridge", "--metrics-port", str(metrics_port)], procs.env)
    procs.started.append(bridge)
    client = Client(auth_token=TOKEN, port=port, agent="dashboard", machine_id="dashboard")
    agent = Client(auth_token=TOKEN, port=port, agent="bot", machine_id="machine-2")
    machine = Machine(
        ROOT / "tests" / "fleet_bot.py",
        agent,
        manager_options={"spawn_delay": 0, "env": {"ZMQCROSS_DISCORD_API": gateway.api_base}},
    )
    machine_metrics = MachineMetrics(machine, port=0)
    try:
        line = await bridge.wait_line("metrics on")
        url = f"http://127.0.0.1:{metrics_port}/metrics"
        assert line == f"bridge: metrics on {url}"
        procs.machine("machine-1")
        await machine_metrics.start()
        samples = await scrape(machine_metrics.url)
        assert value(samples, "zmqcross_machine_standby") == 1  # nothing runs before start()
        await machine.start()
        await client.connect()
        await wait_clusters(client, [0, 1, 2, 3])

        def settled(s: Samples) -> bool:
            return value(s, "zmqcross_guilds") == GUILDS and total(s, "zmqcross_cluster_ready") == 4

        samples = await scrape_until(url, settled, what=f"{GUILDS} guilds on 4 ready clusters")
        assert value(samples, "zmqcross_machines") == 2
        assert value(samples, "zmqcross_clients", agent="bot") == 2
        assert value(samples, "zmqcross_clients", agent="dashboard") == 1
        assert value(samples, "zmqcross_clusters", state="ready") == 4
        assert value(samples, "zmqcross_shards_hosted") == 8 == value(samples, "zmqcross_plan_shards")
        assert value(samples, "zmqcross_plan_clusters") == 4
        assert value(samples, "zmqcross_clusters_unassigned") == 0
        assert (
            value(samples, "zmqcross_machines_standby") == 0
            and value(samples, "zmqcross_machines_stale") == 0
        )
        assert total(samples, "zmqcross_cluster_guilds") == GUILDS
        assert total(samples, "zmqcross_cluster_guilds", machine="machine-2") == GUILDS / 2
        assert total(samples, "zmqcross_cluster_restarts_total") == 0
        # The IDENTIFY queue: a slot per shard at least, none waiting now, the budget not counted here.
        assert (value(samples, "zmqcross_identify_grants_total") or 0) >= 8  # more if one woke late
        assert value(samples, "zmqcross_identify_waiting") == 0 and value(samples, "zmqcross_identify_holding") == 0
        assert value(samples, "zmqcross_identify_wait_seconds_total") > 0
        assert value(samples, "zmqcross_session_budget_remaining") is None
        assert all(
            0 <= v < 5 for (n, _), v in samples.items() if n == "zmqcross_cluster_heartbeat_age_seconds"
        )

        # wait_clusters evaluated too (partially, while clusters came up): count from here
        evals_before = value(samples, "zmqcross_requests_total", kind="eval", outcome="ok") or 0
        partial_before = value(samples, "zmqcross_requests_total", kind="eval", outcome="partial") or 0
        timed_before = value(samples, "zmqcross_request_duration_seconds_count", kind="eval") or 0
        for _ in range(5):
            assert await client.broadcast_eval("1") == [1, 1, 1, 1]
        partial = await client.broadcast_eval("1 / (bot.cluster.id - 2)", return_exceptions=True)
        assert isinstance(partial[2], ZmqcrossError)
        answer = await client.request_to_guild({"op": "guild", "guild_id": guild_id(9)})
        assert answer["found"]
        samples = await scrape(url)
        assert value(samples, "zmqcross_requests_total", kind="eval", outcome="ok") == evals_before + 5
        assert value(samples, "zmqcross_requests_total", kind="eval", outcome="partial") == partial_before + 1
        assert value(samples, "zmqcross_request_duration_seconds_count", kind="eval") == timed_before + 6
        assert value(samples, "zmqcross_requests_total", kind="guild_request", outcome="ok") == 1

        # The in-process machine's own endpoint: its two clusters.
        mine = await scrape(machine_metrics.url)
        assert value(mine, "zmqcross_machine_standby") == 0 and value(mine, "zmqcross_machine_connected") == 1
        assert value(mine, "zmqcross_clusters", state="ready") == 2
        assert value(mine, "zmqcross_guilds") == GUILDS / 2
        assert machine.manager is not None
        victim = machine.manager.clusters[0]
        assert value(mine, "zmqcross_cluster_ready", machine="machine-2", cluster=str(victim.id)) == 1

        # A cluster killed under the machine is respawned: its restart shows on both endpoints.
        assert victim.pid is not None
        os.kill(victim.pid, signal.SIGKILL)
        labels = {"machine": "machine-2", "cluster": str(victim.id)}

        def restarted(s: Samples) -> bool:
            return (
                value(s, "zmqcross_cluster_restarts_total", **labels) == 1
                and value(s, "zmqcross_cluster_ready", **labels) == 1
            )

        await scrape_until(machine_metrics.url, restarted, what="the cluster restarted and ready")
        await scrape_until(url, restarted, what="the restart at the bridge")
    finally:
        await machine_metrics.close()
        await machine.drain("test over")
        await client.close()
        await procs.stop_all()
    assert bridge.proc.returncode == 0
