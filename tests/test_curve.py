"""CURVE between bridge and clients: allow-list, ZAP, key pinning, per-key permissions."""

from __future__ import annotations

import logging
import time

import pytest
import zmq
from conftest import wait_for

from zmqcross import AccessPolicy, AuthenticationError, CurveClient, PermissionDenied


async def test_allowed_key_connects_and_is_named(keys, make_bridge, make_client) -> None:
    bridge = await make_bridge(curve=keys.server())
    bridge.on("client_request", lambda request, client: client.key)
    client = await make_client(bridge, machine_id="m1", curve=keys.client("machine-1"))
    assert await client.request("who am i") == "machine-1"
    assert bridge.clients[0].key == "machine-1"


async def test_unknown_key_is_refused_with_a_clear_error(keys, make_bridge, make_client, caplog) -> None:
    caplog.set_level(logging.WARNING)
    bridge = await make_bridge(curve=keys.server())
    bridge.on("client_request", lambda request, client: "ok")
    good = await make_client(bridge, machine_id="good", curve=keys.client("good"))
    stranger = keys.client("stranger", allowed=False)
    t0 = time.monotonic()
    with pytest.raises(
        AuthenticationError, match="refused this client's CURVE key .*add this client's public key"
    ):
        await make_client(bridge, machine_id="stranger", curve=stranger)
    assert time.monotonic() - t0 < 3
    assert (
        f"refused CURVE key {stranger.public_key.decode()} from 127.0.0.1: not in the allow-list"
        in caplog.text
    )
    assert bridge.statistics().refused_keys >= 1
    assert await good.request(1) == "ok"


async def test_client_without_curve_is_refused(keys, make_bridge, make_client, caplog) -> None:
    caplog.set_level(logging.WARNING)
    bridge = await make_bridge(curve=keys.server())
    bridge.on("client_request", lambda request, client: "ok")
    good = await make_client(bridge, machine_id="good", curve=keys.client("good"))
    t0 = time.monotonic()
    with pytest.raises(
        AuthenticationError, match="one side uses CURVE and the other does not|disagree about CURVE"
    ):
        await make_client(bridge, machine_id="plain")
    assert time.monotonic() - t0 < 3
    assert await good.request(1) == "ok"
    assert "handshake failed" in caplog.text or "failed the ZMTP handshake" in caplog.text


async def test_wrong_server_key_times_out_with_a_hint(keys, make_bridge, make_client) -> None:
    bridge = await make_bridge(curve=keys.server())
    mine = keys.client("machine-1")
    wrong = CurveClient(mine.public_key, mine.secret_key, zmq.curve_keypair()[0])
    with pytest.raises(
        AuthenticationError, match="disagree about CURVE .*check that server_key is the bridge public key"
    ):
        await make_client(bridge, machine_id="m1", curve=wrong, connect_timeout=5.0)


async def test_one_key_cannot_take_another_machines_id(keys, make_bridge, make_client) -> None:
    bridge = await make_bridge(curve=keys.server())
    first = await make_client(bridge, machine_id="machine-1", curve=keys.client("k1"))
    with pytest.raises(
        AuthenticationError, match="machine id 'machine-1' is registered by another CURVE key \\('k1'\\)"
    ):
        await make_client(bridge, machine_id="machine-1", curve=keys.client("k2"))
    assert first.connected and [c.key for c in bridge.clients] == ["k1"]


async def test_same_key_may_take_over_its_own_id_after_a_restart(keys, make_bridge, make_client) -> None:
    bridge = await make_bridge(curve=keys.server())
    curve = keys.client("k1")
    old = await make_client(bridge, machine_id="machine-1", curve=curve)
    new = await make_client(bridge, machine_id="machine-1", curve=curve)
    await wait_for(lambda: not old.connected, what="the old connection to be dismissed")
    assert new.connected and len(bridge.clients) == 1


async def test_permissions_by_key(keys, make_bridge, make_client) -> None:
    policy = AccessPolicy(keys={"readonly": []})
    bridge = await make_bridge(curve=keys.server(), permissions=policy)
    bridge.on("client_request", lambda request, client: "ok")
    limited = await make_client(bridge, machine_id="m1", curve=keys.client("readonly"))
    with pytest.raises(PermissionDenied, match="key 'readonly'\\) may not request; it may: nothing"):
        await limited.request(1)
    full = await make_client(bridge, machine_id="m2", curve=keys.client("ops"))
    assert await full.request(1) == "ok"
