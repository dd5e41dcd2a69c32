"""The peer registry: who may register as whom."""

from __future__ import annotations

from zmqcross.registry import ClientInfo, Peer, Registry, check_name


def peer(route: bytes, cid: str, user: str | None, seen: float = 0.0) -> Peer:
    info = ClientInfo(
        id=cid,
        agent="bot",
        initial_data=None,
        address=None,
        key=None,
        connected_at=0.0,
        permissions=frozenset(),
    )
    return Peer(route, info, user, seen)


def test_admission_rules() -> None:
    reg = Registry()
    reg.add(peer(b"r1", "m1", "keyA"))
    assert reg.admit(routing_id=b"r1", client_id="m1", user_id="keyA").accepted  # refresh
    takeover = reg.admit(routing_id=b"r2", client_id="m1", user_id="keyA")
    assert takeover.accepted and takeover.replaces is not None and takeover.replaces.routing_id == b"r1"
    impostor = reg.admit(routing_id=b"r3", client_id="m1", user_id="keyB")
    assert not impostor.accepted and "registered by another CURVE key" in (impostor.reason or "")


def test_lookup_remove_and_silence() -> None:
    reg = Registry()
    reg.add(peer(b"r1", "m1", None, seen=10.0))
    reg.add(peer(b"r2", "m2", None, seen=14.0))
    assert reg.by_id("m2") is reg.get(b"r2")
    assert [p.info.id for p in reg.silent(now=15.0, timeout=2.0)] == ["m1"]
    reg.touch(b"r1", 15.0)
    assert reg.silent(now=15.0, timeout=2.0) == []
    assert reg.remove(b"r1") is not None and reg.by_id("m1") is None and len(reg) == 1
    assert [p.info.id for p in reg.select(lambda info: info.id == "m2")] == ["m2"]


def test_name_checks() -> None:
    assert check_name("agent", "bot") is None
    assert check_name("agent", "") == "agent must not be empty"
    assert "limit is 128" in (check_name("machine_id", "x" * 129) or "")
    assert "unprintable" in (check_name("machine_id", "a\nb") or "")
