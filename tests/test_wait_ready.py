"""``Shard.wait_ready``: which clusters are not ready and why, and a real fleet started at ready."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from conftest import free_port
from fleetkit import TOKEN, Processes, fleet_env, wait_clusters

from zmqcross import ConfigurationError
from zmqcross._readiness import describe_unready, unready, wanted
from zmqcross.gateway import GatewayServer, guild_id, shard_of
from zmqcross.status import ClusterStatus, FleetStatus, MachineStatus

pytestmark = pytest.mark.timeout(150)

BOT = Path(__file__).resolve().parent / "wait_ready_bot.py"


def cluster(cid: int, state: str, *, exit_code: int | None = None, restarts: int = 0) -> ClusterStatus:
    return ClusterStatus(
        id=cid, shards=(cid,), pid=100 + cid, state=state, guilds=None, restarts=restarts,
        started_at=None, uptime=None, last_heartbeat=None, exit_code=exit_code,
    )  # fmt: skip


def machine(mid: str, *clusters: ClusterStatus, error: str | None = None) -> MachineStatus:
    return MachineStatus(
        id=mid, agent="bot", address="127.0.0.1", connected_at=0.0, plan_version="p1", stale=False,
        standby=False, leaving=False, clusters=clusters, error=error,
    )  # fmt: skip


def fleet(*machines: MachineStatus, total: int = 4, unassigned: tuple[int, ...] = ()) -> FleetStatus:
    return FleetStatus(
        plan_version="p1", total_shards=total, total_clusters=total, machines=machines, standbys=(),
        unassigned=unassigned, taken_at=0.0,
    )  # fmt: skip


# --------------------------------------------------------------------------- the decision, from records


def test_every_cluster_ready_somewhere_is_ready() -> None:
    status = fleet(
        machine("m1", cluster(0, "ready"), cluster(1, "ready")),
        machine("m2", cluster(2, "ready"), cluster(3, "retiring"), cluster(3, "ready")),
    )
    assert unready(status, wanted(status, None)) == {}


def test_each_unready_cluster_says_where_it_is_and_in_what_state() -> None:
    status = fleet(
        machine("m1", cluster(0, "ready"), cluster(1, "starting")),
        machine("m2", cluster(2, "failed", exit_code=1, restarts=5)),
        unassigned=(3,),
    )
    reasons = unready(status, wanted(status, None))
    assert reasons == {
        1: "is starting on 'm1'",
        2: "is failed on 'm2' (exit code 1, 5 restarts)",
        3: "is not running on any machine (no machine holds its share of the plan: start one, or a standby)",
    }
    assert describe_unready(reasons, waited=30).startswith(
        "clusters 1, 2, 3 not ready after 30 s: cluster 1 is starting on 'm1'; cluster 2 is failed on 'm2'"
    )
    assert unready(status, wanted(status, [0, 1])) == {1: "is starting on 'm1'"}


def test_a_machine_that_did_not_answer_is_named_for_clusters_nobody_lists() -> None:
    status = fleet(machine("m1", cluster(0, "ready")), machine("m2", error="no answer"), total=2)
    assert unready(status, [0, 1]) == {1: "is not running on any machine (no status from 'm2')"}


def test_a_cluster_outside_the_plan_is_refused_at_once() -> None:
    status = fleet(machine("m1", cluster(0, "ready")))
    with pytest.raises(
        ConfigurationError, match=r"cluster 7 is not in the fleet's plan, which has clusters 0-3"
    ):
        wanted(status, [0, 7])


# --------------------------------------------------------------------------- a real fleet


@pytest.fixture
async def procs(gateway: GatewayServer) -> AsyncIterator[Processes]:
    port = free_port()
    processes = Processes(fleet_env(gateway.api_base, port, ZMQCROSS_BOT_FILE=str(BOT)))
    processes.port = port  # type: ignore[attr-defined]
    yield processes
    await processes.stop_all()


async def reports_of(
    reports: list[dict[str, Any]], step: str, clusters: set[int], timeout: float
) -> dict[int, Any]:
    end = time.monotonic() + timeout
    while True:
        found = {r["cluster"]: r for r in reports if r["step"] == step}
        if clusters <= found.keys():
            return found
        assert time.monotonic() < end, (
            f"no {step!r} report from clusters {clusters - found.keys()}: {reports}"
        )
        await asyncio.sleep(0.05)


async def test_a_task_started_at_ready_waits_for_the_fleet_then_broadcasts(procs, make_bridge) -> None:
    bridge = await make_bridge(
        auth_token=TOKEN, port=procs.port, pub_port=procs.port + 1,
        total_shards=8, shards_per_cluster=2, total_machines=2,
    )  # fmt: skip
    reports: list[dict[str, Any]] = []

    async def noted(request: Any, client: Any) -> str:
        reports.append(request.data)
        return "noted"

    bridge.on("client_request", noted)
    procs.machine("machine-1")
    early = await reports_of(reports, "short_wait", {0, 1}, timeout=60)

    # Without a wait, the fleet-wide eval at ready fails: machine-2's clusters do not run yet
    # (and cluster 1 may still be waiting for its IDENTIFY turn).
    first = next(r for r in reports if r["step"] == "at_once" and r["cluster"] == 0)
    assert "cluster 3 is not running on any connected machine" in first["error"], first
    # A short wait says which clusters are not ready and why; machine-2 is not started yet.
    assert early[1]["error"] == (
        "RequestTimeout: clusters 2, 3 not ready after 1.5 s: "
        "cluster 2 is not running on any machine (no machine holds its share of the plan: start one, or a standby); "
        "cluster 3 is not running on any machine (no machine holds its share of the plan: start one, or a standby)"
    )
    # Cluster 0 asked while cluster 1 may still have been starting; either way 2 and 3 are named.
    assert "not ready after 1.5 s" in early[0]["error"], early[0]
    assert "cluster 3 is not running on any machine" in early[0]["error"], early[0]

    procs.machine("machine-2")
    done = await reports_of(reports, "after_wait", {0, 1, 2, 3}, timeout=90)
    for report in done.values():
        assert report["own"] and report["ready"], report
        assert report.get("ok") == [0, 1, 2, 3], report


async def test_the_readmes_porting_example_runs_on_a_fleet(
    procs, make_bridge, make_client, tmp_path, gateway
) -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme[readme.index("## Porting a discord.py bot") :]
    bot = tmp_path / "bot.py"
    bot.write_text(
        section[section.index("```python\n") + 10 : section.index("```\n", section.index("```python"))]
    )
    bridge = await make_bridge(
        auth_token=TOKEN, port=procs.port, pub_port=procs.port + 1,
        total_shards=8, shards_per_cluster=2, total_machines=2,
    )  # fmt: skip
    procs.env["ZMQCROSS_BOT_FILE"] = str(bot)
    procs.machine("machine-1"), procs.machine("machine-2")
    dash = await make_client(bridge, auth_token=TOKEN, agent="dashboard", machine_id="dashboard")
    await wait_clusters(dash, [0, 1, 2, 3], timeout=60)  # setup_hook's tree.sync did not crash cluster 0
    names = await dash.broadcast_eval("sorted(c.name for c in bot.commands)")
    assert names == [["guilds", "help", "ping"]] * 4
    assert await dash.broadcast_eval("[c.name for c in bot.tree.get_commands()]") == [["where"]] * 4

    # Users talk to it: "!ping" in a guild of every shard is answered by the cluster that
    # holds the shard, once; the slash command synced by cluster 0 alone answers too.
    base = f"http://127.0.0.1:{gateway.port}/_offline"
    guilds = {shard_of(guild_id(i), 8): guild_id(i) for i in range(64)}
    assert sorted(guilds) == list(range(8))
    async with aiohttp.ClientSession() as http:

        async def dispatch(body: dict[str, Any]) -> dict[str, Any]:
            async with http.post(f"{base}/dispatch", json=body) as response:
                assert response.status == 200, await response.text()
                answer: dict[str, Any] = await response.json()
                return answer

        async def sent(guild: int) -> list[dict[str, Any]]:
            async with http.get(f"{base}/messages", params={"guild_id": str(guild)}) as response:
                found: list[dict[str, Any]] = (await response.json())["messages"]
                return found

        for guild in guilds.values():
            assert (
                await dispatch(
                    {"guild_id": str(guild), "event": "MESSAGE_CREATE", "data": {"content": "!ping"}}
                )
            )["delivered"] == 1
        for shard, guild in guilds.items():
            end = time.monotonic() + 15
            while [m["content"] for m in await sent(guild)] != ["pong"]:
                assert time.monotonic() < end, (
                    f"no single pong in guild {guild} (shard {shard}): {await sent(guild)}"
                )
                await asyncio.sleep(0.1)
        slash = await dispatch(
            {"guild_id": str(guilds[5]), "event": "INTERACTION_CREATE", "data": {"name": "where"}}
        )
        assert slash["delivered"] == 1
        end = time.monotonic() + 15
        while not (answers := [m for m in await sent(guilds[5]) if m["kind"] == "interaction_response"]):
            assert time.monotonic() < end, "the slash command was never answered"
            await asyncio.sleep(0.1)
        assert answers[0]["content"] == "cluster 2, shard 5"
