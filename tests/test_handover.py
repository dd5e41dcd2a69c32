"""Handing shards from old clusters to new ones: which clusters wait for which, and the gate.

Pure parts and one real discord.py client (no connection): the fleet test of a rolling
reshard that counts every message is in test_fleet.py.
"""

from __future__ import annotations

import itertools
from typing import Any

import discord
import pytest

from zmqcross._handover import (
    HandoverPlan,
    Ledger,
    fingerprint,
    overlaps,
    pack_fingerprints,
    unpack_fingerprints,
)
from zmqcross.cluster._handover import EventGate, GateState, install

pytestmark = pytest.mark.timeout(10)


def clusters(total: int, per: int) -> dict[int, list[int]]:
    return {cid: list(range(cid * per, min((cid + 1) * per, total))) for cid in range(-(-total // per))}


@pytest.mark.parametrize(
    ("old_total", "new_total", "per"), [(8, 8, 2), (8, 12, 2), (8, 16, 4), (6, 4, 1), (5, 7, 2)]
)
def test_clusters_wait_for_exactly_those_sharing_a_guild(old_total: int, new_total: int, per: int) -> None:
    old, new = clusters(old_total, per), clusters(new_total, per)
    live_after, retire_after = overlaps(old, old_total, new, new_total)
    shared: set[tuple[int, int]] = set()
    for x in range(old_total * new_total):  # every residue pair a guild id can have
        o = next(c for c, s in old.items() if x % old_total in s)
        n = next(c for c, s in new.items() if x % new_total in s)
        shared.add((o, n))
    assert {(o, n) for n, olds in live_after.items() for o in olds} == shared
    assert {(o, n) for o, news in retire_after.items() for n in news} == shared


def test_an_unchanged_plan_pairs_each_cluster_with_itself_only() -> None:
    plan = clusters(8, 2)
    live_after, retire_after = overlaps(plan, 8, plan, 8)
    assert live_after == retire_after == {c: (c,) for c in plan}


def test_a_handover_plan_survives_json_and_refuses_what_is_not_one() -> None:
    plan = HandoverPlan("v1", {4: (0, 2)}, {0: (4, 5)})
    assert HandoverPlan.from_json(plan.to_json()) == plan
    assert HandoverPlan.from_json(None) is None
    for bad in (
        {"from_plan": 3},
        {"from_plan": "v", "live_after": [[1, ["x"]]]},
        {"from_plan": "v", "retire_after": {}},
    ):
        with pytest.raises(ValueError, match="handover plan"):
            HandoverPlan.from_json(bad)


def test_the_ledger_retires_after_every_successor_is_ready_and_releases_after_every_predecessor() -> None:
    ledger = Ledger(HandoverPlan("old", {10: (0, 1)}, {0: (10, 11)}), "new")
    assert not ledger.may_retire(0) and ledger.missing_ready(0) == [10, 11]
    assert ledger.note("ready", "new", 10, []) and not ledger.may_retire(0)
    assert not ledger.note("ready", "older", 11, [])  # another plan's notice: not ours
    ledger.note("ready", "new", 11, [])
    assert ledger.may_retire(0)
    ledger.note("retired", "old", 0, [7, 7])
    assert not ledger.may_go_live(10) and ledger.missing_retired(10) == [1]
    ledger.note("retired", "old", 1, [8])
    assert ledger.may_go_live(10) and sorted(ledger.handled(10)) == [7, 7, 8]


def test_fingerprints_ignore_key_order_and_pack_into_a_frame() -> None:
    a = fingerprint("MESSAGE_CREATE", {"id": "1", "content": "hi"})
    assert a == fingerprint("MESSAGE_CREATE", {"content": "hi", "id": "1"})
    assert a != fingerprint("MESSAGE_UPDATE", {"id": "1", "content": "hi"})
    assert 0 <= a < 2**63
    values = [a, 0, 2**63 - 1, 5]
    assert unpack_fingerprints(pack_fingerprints(values)) == values
    with pytest.raises(ValueError, match="8-byte"):
        unpack_fingerprints(b"1234567")


def parse(gate: EventGate, name: str, data: Any, *dispatches: str) -> list[str]:
    """One gateway event through the gate, dispatching ``dispatches``; the ones run now."""
    run = []
    gate.parsing(name, data)
    for event in dispatches:
        if gate.admit(event, (data,), {}):
            run.append(event)
    gate.parsed()
    return run


def test_a_held_gate_runs_what_its_predecessor_did_not_handle_once_it_goes_live() -> None:
    old, new = EventGate(held=False), EventGate(held=True)
    old.record()
    events = [("MESSAGE_CREATE", {"id": str(i)}) for i in range(6)]
    for name, data in events[:4]:  # both sessions get 0-3; the old one handles them
        assert parse(old, name, data, "message") == ["message"]
    for name, data in events[2:]:  # the new session is up from event 2
        assert parse(new, name, data, "message", "raw_message") == []
    assert not new.admit("ready", (), {})  # its own doings (no gateway event) wait too
    handled = old.retire()
    assert parse(old, *events[4], "message") == []  # retired: gateway events go nowhere...
    assert old.admit("shard_disconnect", (0,), {})  # ...its own doings still reach it
    run = new.release(handled)
    assert [(name, args[0]["id"] if args else None) for name, args, _ in run] == [
        ("message", "4"),
        ("raw_message", "4"),
        ("message", "5"),
        ("raw_message", "5"),
        ("ready", None),
    ]
    assert new.state is GateState.LIVE and new.release(handled) == []


def test_two_identical_events_are_two_and_a_predecessor_s_one_skips_only_one() -> None:
    old, new = EventGate(held=False), EventGate(held=True)
    old.record()
    same = ("PRESENCE_UPDATE", {"user": {"id": "1"}, "status": "online"})
    parse(old, *same, "presence_update")
    parse(new, *same, "presence_update")
    parse(new, *same, "presence_update")  # Discord sent it again: the old one saw it once
    assert [name for name, _, _ in new.release(old.retire())] == ["presence_update"]


def test_moves_the_table_does_not_allow_are_refused() -> None:
    gate = EventGate(held=False)
    gate.retire()
    with pytest.raises(RuntimeError, match="from retired to live"):
        gate._move(GateState.LIVE)


def test_a_real_discord_py_client_holds_its_handlers_not_its_cache() -> None:
    bot = discord.AutoShardedClient(intents=discord.Intents.default(), shard_ids=[0], shard_count=1)
    seen: list[str] = []
    original = bot.dispatch
    bot.dispatch = lambda event, *args, **kwargs: (seen.append(event), original(event, *args, **kwargs))  # type: ignore[method-assign]
    gate = EventGate(held=True)
    ungated = install(bot, gate)
    bot._connection.parsers["RESUMED"]({"__shard_id__": 0})  # discord.py's own parser
    assert seen == [] and [c.name for c in gate.held] == ["resumed", "shard_resumed"]
    for name, args, kwargs in gate.release(()):
        ungated(name, *args, **kwargs)
    assert seen == ["resumed", "shard_resumed"]
    bot._connection.parsers["RESUMED"]({"__shard_id__": 0})  # live: straight through
    assert seen[2:] == ["resumed", "shard_resumed"]


def test_a_gate_that_holds_too_much_goes_live_and_says_so(caplog: pytest.LogCaptureFixture) -> None:
    bot = discord.AutoShardedClient(intents=discord.Intents.default(), shard_ids=[0], shard_count=1)
    seen: list[str] = []
    original = bot.dispatch
    bot.dispatch = lambda event, *args, **kwargs: (seen.append(event), original(event, *args, **kwargs))  # type: ignore[method-assign]
    went_live = []
    gate = EventGate(held=True, max_held=4)
    install(bot, gate, overflowed=lambda: went_live.append(True))
    for _ in itertools.repeat(None, 2):
        bot._connection.parsers["RESUMED"]({"__shard_id__": 0})
    assert seen == ["resumed", "shard_resumed"] * 2 and went_live == [True]
    assert gate.state is GateState.LIVE and "going live before" in caplog.text
