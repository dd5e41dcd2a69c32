"""The bridge's socket-free core, driven the way h11 is tested: messages in, sends out.

No sockets, no event loop, no real time: a hand-wound clock and a list for an outbox.
Each test feeds the core encoded frames from named peers and reads what it sent back.
"""

from __future__ import annotations

import heapq
import itertools
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from zmqcross import AccessPolicy, BroadcastEvalError, ZmqcrossError, build_plan
from zmqcross import protocol as p
from zmqcross._events import EventEmitter
from zmqcross._fanout import error_frame, eval_outcome
from zmqcross.bridge import BRIDGE_EVENTS
from zmqcross.bridge._core import BridgeCore
from zmqcross.bridge._fleet import FleetState
from zmqcross.bridge._idle import IdleConnections
from zmqcross.bridge._settings import MAX_OPEN_PER_PEER, MAX_TIMEOUT, CoreSettings
from zmqcross.bridge._window import MAX_UNREAD_BYTES, PROBE_EVERY_BYTES, SendWindow

pytestmark = pytest.mark.timeout(10)

TOKEN = "core-token"
HOSTS = AccessPolicy(keys={"machine-*": ["host", "eval", "request", "cache"]})


class FakeClock:
    """Wall and monotonic time that move only when told; timers run on :meth:`advance`."""

    def __init__(self) -> None:
        self.now = 1_000_000.0
        self._timers: list[tuple[float, int, FakeTimer]] = []
        self._seq = itertools.count()

    def time(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return self.now - 900_000.0

    def call_later(self, delay: float, callback: Callable[..., object], *args: Any) -> FakeTimer:
        timer = FakeTimer(callback, args)
        heapq.heappush(self._timers, (self.now + max(delay, 0.0), next(self._seq), timer))
        return timer

    def advance(self, seconds: float) -> None:
        until = self.now + seconds
        while self._timers and self._timers[0][0] <= until:
            when, _, timer = heapq.heappop(self._timers)
            self.now = max(self.now, when)
            if not timer.cancelled:
                timer.callback(*timer.args)
        self.now = until


@dataclass
class FakeTimer:
    callback: Callable[..., object]
    args: tuple[Any, ...]
    cancelled: bool = False

    def cancel(self) -> None:
        self.cancelled = True


@dataclass
class Outbox:
    """Everything the core sent, decoded: (route, message) pairs, and what it published."""

    sent: list[tuple[bytes, p.Message]] = field(default_factory=list)
    published: list[p.Message] = field(default_factory=list)
    dead: set[bytes] = field(default_factory=set)  # routes whose connection is gone
    probes: list[tuple[bytes, float]] = field(default_factory=list)

    def send(self, route: bytes, msg: p.Message) -> None:
        self.sent.append((route, p.decode(p.encode(msg))))  # every send must survive the wire

    def queue(self, route: bytes, frames: list[bytes]) -> None:
        self.sent.append((route, p.decode(frames)))

    def publish(self, msg: p.Message) -> None:
        self.published.append(msg)

    def reachable(self, route: bytes) -> bool:
        return route not in self.dead

    def probe(self, route: bytes, nonce: float) -> None:
        self.probes.append((route, nonce))

    def to(self, route: bytes, kind: type | None = None) -> list[Any]:
        return [m for r, m in self.sent if r == route and (kind is None or isinstance(m, kind))]

    def clear(self) -> None:
        self.sent.clear()


@dataclass
class Origin:
    key: str | None = None
    where: str = "127.0.0.9"

    def user_id(self) -> str | None:
        return self.key

    def address(self) -> str | None:
        return self.where


class World:
    """One bridge core with its clock, outbox and events."""

    def __init__(
        self,
        *,
        total_shards: int = 4,
        shards_per_cluster: int = 1,
        total_machines: int = 2,
        policy: AccessPolicy | None = None,
        keys: dict[str, str] | None = None,
    ) -> None:
        self.clock = FakeClock()
        self.out = Outbox()
        self.events = EventEmitter(BRIDGE_EVENTS, logging.getLogger("test"))
        self.seen: list[tuple[str, Any]] = []
        for name in ("connect", "disconnect"):
            self.events.on(name, lambda *args, _n=name: self.seen.append((_n, args)))
        options = {"shards_per_cluster": shards_per_cluster, "total_machines": total_machines}
        self.fleet = FleetState(build_plan(total_shards, **options), options)
        self.core = BridgeCore(
            fleet=self.fleet,
            outgoing=self.out,
            clock=self.clock,
            events=self.events,
            settings=CoreSettings(
                auth_token=TOKEN,
                epoch="epoch-1",
                policy=policy or AccessPolicy(),
                heartbeat_interval=1.0,
                heartbeat_timeout=4.0,
                limits=p.DEFAULT_LIMITS,
                key_name=(lambda k: keys.get(k)) if keys is not None else None,
            ),
        )
        self._ids = itertools.count(1)

    def feed(self, route: bytes, msg: p.Message, origin: Origin | None = None) -> None:
        self.core.receive(route, origin or Origin(), p.encode(msg))

    def register(
        self,
        route: bytes,
        machine_id: str,
        *,
        token: str = TOKEN,
        agent: str = "bot",
        hosting: p.Hosting | None = None,
        origin: Origin | None = None,
    ) -> p.Message:
        """Register; returns the answer (Welcome or ErrorReply)."""
        rid = next(self._ids)
        msg = p.Register(
            id=rid,
            deadline=self.clock.time() + 5,
            protocol=p.PROTOCOL_VERSION,
            token=token,
            machine_id=machine_id,
            agent=agent,
            hosting=hosting,
        )
        self.feed(route, msg, origin)
        answers = [m for m in self.out.to(route) if getattr(m, "reply_to", None) == rid]
        assert len(answers) == 1, self.out.to(route)
        return answers[0]

    def shard_data(self, route: bytes, max_clusters: int | None = None, origin: Origin | None = None) -> Any:
        rid = next(self._ids)
        request = p.ShardDataRequest(id=rid, deadline=self.clock.time() + 5, max_clusters=max_clusters)
        self.feed(route, request, origin)
        (answer,) = [m for m in self.out.to(route) if getattr(m, "reply_to", None) == rid]
        return answer

    def machine(self, route: bytes, machine_id: str, **kwargs: Any) -> tuple[int, ...]:
        """Register a bot machine and ask for its share; returns its clusters."""
        assert isinstance(self.register(route, machine_id, **kwargs), p.Welcome)
        answer = self.shard_data(route, origin=kwargs.get("origin"))
        assert isinstance(answer, p.Reply), answer
        return tuple(p.load(answer.data)["cluster_list"])


def hosting(world: World, clusters: tuple[int, ...]) -> p.Hosting:
    plan = world.fleet.plan
    return p.Hosting(
        plan_version=plan.version,
        total_shards=plan.total_shards,
        cluster_list=clusters,
        shard_list=tuple(tuple(plan.shards_of([c])[0]) for c in clusters),
    )


# ---------------------------------------------------------------------------- registration


def test_registration_is_welcomed_with_the_run_and_the_permissions() -> None:
    world = World()
    welcome = world.register(b"r1", "m1")
    assert isinstance(welcome, p.Welcome)
    assert (welcome.client_id, welcome.epoch) == ("m1", "epoch-1")
    assert welcome.plan_version == world.fleet.plan.version
    assert set(welcome.permissions) == {"admin", "cache", "eval", "host", "request"}  # the token's, no CURVE
    assert world.seen == [("connect", (world.fleet.registry.by_id("m1").info, None))]  # type: ignore[union-attr]
    world.clock.advance(1.0)  # the beacon burst for the newcomer's SUB
    assert len(world.out.published) == 4


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"token": "wrong"}, "wrong auth token"),
        ({"machine_id": ""}, "machine_id must not be empty"),
        ({"agent": "x" * 200}, "agent is 200 characters"),
        ({"protocol": 1}, "client speaks protocol 1"),
    ],
)
def test_bad_registrations_are_refused_with_the_reason(change: dict[str, Any], fragment: str) -> None:
    world = World()
    fields: dict[str, Any] = {
        "id": 7,
        "deadline": world.clock.time() + 5,
        "protocol": p.PROTOCOL_VERSION,
        "token": TOKEN,
        "machine_id": "m1",
        "agent": "bot",
        **change,
    }
    world.feed(b"r1", p.Register(**fields))
    (answer,) = world.out.to(b"r1")
    assert isinstance(answer, p.ErrorReply) and answer.reply_to == 7
    assert fragment in answer.error.message
    assert len(world.fleet.registry) == 0
    assert world.core.counters.refused_registrations == 1


def test_an_expired_registration_is_ignored() -> None:
    world = World()
    world.feed(
        b"r1",
        p.Register(
            id=1,
            deadline=world.clock.time() - 1,
            protocol=p.PROTOCOL_VERSION,
            token=TOKEN,
            machine_id="m",
            agent="a",
        ),
    )
    assert world.out.sent == [] and len(world.fleet.registry) == 0


def test_a_stranger_is_told_to_register_and_nothing_it_sent_runs() -> None:
    world = World()
    world.feed(b"r9", p.EvalRequest(id=5, deadline=world.clock.time() + 5, script="1"))
    (answer,) = world.out.to(b"r9")
    assert isinstance(answer, p.Reregister) and answer.reply_to == 5
    assert len(world.core.fanouts) == 0


def test_another_curve_key_cannot_take_a_registered_machine_id() -> None:
    world = World(keys={"KEY-A": "a", "KEY-B": "b"})
    assert isinstance(world.register(b"r1", "m1", origin=Origin("KEY-A")), p.Welcome)
    answer = world.register(b"r2", "m1", origin=Origin("KEY-B"))
    assert isinstance(answer, p.ErrorReply)
    assert "registered by another CURVE key ('a')" in answer.error.message
    # The same key on a new connection (a restarted process) replaces the old one.
    assert isinstance(world.register(b"r3", "m1", origin=Origin("KEY-A")), p.Welcome)
    (goodbye,) = world.out.to(b"r1", p.Goodbye)
    assert goodbye.retry is False and "replaced by a new connection" in goodbye.reason
    assert world.fleet.registry.by_id("m1").routing_id == b"r3"  # type: ignore[union-attr]


def test_a_message_on_a_registered_routing_id_from_another_key_is_dropped() -> None:
    world = World(keys={"KEY-A": "a", "KEY-B": "b"})
    world.register(b"r1", "m1", origin=Origin("KEY-A"))
    world.out.clear()
    world.feed(b"r1", p.Ping(sent_at=1.0), Origin("KEY-B"))
    assert world.out.sent == []
    world.feed(b"r1", p.Ping(sent_at=1.0), Origin("KEY-A"))
    assert isinstance(world.out.to(b"r1")[0], p.Pong)


def test_permissions_come_from_the_policy_and_refusals_say_what_is_allowed() -> None:
    world = World(policy=AccessPolicy(agents={"dashboard": ["request"]}))
    world.register(b"d", "dash", agent="dashboard")
    world.feed(b"d", p.EvalRequest(id=3, deadline=world.clock.time() + 5, script="1"))
    (answer,) = world.out.to(b"d", p.ErrorReply)
    assert answer.reply_to == 3 and answer.error.code == "permission_denied"
    assert "may not eval; it may: request" in answer.error.message


# ---------------------------------------------------------------------------- placement


def test_machines_get_consecutive_chunks_then_wait_as_standbys() -> None:
    world = World(total_shards=4, total_machines=2)
    assert world.machine(b"r1", "m1") == (0, 1)
    assert world.machine(b"r2", "m2") == (2, 3)
    assert world.machine(b"r3", "m3") == ()
    assert world.fleet.registry.by_id("m3").standby  # type: ignore[union-attr]


def test_a_lost_machine_s_chunk_goes_to_the_standby_and_sticks_otherwise() -> None:
    world = World()
    world.machine(b"r1", "m1")
    world.machine(b"r2", "m2")
    world.machine(b"r3", "m3")
    world.out.clear()
    world.feed(b"r1", p.Goodbye(reason="bye"))
    (assignment,) = world.out.to(b"r3", p.Assignment)
    assert assignment.cluster_list == (0, 1) and "was lost" in assignment.reason
    assert world.seen[-1][0] == "disconnect"
    # m2 left while no standby waits: its chunk waits for m2 (sticky), not the next newcomer.
    world.feed(b"r2", p.Goodbye(reason="restart"))
    assert world.machine(b"r2b", "m2") == (2, 3)


def test_a_machine_lost_without_a_goodbye_keeps_its_chunk_until_its_lease_surely_ran_out() -> None:
    world = World()  # lease 10 s, margin 1 s
    world.machine(b"r1", "m1")
    world.machine(b"r2", "m2")
    world.machine(b"r3", "m3")  # the standby
    world.feed(b"r1", p.Ping(sent_at=0.0, mono=7.5))
    (pong,) = world.out.to(b"r1", p.Pong)
    assert (pong.mono, pong.lease) == (7.5, 10.0)  # renewed from when m1 sent the ping
    world.out.clear()
    for _ in range(5):  # m1 falls silent (a cut link, a frozen agent); the others talk
        world.clock.advance(1.0)
        for route in (b"r2", b"r3"):
            world.feed(route, p.Ping(sent_at=0.0))
        world.core.tick()
    assert world.fleet.registry.by_id("m1") is None  # dropped at 4 s of silence...
    assert world.out.to(b"r3", p.Assignment) == []  # ...but its clusters may still run
    assert world.machine(b"r4", "newcomer") == ()  # nor does anyone else get them
    world.clock.advance(5.9)  # 10.9 s after the last grant: not yet
    assert world.out.to(b"r3", p.Assignment) == []
    world.clock.advance(0.2)  # lease (10 s) + margin (1 s) have passed
    (assignment,) = world.out.to(b"r3", p.Assignment)
    assert assignment.cluster_list == (0, 1) and "its lease has run out" in assignment.reason


def test_a_machine_back_before_its_lease_ran_out_keeps_its_chunk() -> None:
    world = World()
    world.machine(b"r1", "m1")
    world.machine(b"r2", "m2")
    world.machine(b"r3", "m3")
    world.out.clear()
    world.clock.advance(5.0)
    world.core.tick()  # m1, m2, m3 all silent: dropped, chunks fenced
    welcome = world.register(b"r1b", "m1", hosting=hosting(world, (0, 1)))
    assert isinstance(welcome, p.Welcome) and not welcome.refused_claim and welcome.lease == 10.0
    world.clock.advance(10.0)  # the fences end: nothing of m1's moves, it holds it again
    assert world.fleet.placement.held_by("m1") == (0, 1)
    assert all(a.cluster_list != (0, 1) for a in world.out.to(b"r3", p.Assignment))


def test_a_standby_that_never_claims_its_chunk_is_reported_and_the_chunk_moves_on() -> None:
    world = World()  # claim_timeout 30 s
    unclaimed: list[tuple[Any, ...]] = []
    world.events.on("assignment_unclaimed", lambda *args: unclaimed.append(args))
    world.machine(b"r1", "m1")
    world.machine(b"r2", "m2")
    world.register(b"r1", "m1", hosting=hosting(world, (0, 1)))  # both claim what they were given
    world.register(b"r2", "m2", hosting=hosting(world, (2, 3)))
    world.machine(b"r3", "idle")  # a standby that will ignore what it is handed
    world.machine(b"r4", "spare")  # and the next one in line
    world.feed(b"r1", p.Goodbye(reason="bye"))
    (assignment,) = world.out.to(b"r3", p.Assignment)
    assert assignment.cluster_list == (0, 1)

    def beat(seconds: int) -> None:
        for _ in range(seconds):
            world.clock.advance(1.0)
            for route in (b"r2", b"r3", b"r4"):
                world.feed(route, p.Ping(sent_at=0.0))
            world.core.tick()

    beat(29)
    assert unclaimed == [] and world.out.to(b"r4", p.Assignment) == []
    beat(1)
    assert unclaimed == [("idle", (0, 1))]
    (moved,) = world.out.to(b"r4", p.Assignment)
    assert moved.cluster_list == (0, 1)
    idle = world.fleet.registry.by_id("idle")
    assert idle is not None and not idle.standby and "did not start them" in (idle.stalled or "")
    # The spare claims its chunk: nothing moves again, and the stalled machine gets no other.
    world.register(b"r4", "spare", hosting=hosting(world, (0, 1)))
    beat(31)
    assert len(unclaimed) == 1 and world.fleet.placement.held_by("spare") == (0, 1)
    assert world.shard_data(b"r3").data and world.fleet.placement.held_by("idle") == ()
    # If it starts them after all, its claim is refused: they run elsewhere now.
    late = world.register(b"r3", "idle", hosting=hosting(world, (0, 1)))
    assert isinstance(late, p.Welcome) and late.refused_claim


def test_silence_longer_than_the_heartbeat_timeout_drops_a_peer() -> None:
    world = World()
    world.machine(b"r1", "m1")
    world.machine(b"r2", "m2")
    for _ in range(5):
        world.clock.advance(1.0)
        world.feed(b"r2", p.Ping(sent_at=0.0))  # m2 keeps talking, m1 is silent
        world.core.tick()
    assert [peer.info.id for peer in world.fleet.registry] == ["m2"]
    assert "silent for" in world.seen[-1][1][1]


def test_after_a_bridge_restart_machines_claim_what_they_run() -> None:
    world = World()  # a fresh bridge run: nothing placed yet
    plan = world.fleet.plan
    # m2 comes back first, running the second chunk; a newcomer must not get it.
    welcome = world.register(b"r2", "m2", hosting=hosting(world, (2, 3)))
    assert isinstance(welcome, p.Welcome) and welcome.notice is None
    assert world.machine(b"r9", "newcomer") == (0, 1)
    # A claim on clusters another machine holds is refused, and says so.
    welcome = world.register(b"r1", "m1", hosting=hosting(world, (0, 1)))
    assert isinstance(welcome, p.Welcome)
    assert welcome.notice == "claim refused: cluster 0 is held by machine 'newcomer'; stop those clusters"
    assert welcome.refused_claim  # the machine must stop them: one shard, one session
    assert world.fleet.placement.held_by("m2") == (2, 3) and plan is world.fleet.plan


def test_a_machine_running_an_old_plan_is_given_a_share_of_the_new_one() -> None:
    world = World(total_shards=4)
    old = p.Hosting(plan_version="old", total_shards=2, cluster_list=(0, 1), shard_list=((0,), (1,)))
    welcome = world.register(b"r1", "m1", hosting=old)
    assert isinstance(welcome, p.Welcome) and "stale" in (welcome.notice or "")
    assert not welcome.refused_claim  # another plan is no refusal: an assignment follows
    (assignment,) = world.out.to(b"r1", p.Assignment)
    assert assignment.plan_version == world.fleet.plan.version and assignment.cluster_list == (0, 1)


def test_a_draining_machine_hands_over_at_once_but_stays_registered() -> None:
    world = World()
    world.machine(b"r1", "m1")
    world.machine(b"r2", "m2")
    world.machine(b"r3", "m3")
    world.feed(b"r1", p.Leaving(reason="deploy"))
    (assignment,) = world.out.to(b"r3", p.Assignment)
    assert assignment.cluster_list == (0, 1)
    assert world.fleet.registry.by_id("m1").leaving  # type: ignore[union-attr]


def test_reshard_replaces_plan_and_placement_together_and_pushes_shares() -> None:
    world = World(total_shards=4, total_machines=2)
    world.machine(b"r1", "m1")
    world.machine(b"r2", "m2")
    old = world.fleet.plan
    world.out.clear()
    plan = world.core.reshard(8, shards_per_cluster=2)
    assert plan is world.fleet.plan and world.fleet.placement.plan is plan and plan.version != old.version
    first, second = world.out.to(b"r1", p.Assignment), world.out.to(b"r2", p.Assignment)
    assert first[0].cluster_list == (0, 1) and second[0].cluster_list == (2, 3)
    assert first[0].shard_list == ((0, 1), (2, 3))
    assert world.out.published[-1].plan_version == plan.version  # type: ignore[attr-defined]
    world.out.clear()
    assert world.core.reshard(None) is not None and world.out.sent == []  # same plan: nothing moves


def test_a_reshard_says_who_replaces_whom_and_passes_on_only_true_handover_notices() -> None:
    world = World(total_shards=4, total_machines=2)  # m1: clusters 0, 1 (shards 0, 1); m2: 2, 3
    world.machine(b"r1", "m1")
    world.machine(b"r2", "m2")
    world.register(b"dash", "dash", agent="dashboard")
    old = world.fleet.plan
    world.out.clear()
    plan = world.core.reshard(2, shards_per_cluster=1, total_machines=1)  # all on m1, m2 runs nothing
    (first,), (second,) = world.out.to(b"r1", p.Assignment), world.out.to(b"r2", p.Assignment)
    assert first.cluster_list == (0, 1) and second.cluster_list == ()  # m2 is told: retire yours
    # New shard s of 2 holds the guilds of old shards s and s + 2.
    assert first.handover == {
        "from_plan": old.version,
        "live_after": [[0, [0, 2]], [1, [1, 3]]],
        "retire_after": [[0, [0]], [1, [1]]],
    }
    assert second.handover == {"from_plan": old.version, "live_after": [], "retire_after": [[2, [0]], [3, [1]]]}
    world.out.clear()
    retired = p.Handover(step="retired", plan_version=old.version, cluster_id=2, fingerprints=b"\0" * 8)
    world.feed(b"r2", retired)
    assert world.out.to(b"r1", p.Handover) == [retired] and world.out.to(b"dash") == []
    world.out.clear()
    for liar, notice in [
        (b"r1", retired),  # m1 never ran old cluster 2
        (b"r2", p.Handover(step="ready", plan_version=plan.version, cluster_id=0)),  # nor does m2 run new 0
        (b"r2", p.Handover(step="release", plan_version=plan.version, cluster_id=0)),  # not a machine's step
    ]:
        world.feed(liar, notice)
    assert world.out.sent == []


# ---------------------------------------------------------------------------- fan-out


def eval_reply(fan_id: int, *slots: tuple[int, bool, Any]) -> p.EvalReply:
    return p.EvalReply(
        reply_to=fan_id,
        slots=tuple(p.Slot(cluster=c, ok=ok) for c, ok, _ in slots),
        results=tuple(p.dump(v) if ok else error_frame(v) for _, ok, v in slots),
    )


def fleet_of_two(world: World) -> None:
    world.machine(b"r1", "m1")
    world.machine(b"r2", "m2")
    world.register(b"caller", "caller", agent="dashboard")
    world.out.clear()


def test_an_eval_fans_out_once_per_machine_and_gathers_every_slot() -> None:
    world = World()
    fleet_of_two(world)
    world.feed(b"caller", p.EvalRequest(id=41, deadline=world.clock.time() + 5, script="bot.x"))
    (to1,), (to2,) = world.out.to(b"r1", p.EvalRequest), world.out.to(b"r2", p.EvalRequest)
    assert to1.id == to2.id and (to1.clusters, to2.clusters) == ((0, 1), (2, 3))
    assert to1.deadline < world.clock.time() + 5  # each hop answers before its caller gives up
    world.feed(b"r2", eval_reply(to2.id, (2, True, "c"), (3, True, "d")))
    assert world.out.to(b"caller") == []  # still waiting for m1
    world.feed(b"r1", eval_reply(to1.id, (0, True, "a"), (1, True, "b")))
    (answer,) = world.out.to(b"caller")
    assert isinstance(answer, p.EvalReply) and answer.reply_to == 41
    assert [p.load(r) for r in answer.results] == ["a", "b", "c", "d"]
    assert len(world.core.fanouts) == 0


def test_a_machine_that_does_not_answer_costs_only_its_own_slots() -> None:
    world = World()
    fleet_of_two(world)
    world.feed(b"caller", p.EvalRequest(id=42, deadline=world.clock.time() + 2, script="1"))
    (to1,) = world.out.to(b"r1", p.EvalRequest)
    world.feed(b"r1", eval_reply(to1.id, (0, True, 1), (1, True, 1)))
    world.clock.advance(2.0)
    (answer,) = world.out.to(b"caller")
    assert [s.ok for s in answer.slots] == [True, True, False, False]
    assert "did not answer before the deadline" in p.load(answer.results[2])["message"]


def test_a_machine_lost_mid_eval_fails_its_slots_at_once() -> None:
    world = World()
    fleet_of_two(world)
    world.feed(b"caller", p.EvalRequest(id=43, deadline=world.clock.time() + 30, script="1"))
    (to1,) = world.out.to(b"r1", p.EvalRequest)
    world.feed(b"r1", eval_reply(to1.id, (0, True, 1), (1, True, 1)))
    world.core.unreachable(b"r2")
    (answer,) = world.out.to(b"caller")
    assert [s.ok for s in answer.slots] == [True, True, False, False]
    assert "went away" in p.load(answer.results[3])["message"]


def test_slots_are_taken_only_from_the_route_asked_and_only_once() -> None:
    world = World()
    fleet_of_two(world)
    world.feed(b"caller", p.EvalRequest(id=44, deadline=world.clock.time() + 5, script="1"))
    (to1,) = world.out.to(b"r1", p.EvalRequest)
    # A third peer answering under the fan-out's id is ignored.
    world.feed(b"caller", eval_reply(to1.id, (0, True, "forged"), (1, True, "forged")))
    world.feed(b"r1", eval_reply(to1.id, (0, True, "real"), (1, True, "real")))
    world.feed(b"r1", eval_reply(to1.id, (0, True, "again"), (1, True, "again")))  # late duplicate
    world.feed(b"r2", eval_reply(to1.id, (2, True, "c"), (3, True, "d")))
    (answer,) = world.out.to(b"caller", p.EvalReply)
    assert [p.load(r) for r in answer.results] == ["real", "real", "c", "d"]


def test_an_answer_missing_a_slot_it_was_asked_for_names_the_cluster() -> None:
    world = World()
    fleet_of_two(world)
    world.feed(b"caller", p.EvalRequest(id=45, deadline=world.clock.time() + 5, script="1"))
    (to1,) = world.out.to(b"r1", p.EvalRequest)
    world.feed(b"r1", eval_reply(to1.id, (0, True, 1)))
    world.feed(b"r2", eval_reply(to1.id, (2, True, 1), (3, True, 1)))
    (answer,) = world.out.to(b"caller", p.EvalReply)
    assert not answer.slots[1].ok
    assert "no result came back for cluster(s) [1]" in p.load(answer.results[1])["message"]


def test_clusters_no_machine_runs_fail_at_once_and_unknown_targets_are_refused() -> None:
    world = World()
    world.machine(b"r1", "m1")
    world.register(b"caller", "caller")
    world.out.clear()
    world.feed(b"caller", p.EvalRequest(id=46, deadline=world.clock.time() + 5, script="1", clusters=(3,)))
    (answer,) = world.out.to(b"caller")
    assert (
        not answer.slots[0].ok
        and "not running on any connected machine" in p.load(answer.results[0])["message"]
    )
    world.feed(b"caller", p.EvalRequest(id=47, deadline=world.clock.time() + 5, script="1", clusters=(9,)))
    (refused,) = world.out.to(b"caller", p.ErrorReply)
    assert refused.reply_to == 47 and "the plan has clusters 0 to 3" in refused.error.message


def test_a_guild_request_goes_to_the_machine_of_its_shard() -> None:
    world = World()
    fleet_of_two(world)
    guild = (3 << 22) | 5  # shard 3 of 4: cluster 3, on m2
    world.feed(
        b"caller", p.GuildRequest(id=50, deadline=world.clock.time() + 5, guild_id=guild, data=p.dump("hi"))
    )
    (sub,) = world.out.to(b"r2", p.GuildRequest)
    assert world.out.to(b"r1") == []
    world.feed(b"r2", p.Reply(reply_to=sub.id, data=p.dump("there")))
    (answer,) = world.out.to(b"caller", p.Reply)
    assert answer.reply_to == 50 and p.load(answer.data) == "there"


# ---------------------------------------------------------------------------- bad input


def test_malformed_frames_are_answered_and_counted_and_the_core_serves_on() -> None:
    world = World()
    world.register(b"r1", "m1")
    world.out.clear()
    for garbage in ([b"\xff\x00"], [], [b"{}"], [b'{"type":"nope"}'], [b"x" * 10]):
        world.core.receive(b"r1", Origin(), garbage)
    errors = world.out.to(b"r1", p.ErrorReply)
    assert len(errors) == 5 and all(e.error.code == "protocol" for e in errors)
    assert world.core.counters.protocol_errors == 5
    world.feed(b"r1", p.Ping(sent_at=2.0))
    assert isinstance(world.out.sent[-1][1], p.Pong)


def test_a_batch_inside_a_batch_is_refused() -> None:
    world = World()
    world.register(b"r1", "m1")
    world.out.clear()
    ping = p.encode(p.Ping(sent_at=1.0))
    inner = p.encode(p.Batch(sizes=(len(ping), len(ping)), frames=(*ping, *ping)))
    world.core.receive(
        b"r1", Origin(), p.encode(p.Batch(sizes=(len(inner), len(ping)), frames=(*inner, *ping)))
    )
    (error,) = world.out.to(b"r1", p.ErrorReply)
    assert "a batch inside a batch" in error.error.message


def test_a_message_the_bridge_does_not_take_is_refused_by_name() -> None:
    world = World()
    world.register(b"r1", "m1")
    world.out.clear()
    world.feed(
        b"r1",
        p.Welcome(
            reply_to=1, client_id="x", epoch="e", heartbeat_interval=1, heartbeat_timeout=2, permissions=()
        ),
    )
    (error,) = world.out.to(b"r1", p.ErrorReply)
    assert "the bridge does not accept 'welcome' messages" in error.error.message


# ---------------------------------------------------------------------------- hostile peers (issue 14)


def test_a_key_without_host_cannot_take_clusters_or_claim_them() -> None:
    world = World(keys={"KEY-M": "machine-1", "KEY-X": "stranger"}, policy=HOSTS)
    assert world.machine(b"r1", "m1", origin=Origin("KEY-M")) == (0, 1)
    world.register(b"rx", "x", origin=Origin("KEY-X"))
    answer = world.shard_data(b"rx", origin=Origin("KEY-X"))
    assert isinstance(answer, p.ErrorReply) and answer.error.code == "permission_denied"
    assert "may not host" in answer.error.message
    assert world.fleet.placement.held_by("x") == () and not world.fleet.registry.by_id("x").standby  # type: ignore[union-attr]
    # Nor by claiming clusters at registration, as a restarted machine would.
    welcome = world.register(b"ry", "y", origin=Origin("KEY-X"), hosting=hosting(world, (2, 3)))
    assert isinstance(welcome, p.Welcome) and "may not host" in (welcome.notice or "")
    assert world.fleet.placement.held_by("y") == ()
    # And a lost machine's chunk never goes to it.
    world.feed(b"r1", p.Goodbye(reason="gone"))
    assert world.out.to(b"rx", p.Assignment) == [] and world.out.to(b"ry", p.Assignment) == []


def test_each_machine_is_sent_only_its_own_clusters_and_answers_only_for_them() -> None:
    world = World()
    fleet_of_two(world)
    world.feed(b"caller", p.EvalRequest(id=60, deadline=world.clock.time() + 5, script="1"))
    (to1,), (to2,) = world.out.to(b"r1", p.EvalRequest), world.out.to(b"r2", p.EvalRequest)
    assert (to1.clusters, to2.clusters) == ((0, 1), (2, 3))
    # m2 answers first, for every cluster: its forged slots for m1's clusters are not taken.
    world.feed(b"r2", eval_reply(to2.id, *((c, True, "FORGED") for c in (0, 1, 2, 3))))
    world.feed(b"r1", eval_reply(to1.id, (0, True, "a"), (1, True, "b")))
    (answer,) = world.out.to(b"caller", p.EvalReply)
    assert [p.load(r) for r in answer.results] == ["a", "b", "FORGED", "FORGED"]


def test_a_connection_cannot_change_who_it_is_by_registering_again() -> None:
    world = World(total_shards=4)
    world.machine(b"r1", "m1")
    for change in ({"machine_id": "m9"}, {"agent": "other"}):
        fields: dict[str, Any] = {"machine_id": "m1", "agent": "bot", **change}
        answer = world.register(b"r1", fields["machine_id"], agent=fields["agent"])
        assert isinstance(answer, p.ErrorReply) and "cannot change" in answer.error.message
    # m1 still holds its clusters under its own name; nothing was stranded.
    assert world.fleet.placement.held_by("m1") == (0, 1)
    assert world.fleet.registry.by_id("m9") is None
    assert isinstance(world.register(b"r1", "m1"), p.Welcome)  # the same identity may refresh


def test_a_machine_id_stays_bound_to_its_key_while_the_machine_is_away() -> None:
    world = World(keys={"KEY-A": "machine-a", "KEY-B": "machine-b"}, policy=HOSTS)
    world.machine(b"r1", "m1", origin=Origin("KEY-A"))
    world.feed(b"r1", p.Goodbye(reason="restarting"))
    answer = world.register(b"r2", "m1", origin=Origin("KEY-B"), hosting=hosting(world, (0, 1)))
    assert (
        isinstance(answer, p.ErrorReply)
        and "registered by another CURVE key ('machine-a')" in answer.error.message
    )
    assert world.machine(b"r3", "m1", origin=Origin("KEY-A")) == (0, 1)  # its own key gets it back


def test_a_removed_key_loses_its_session_and_cannot_register_again() -> None:
    keys = {"KEY-A": "machine-a", "KEY-B": "machine-b"}
    world = World(keys=keys, policy=HOSTS)
    world.machine(b"r1", "m1", origin=Origin("KEY-A"))
    world.machine(b"r2", "m2", origin=Origin("KEY-B"))
    del keys["KEY-A"]
    world.core.recheck_keys()
    (goodbye,) = world.out.to(b"r1", p.Goodbye)
    assert goodbye.retry is False and "removed from the allow-list" in goodbye.reason
    assert world.fleet.registry.by_id("m1") is None
    answer = world.register(b"r1", "m1", origin=Origin("KEY-A"))
    assert isinstance(answer, p.ErrorReply) and "not in the allow-list" in answer.error.message
    assert world.fleet.registry.by_id("m2") is not None


def test_without_curve_a_live_machine_id_cannot_be_taken_over() -> None:
    world = World()
    world.machine(b"r1", "m1")
    answer = world.register(b"r2", "m1")
    assert isinstance(answer, p.ErrorReply) and "in use by a live connection" in answer.error.message
    assert world.out.to(b"r1", p.Goodbye) == [] and world.fleet.registry.by_id("m1").routing_id == b"r1"  # type: ignore[union-attr]
    world.out.dead.add(b"r1")  # the old process is gone: its pipe fails a send
    assert world.machine(b"r3", "m1") == (0, 1)


def test_deadlines_are_capped_and_each_peer_has_a_bounded_number_of_open_requests() -> None:
    world = World()
    world.register(b"a", "asker")
    world.register(b"s", "silent")
    world.out.clear()
    far = world.clock.time() + 1e9
    world.feed(b"a", p.Request(id=1, deadline=far, data=p.dump(1), target="silent"))
    (relayed,) = world.out.to(b"s", p.Request)
    assert relayed.deadline <= world.clock.time() + MAX_TIMEOUT
    for rid in range(2, MAX_OPEN_PER_PEER + 5):
        world.feed(b"a", p.Request(id=rid, deadline=world.clock.time() + 5, data=p.dump(1), target="silent"))
    refused = [m for m in world.out.to(b"a", p.ErrorReply) if "open requests" in m.error.message]
    assert len(refused) == 4 and len(world.core.open) == MAX_OPEN_PER_PEER
    world.clock.advance(MAX_TIMEOUT + 1)
    assert len(world.core.open) == 0  # nothing outlives the cap


def test_connections_closing_in_a_flood_cost_a_bounded_number_of_probes() -> None:
    world = World()
    for n in range(30):
        world.register(f"r{n}".encode(), f"m{n}")
    world.out.clear()
    for _ in range(200):  # 200 refused handshakes, say
        world.core.connection_closed()
    world.clock.advance(1.0)
    assert len(world.out.sent) <= 2 * 30


def test_one_machine_s_malformed_status_cannot_break_status() -> None:
    world = World()
    world.machine(b"r1", "m1")
    world.machine(b"r2", "m2")
    good = [
        {
            "id": 0,
            "shards": [0],
            "pid": 1,
            "state": "ready",
            "guilds": 3,
            "restarts": 0,
            "started_at": 1.0,
            "uptime": 2.5,
            "last_heartbeat": 3.0,
            "exit_code": None,
        }
    ]
    status = world.fleet.status({"m1": good, "m2": [{"id": "x"}, 7, None]}, taken_at=1.0)
    m1, m2 = status.machines
    assert m1.error is None and len(m1.clusters) == 1
    assert m2.clusters == () and "malformed status" in (m2.error or "")
    assert world.fleet.status({"m1": good, "m2": "not a list"}, taken_at=1.0).machines[1].error


def test_a_failed_slot_that_is_not_an_error_record_is_still_an_error() -> None:
    reply = p.EvalReply(
        reply_to=1,
        slots=(p.Slot(cluster=0, ok=False), p.Slot(cluster=1, ok=False)),
        results=(p.dump([1]), p.dump("x")),
    )
    values = eval_outcome(reply, return_exceptions=True)
    assert all(isinstance(v, ZmqcrossError) for v in values)
    with pytest.raises(BroadcastEvalError, match="2 of 2 clusters failed"):
        eval_outcome(reply, return_exceptions=False)


def test_an_eval_that_cannot_be_encoded_is_refused_before_anything_opens() -> None:
    world = World()
    fleet_of_two(world)
    deep = b'{"x":' * 300 + b"1" + b"}" * 300
    header = b'{"type":"eval","id":70,"deadline":%f,"script":"1","context":%s}' % (
        world.clock.time() + 5,
        deep,
    )
    ping = p.encode(p.Ping(sent_at=3.0))
    world.core.receive(b"caller", Origin(), p.encode(p.Batch(sizes=(1, 1), frames=(header, *ping))))
    (error,) = world.out.to(b"caller", p.ErrorReply)
    assert error.reply_to == 70 and error.error.code == "serialization"
    assert len(world.core.fanouts) == 0 and world.out.to(b"r1") == []
    assert world.out.to(b"caller", p.Pong)  # the rest of the batch was served


def test_the_send_window_asks_for_proof_and_stops_at_the_bound() -> None:
    window = SendWindow(probe_every=100, limit=300)
    assert window.sent(b"r", 60) is None
    nonce = window.sent(b"r", 60)  # 120 bytes unproven: ask for proof
    assert nonce is not None and window.sent(b"r", 100) is None  # one probe at a time
    assert (
        window.proven(b"r", nonce + 7) is None and window.unread(b"r") == 220
    )  # a made-up nonce proves nothing
    assert window.sent(b"r", 80) is None and window.may_send(b"r", now=0.0)  # 300: at the bound
    assert window.sent(b"r", 1) is None and not window.may_send(b"r", now=1.0)  # 301 unread: over
    assert window.stuck(now=1.5, patience=1.0) == [] and window.stuck(now=2.5, patience=1.0) == [b"r"]
    again = window.proven(b"r", nonce)  # it read up to the probe: 120 proven, 181 still unread
    assert window.unread(b"r") == 181 and window.may_send(b"r", now=3.0) and again is not None
    assert window.stuck(now=9.0, patience=1.0) == []


def test_a_peer_that_does_not_read_is_sent_nothing_more_and_then_dropped() -> None:
    world = World()
    world.register(b"r1", "m1")
    world.register(b"r2", "m2")
    window = world.core.window
    nonce = window.sent(b"r1", PROBE_EVERY_BYTES)
    assert nonce is not None
    window.sent(b"r1", MAX_UNREAD_BYTES)
    assert not window.may_send(b"r1", world.clock.monotonic())
    world.feed(b"r2", p.Pong(sent_at=nonce))  # another peer cannot answer for it
    assert window.unread(b"r1") > MAX_UNREAD_BYTES
    for _ in range(5):
        world.clock.advance(1.0)
        world.feed(b"r1", p.Ping(sent_at=0.0))  # it keeps talking, but does not read
        world.feed(b"r2", p.Ping(sent_at=0.0))
        world.core.tick()
    assert [peer.info.id for peer in world.fleet.registry] == ["m2"]
    assert "does not read what it is sent" in world.seen[-1][1][1]


def test_a_peer_that_proves_it_read_is_asked_again_when_much_is_still_unproven() -> None:
    world = World()
    world.register(b"r1", "m1")
    window = world.core.window
    nonce = window.sent(b"r1", PROBE_EVERY_BYTES)
    window.sent(b"r1", 2 * PROBE_EVERY_BYTES)  # sent while the probe travelled
    assert nonce is not None
    world.feed(b"r1", p.Pong(sent_at=nonce))
    assert world.out.probes == [(b"r1", nonce + 1)]


def test_no_one_is_dropped_for_silence_while_the_router_reads_a_huge_message() -> None:
    world = World()
    world.register(b"r1", "m1")
    world.register(b"r2", "m2")
    world.clock.advance(10.0)  # the ROUTER was busy discarding: nobody could be heard
    world.core.tick(hearing=False)
    assert len(world.fleet.registry) == 2
    world.core.oversized(b"r9", Origin(), "message has 500001 frames; the limit is 4096")
    world.core.tick()  # silence counts again from the end of the discard
    assert len(world.fleet.registry) == 2
    world.clock.advance(5.0)
    world.core.tick()
    assert len(world.fleet.registry) == 0


def test_connections_that_carry_no_registered_peer_expire() -> None:
    idle = IdleConnections()
    assert not idle
    idle.accepted(7, now=0.0)
    idle.accepted(8, now=0.0)
    idle.accepted(9, now=5.0)
    idle.heard(8)  # a registered peer's message came on it
    idle.closed(9)
    assert idle.expired(now=9.0, grace=10.0) == []
    assert idle.expired(now=10.5, grace=10.0) == [7] and not idle
