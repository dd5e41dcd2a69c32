"""Hostile peers against a real bridge on loopback (issue 14): rights that hold, keys that revoke.

The socket-free core tests (tests/test_bridge_core.py) pin each decision; these check that
the bridge process as a whole enforces them over real CURVE connections.
"""

from __future__ import annotations

import pytest
from conftest import FAST, wait_for

from zmqcross import AccessPolicy, AuthenticationError, PermissionDenied

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
