"""Hostile peers against a real bridge on loopback (issue 14): rights that hold, keys that revoke.

The socket-free core tests (tests/test_bridge_core.py) pin each decision; these check that
the bridge process as a whole enforces them over real CURVE connections.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
import zmq
import zmq.asyncio
import zmq.utils.monitor
from conftest import FAST, TOKEN, wait_for

from zmqcross import AccessPolicy, AuthenticationError, PermissionDenied
from zmqcross import protocol as p
from zmqcross.bridge import _shell as shell

pytestmark = pytest.mark.timeout(30)

HOSTS = AccessPolicy(keys={"machine-*": ["host", "eval", "request", "cache"]})


async def test_a_key_with_no_rights_named_gets_least_privilege_and_cannot_host(
    keys, make_bridge, make_client
) -> None:
    bridge = await make_bridge(curve=keys.server(), permissions=HOSTS, **FAST)
    bridge.on("client_request", lambda request, client: "ok")
    machine = await make_client(bridge, machine_id="m1", curve=keys.client("machine-1"))
    assert (await machine.request_shard_data()).cluster_list == (0,)
    stranger = await make_client(bridge, machine_id="s1", curve=keys.client("stranger"))
    assert stranger.permissions == {"request", "cache"}
    assert await stranger.request(1) == "ok"
    with pytest.raises(PermissionDenied, match="key 'stranger'\\) may not host"):
        await stranger.request_shard_data()
    with pytest.raises(PermissionDenied, match="may not eval"):
        await stranger.broadcast_eval("1")
    assert bridge.shard_map()["held"] == {"m1": [0]}


async def test_a_key_removed_from_the_allow_list_is_dismissed_and_refused(
    keys, make_bridge, make_client
) -> None:
    bridge = await make_bridge(curve=keys.server(), permissions=HOSTS, **FAST)
    bridge.on("client_request", lambda request, client: "ok")
    victim_key = keys.client("machine-9")
    other = await make_client(bridge, machine_id="m2", curve=keys.client("machine-2"))
    victim = await make_client(bridge, machine_id="m9", curve=victim_key)
    errors: list[BaseException] = []
    victim.on("error", errors.append)
    (keys.allowed / "machine-9.key").unlink()
    await wait_for(lambda: not victim.connected, what="the revoked key's session to end", timeout=5.0)
    assert [c.id for c in bridge.clients] == ["m2"]
    assert any("removed from the allow-list" in str(e) for e in errors), errors
    with pytest.raises(AuthenticationError):
        await make_client(bridge, machine_id="m9", curve=victim_key, connect_timeout=3.0)
    assert await other.request(1) == "ok"


def _rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


async def test_a_peer_that_never_reads_its_answers_is_cut_off_before_memory_grows(
    make_bridge, make_client
) -> None:
    bridge = await make_bridge(**FAST)
    big = "x" * 1_000_000
    bridge.on("client_request", lambda request, client: big)
    reasons: list[str] = []
    bridge.on("disconnect", lambda client, reason: reasons.append(reason))
    healthy = await make_client(bridge, machine_id="healthy")
    ctx = zmq.asyncio.Context()
    hog = ctx.socket(zmq.DEALER)
    hog.setsockopt(zmq.RCVHWM, 1)
    hog.setsockopt(zmq.RCVBUF, 4096)
    hog.setsockopt(zmq.LINGER, 0)
    hog.connect(bridge.endpoint)
    try:
        register = p.Register(
            id=1,
            deadline=time.time() + 10,
            protocol=p.PROTOCOL_VERSION,
            token=TOKEN,
            machine_id="hog",
            agent="a",
        )
        await hog.send_multipart(p.encode(register))
        await wait_for(lambda: "hog" in [c.id for c in bridge.clients], what="the hog to register")
        before = _rss_bytes()
        for rid in range(2, 302):  # 300 answers of 1 MB each, none of them ever read
            await hog.send_multipart(p.encode(p.Request(id=rid, deadline=time.time() + 30, data=p.dump(rid))))
        await wait_for(
            lambda: any("does not read" in r for r in reasons), what="the hog to be dropped", timeout=10
        )
        grown = _rss_bytes() - before
        assert grown < 160 * 1024 * 1024, (
            f"the bridge grew by {grown / 2**20:.0f} MB for a peer that never reads"
        )
        assert bridge.statistics().clients == 1
        assert await healthy.request(1) == big  # the others are served throughout
    finally:
        hog.close()
        ctx.term()


async def test_a_connection_that_never_registers_is_closed_after_a_grace_period(
    make_bridge, make_client, monkeypatch
) -> None:
    monkeypatch.setattr(shell, "UNREGISTERED_GRACE", 0.5)
    bridge = await make_bridge(**FAST)
    bridge.on("client_request", lambda request, client: "ok")
    healthy = await make_client(bridge, machine_id="healthy")
    ctx = zmq.asyncio.Context()
    idler = ctx.socket(zmq.DEALER)
    idler.setsockopt(zmq.LINGER, 0)
    monitor = idler.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED)
    idler.connect(bridge.endpoint)
    try:
        seen: list[int] = []
        while zmq.EVENT_DISCONNECTED not in seen:
            assert await monitor.poll(5000), f"the idle connection was never closed (events {seen})"
            seen.append(zmq.utils.monitor.parse_monitor_message(await monitor.recv_multipart())["event"])
        assert seen[0] == zmq.EVENT_HANDSHAKE_SUCCEEDED  # a real ZeroMQ peer, only it never registered
        assert healthy.connected and await healthy.request(1) == "ok"  # registered peers are kept
    finally:
        idler.disable_monitor()
        monitor.close()
        idler.close()
        ctx.term()


async def test_a_machine_answering_status_with_garbage_fails_alone(make_bridge, make_client) -> None:
    bridge = await make_bridge(**FAST)
    honest = await make_client(bridge, machine_id="honest")
    await honest.request_shard_data()
    ctx = zmq.asyncio.Context()
    liar = ctx.socket(zmq.DEALER)
    liar.setsockopt(zmq.LINGER, 0)
    liar.connect(bridge.endpoint)
    plan = bridge.plan
    hosting = p.Hosting(
        plan_version=plan.version, total_shards=plan.total_shards, cluster_list=(1,), shard_list=((2, 3),)
    )
    register = p.Register(
        id=1,
        deadline=time.time() + 10,
        protocol=p.PROTOCOL_VERSION,
        token=TOKEN,
        machine_id="liar",
        agent="bot",
        hosting=hosting,
    )

    async def answer_with_garbage() -> None:
        while True:
            msg = p.decode(await liar.recv_multipart())
            if isinstance(msg, p.Request) and msg.service == p.STATUS_SERVICE:
                await liar.send_multipart(p.encode(p.Reply(reply_to=msg.id, data=p.dump([{"id": "x"}, 7]))))

    answering = asyncio.ensure_future(answer_with_garbage())
    try:
        await liar.send_multipart(p.encode(register))
        await wait_for(lambda: "liar" in [c.id for c in bridge.clients], what="the liar to register")
        status = await bridge.status()
        by_id = {m.id: m for m in status.machines}
        assert by_id["honest"].error is None
        assert by_id["liar"].clusters == () and "malformed status" in (by_id["liar"].error or "")
    finally:
        answering.cancel()
        await asyncio.gather(answering, return_exceptions=True)
        liar.close()
        ctx.term()
