"""The IDENTIFY queue's decisions (pure), a cluster's turns, and the ``zmqcross.identify`` service.

The queue and the local time-division are tested with hand-wound clocks; the cluster's turns
with a fake bridge; the service over real sockets, as a machine reaches it.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import pytest
from conftest import TOKEN

from zmqcross import AccessPolicy, ConfigurationError, ConnectionLost, IdentifyParams, PermissionDenied
from zmqcross._identify import IDENTIFY_SERVICE, bucket_of, local_slot
from zmqcross.cli.table import render_status
from zmqcross.bridge._identify import Grant, Hold, IdentifyQueue, SessionBudget
from zmqcross.bridge._identify_service import IdentifySettings
from zmqcross.cluster._pacing import IdentifyTurns

pytestmark = pytest.mark.timeout(30)

P1 = IdentifyParams(max_concurrency=1, window=5.0)
P4 = IdentifyParams(max_concurrency=4, window=5.0)


# ---------------------------------------------------------------- parameters


def test_the_interval_is_the_window_plus_a_bounded_margin() -> None:
    assert P1.margin == 0.25 and P1.interval == 5.25 and P1.late_after == 0.125
    assert IdentifyParams(window=0.5).margin == pytest.approx(0.1)
    assert IdentifyParams(window=0.05).margin == 0.05  # never less: room for a grant's travel
    for bad in ({"max_concurrency": 0}, {"max_concurrency": True}, {"window": 0}, {"window": float("nan")}):
        with pytest.raises(ValueError):
            IdentifyParams(**bad)  # type: ignore[arg-type]


def test_params_from_a_peer_fall_back_to_discords_strictest() -> None:
    assert IdentifyParams.from_json({"max_concurrency": 16, "window": 5}) == IdentifyParams(16, 5.0)
    assert IdentifyParams.from_json(None) == IdentifyParams()
    assert IdentifyParams.from_json({"max_concurrency": -3, "window": "x"}) == IdentifyParams()


def test_bridge_settings_refuse_nonsense_with_the_setting_named() -> None:
    with pytest.raises(ConfigurationError, match="max_concurrency must be an integer >= 1"):
        IdentifySettings(max_concurrency=0)
    with pytest.raises(ConfigurationError, match="session_reserve must be an integer >= 0"):
        IdentifySettings(session_reserve=-1)
    with pytest.raises(ConfigurationError, match="identify_window"):
        IdentifySettings(window=-5)
    assert IdentifySettings(session_budget=1000).budget(None, now=0).reserve == 20  # 2% by default
    assert IdentifySettings().budget(None, now=0) is None  # no token, no budget: not counted


# ---------------------------------------------------------------- the queue


def grant(answer: Grant | Hold) -> Grant:
    assert isinstance(answer, Grant), answer
    return answer


def test_a_bucket_grants_one_slot_per_interval_first_come_first_served() -> None:
    queue = IdentifyQueue(P1, budget=None, now=100.0)
    waits = [grant(queue.ask(shard, now=100.0)).wait for shard in (3, 0, 2, 1)]
    assert waits == [0.0, 5.25, 10.5, 15.75]
    # Asked again while their slots are ahead: the same slots, with how many go first.
    assert [grant(queue.ask(s, now=100.0)).ahead for s in (0, 2, 1)] == [1, 2, 3]
    assert queue.granted == 4
    # A bucket that has been idle grants at once again.
    assert grant(queue.ask(4, now=200.0)).wait == 0.0


def test_buckets_are_independent() -> None:
    queue = IdentifyQueue(P4, budget=None, now=0.0)
    first = [grant(queue.ask(shard, now=0.0)) for shard in range(8)]
    assert [(g.bucket, g.wait) for g in first] == [(b, 0.0) for b in range(4)] + [(b, 5.25) for b in range(4)]
    assert bucket_of(13, 4) == 1


def test_asking_again_for_a_pending_slot_costs_nothing() -> None:
    budget = SessionBudget(total=100, remaining=100, reset_at=86_400.0, reserve=1)
    queue = IdentifyQueue(P1, budget=budget, now=0.0)
    grant(queue.ask(0, now=0.0))
    pending = grant(queue.ask(1, now=0.0))
    for _ in range(1000):  # a flood from a confused (or hostile) cluster
        again = grant(queue.ask(1, now=1.0))
        assert again.wait == pytest.approx(pending.wait - 1.0)
    assert queue.granted == 2 and budget.remaining == 98
    # Once its slot has passed, the same shard asking again is a new IDENTIFY (a re-identify).
    assert grant(queue.ask(1, now=6.0)).wait == pytest.approx(10.5 - 6.0)
    assert queue.granted == 3


def test_a_fresh_bridge_grants_nothing_before_its_start_guard() -> None:
    queue = IdentifyQueue(P1, budget=None, now=10.0, start_guard=3.0)
    assert grant(queue.ask(0, now=10.0)).wait == 3.0


def test_the_budget_reserve_holds_every_ask_and_says_why_until_the_reset() -> None:
    budget = SessionBudget(total=10, remaining=4, reset_at=3600.0, reserve=2)
    queue = IdentifyQueue(P4, budget=budget, now=0.0)
    grant(queue.ask(0, now=0.0))
    grant(queue.ask(1, now=0.0))
    held = queue.ask(2, now=0.0)
    assert isinstance(held, Hold)
    assert "down to 2 of 10 session starts" in held.reason and "session_reserve" in held.reason
    assert "resets in 1h00m" in held.reason and held.retry_after == 30.0
    assert queue.holding == held.reason and queue.held == 1 and budget.remaining == 2
    snapshot = queue.snapshot(now=0.0)
    assert snapshot["budget"] == {"total": 10, "remaining": 2, "reserve": 2, "reset_in": 3600.0}
    assert snapshot["holding"] == held.reason
    # The day rolls over: the whole budget is back and grants resume.
    assert grant(queue.ask(2, now=3600.0)).wait == 0.0
    assert queue.holding is None and budget.remaining == 9


def test_the_snapshot_lists_waiting_shards_per_bucket() -> None:
    queue = IdentifyQueue(IdentifyParams(max_concurrency=2, window=1.0), budget=None, now=0.0)
    for shard in range(6):
        grant(queue.ask(shard, now=0.0))
    snapshot = queue.snapshot(now=0.5)
    assert snapshot["waiting"] == 4 and snapshot["granted"] == 6
    assert snapshot["buckets"] == [
        {"bucket": 0, "waiting": [2, 4], "free_in": 3.1},
        {"bucket": 1, "waiting": [3, 5], "free_in": 3.1},
    ]
    assert queue.snapshot(now=100.0)["waiting"] == 0


# ---------------------------------------------------------------- local time-division


@pytest.mark.parametrize(("total", "mc"), [(12, 1), (12, 2), (16, 4), (7, 3)])
def test_local_cells_never_share_a_bucket_and_a_cold_start_takes_one_cycle(total: int, mc: int) -> None:
    params = IdentifyParams(max_concurrency=mc, window=0.5)
    for earliest in (0.0, 0.31, 1234.567):
        slots = {shard: local_slot(shard, total, params, earliest=earliest) for shard in range(total)}
        for a, b in itertools.combinations(range(total), 2):
            if a % mc == b % mc:
                assert abs(slots[a] - slots[b]) >= params.interval - 1e-9, (a, b, slots)
        cycle = params.bucket_size(0, total) * params.interval
        assert all(earliest <= t < earliest + cycle + 1e-9 for t in slots.values())


def test_a_local_cell_repeats_every_cycle_and_refuses_a_stranger() -> None:
    params = IdentifyParams(max_concurrency=1, window=1.0)
    first = local_slot(5, 8, params, earliest=0.0)
    assert local_slot(5, 8, params, earliest=first + 0.01) == pytest.approx(first + 8 * params.interval)
    with pytest.raises(ValueError, match="shard 8 is not one of 8 shards"):
        local_slot(8, 8, params, earliest=0.0)


# ---------------------------------------------------------------- a cluster's turns


class FakeBridge:
    """Answers a cluster's asks like the bridge's service would, or fails like a lost bridge."""

    def __init__(self, clock: list[float], answers: list[Any]) -> None:
        self.clock = clock
        self.answers = answers
        self.asked: list[int] = []

    async def ask(self, service: str, data: Any, timeout: float) -> Any:
        assert service == IDENTIFY_SERVICE
        self.asked.append(data["shard_id"])
        answer = self.answers.pop(0) if self.answers else ConnectionLost("gone")
        if isinstance(answer, Exception):
            raise answer
        return answer


def turns(bridge: FakeBridge, clock: list[float], reports: list[str | None], *, in_fleet: bool = True) -> IdentifyTurns:
    return IdentifyTurns(
        cluster_id=0,
        total_shards=4,
        params=IdentifyParams(window=0.05),
        ask=bridge.ask,
        report=reports.append,
        in_fleet=in_fleet,
        clock=lambda: clock[0],
    )


@pytest.fixture
def fast_sleep(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """asyncio.sleep that advances a fake wall clock instead of waiting."""
    clock = [1000.0]
    real_sleep = asyncio.sleep

    async def sleep(seconds: float) -> None:
        clock[0] += max(0.0, seconds)
        await real_sleep(0)

    monkeypatch.setattr("zmqcross.cluster._pacing.asyncio.sleep", sleep)
    return clock


async def test_a_turn_waits_for_the_bridges_slot_and_reports_it(fast_sleep: list[float]) -> None:
    clock = fast_sleep
    bridge = FakeBridge(clock, [{"granted": True, "at": 1003.0, "bucket": 0, "ahead": 2, "late_after": 0.1}])
    reports: list[str | None] = []
    await turns(bridge, clock, reports).wait_turn(2)
    assert clock[0] == 1003.0 and bridge.asked == [2]
    assert reports[0] is not None and "queued at the bridge: bucket 0, 2 ahead, turn in 3.0 s" in reports[0]
    assert reports[-1] is None


async def test_a_held_turn_says_why_and_asks_again_later(fast_sleep: list[float]) -> None:
    clock = fast_sleep
    held = {"granted": False, "reason": "budget low", "retry_after": 30.0}
    go = {"granted": True, "at": 1030.0, "bucket": 0, "ahead": 0, "late_after": 0.1}
    bridge = FakeBridge(clock, [held, go])
    reports: list[str | None] = []
    await turns(bridge, clock, reports).wait_turn(1)
    assert reports[0] == "no IDENTIFY slot for shard 1: budget low" and clock[0] == 1030.0


async def test_a_late_wakeup_takes_a_new_slot_instead_of_crowding_the_next(fast_sleep: list[float]) -> None:
    clock = fast_sleep
    first = {"granted": True, "at": 999.0, "bucket": 0, "ahead": 0, "late_after": 0.025}  # already past
    second = {"granted": True, "at": 1001.0, "bucket": 0, "ahead": 1, "late_after": 0.025}
    bridge = FakeBridge(clock, [first, second])
    await turns(bridge, clock, []).wait_turn(0)
    assert bridge.asked == [0, 0] and clock[0] == 1001.0


async def test_without_the_bridge_a_cluster_waits_a_cycle_then_takes_its_cell(fast_sleep: list[float]) -> None:
    clock = fast_sleep
    bridge = FakeBridge(clock, [])  # every ask: ConnectionLost
    pacer = turns(bridge, clock, [])
    start = clock[0]
    await pacer.wait_turn(3)
    params = IdentifyParams(window=0.05)
    cycle = 4 * params.interval
    assert start + cycle <= clock[0] < start + 2 * cycle + 1e-9
    assert round(clock[0] / params.interval) % 4 == 3  # its own cell
    assert pacer.local_turns == 1 and len(bridge.asked) > 1  # it kept asking while it waited


async def test_a_bridge_that_answers_again_wins_over_the_local_cell(fast_sleep: list[float]) -> None:
    clock = fast_sleep
    back = {"granted": True, "at": 1000.5, "bucket": 0, "ahead": 0, "late_after": 0.025}
    bridge = FakeBridge(clock, [ConnectionLost("gone"), back])
    pacer = turns(bridge, clock, [])
    await pacer.wait_turn(1)
    assert pacer.local_turns == 0 and clock[0] == 1000.5


async def test_a_cluster_without_a_bridge_paces_by_cells_at_once(fast_sleep: list[float]) -> None:
    clock = fast_sleep
    bridge = FakeBridge(clock, [])
    start = clock[0]
    await turns(bridge, clock, [], in_fleet=False).wait_turn(2)
    assert bridge.asked == [] and clock[0] < start + 4 * IdentifyParams(window=0.05).interval


# ---------------------------------------------------------------- the service, over sockets


async def test_the_service_checks_the_asker_and_the_shard(make_bridge, make_client) -> None:
    policy = AccessPolicy(default=["host", "request"], token=["host", "request"], agents={"dashboard": ["request"]})
    bridge = await make_bridge(total_shards=4, shards_per_cluster=2, total_machines=2, permissions=policy)
    machine = await make_client(bridge, machine_id="m1")
    share = await machine.request_shard_data()
    assert share.shard_list == ((0, 1),) and share.identify == IdentifyParams(window=0.05)
    mine, theirs = 1, 2
    answer = await machine.call_service(IDENTIFY_SERVICE, {"shard_id": mine})
    assert answer["granted"] is True and answer["bucket"] == 0 and answer["late_after"] > 0
    with pytest.raises(PermissionDenied, match=f"shard {theirs}, which it does not run"):
        await machine.call_service(IDENTIFY_SERVICE, {"shard_id": theirs})
    with pytest.raises(ConfigurationError, match="shard 99 is not in plan .* no IDENTIFY slot"):
        await machine.call_service(IDENTIFY_SERVICE, {"shard_id": 99})
    with pytest.raises(ConfigurationError, match='takes {"shard_id": <int>}'):
        await machine.call_service(IDENTIFY_SERVICE, ["nope"])
    viewer = await make_client(bridge, machine_id="viewer", agent="dashboard")
    with pytest.raises(PermissionDenied, match="may not host"):
        await viewer.call_service(IDENTIFY_SERVICE, {"shard_id": mine})
    queue = bridge.identify_queue()
    assert queue is not None and queue["granted"] == 1  # the refusals cost the queue nothing


async def test_a_held_queue_says_so_once_and_shows_in_the_status_text(make_bridge, make_client) -> None:
    bridge = await make_bridge(total_shards=4, total_machines=1, session_budget=3, session_reserve=2)
    held: list[str] = []
    bridge.on("identify_held", held.append)
    machine = await make_client(bridge, machine_id="m1")
    await machine.request_shard_data()
    assert (await machine.call_service(IDENTIFY_SERVICE, {"shard_id": 0}))["granted"] is True
    for shard in (1, 2, 1):
        answer = await machine.call_service(IDENTIFY_SERVICE, {"shard_id": shard})
        assert answer["granted"] is False and "down to 2 of 3 session starts" in answer["reason"]
    await asyncio.sleep(0.05)
    assert len(held) == 1 and "session_reserve" in held[0]  # the guard engaged once, not per ask
    text = render_status(await bridge.status())
    assert "identify queue: max_concurrency 1" in text and "1 granted, 3 held" in text
    assert "session budget: 2 of 3 left today, 2 kept in reserve" in text
    assert "HOLDING: Discord's session budget is down to 2 of 3" in text
