"""The bridge's picture of the fleet: the plan, who holds which of its clusters, who is connected.

One object, so that a reshard replaces the plan and its placement in one place and no
part of the bridge can read a new plan with an old placement. Pure: it decides which
machine runs what and returns the messages that say so; the core sends them.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any

from .._handover import HandoverPlan, overlaps
from .._identify import IdentifyParams
from ..errors import ConfigurationError
from ..planning import Placement, ShardData, ShardPlan, build_plan
from ..protocol import Assignment, Handover, Hosting
from ..registry import Peer, Registry
from ..status import ClusterStatus, FleetStatus, MachineStatus

__all__ = ["PLAN_OPTIONS", "Claim", "FleetState", "HandingOver", "Unclaimed"]

log = logging.getLogger("zmqcross.bridge")

PLAN_OPTIONS = ("shards_per_cluster", "total_machines", "shard_list", "parse_cluster_list")
"""The options (besides ``total_shards``) a shard plan is built from."""


@dataclass(frozen=True, slots=True)
class Claim:
    """The answer to a machine's claim: ``notice`` for its log, ``refused`` if it must stop its clusters."""

    notice: str | None
    refused: bool


@dataclass(frozen=True, slots=True)
class HandingOver:
    """The plan the last reshard left, and which machine ran each of its clusters then."""

    from_plan: str
    holders: dict[int, str]


@dataclass(frozen=True, slots=True)
class Unclaimed:
    """A chunk handed to a machine that ran nothing, not yet claimed (it has not said it runs it)."""

    clusters: tuple[int, ...]
    since: float  # monotonic


class FleetState:
    """The current plan, its placement and the registry of connected peers.

    ``plan`` is ``None`` until :meth:`begin` (``total_shards="auto"`` is resolved at start).

    A chunk handed to a machine that ran nothing (a first grant, a failover) counts as
    placed only once the machine claims it (a registration saying it runs those
    clusters); :meth:`expire_claims` takes it back from a machine that never does.
    """

    def __init__(self, plan: ShardPlan | None, options: dict[str, Any]) -> None:
        self.registry = Registry()
        self._options = dict(options)
        self._plan = plan
        self._placement = Placement(plan) if plan is not None else None
        self.identify = IdentifyParams()  # how IDENTIFYs are paced; the bridge sets it at start
        # Machines lost without a goodbye whose leases have not surely run out: their clusters
        # may still hold Discord sessions, so their chunks go to no one else yet.
        self.fenced: set[str] = set()
        self.unclaimed: dict[str, Unclaimed] = {}  # machine id -> the chunk it has yet to claim
        self.handing_over: HandingOver | None = None  # the last reshard's old clusters

    # ------------------------------------------------------------------ the plan

    @property
    def started(self) -> bool:
        """Whether a plan is in force."""
        return self._plan is not None

    @property
    def plan(self) -> ShardPlan:
        """The plan in force."""
        if self._plan is None:
            raise RuntimeError('the plan is not known yet: total_shards="auto" is resolved by start()')
        return self._plan

    @property
    def plan_version(self) -> str | None:
        """The plan's version, or None before there is one."""
        return self._plan.version if self._plan is not None else None

    @property
    def placement(self) -> Placement:
        """Which machine holds which clusters of the plan."""
        if self._placement is None:
            raise RuntimeError("the bridge has no plan yet")
        return self._placement

    def begin(self, total_shards: int) -> ShardPlan:
        """Build the first plan from ``total_shards`` and this fleet's options."""
        self._plan = build_plan(total_shards, **self._options)
        self._placement = Placement(self._plan)
        return self._plan

    def build(self, total_shards: int | None, **overrides: Any) -> tuple[ShardPlan, dict[str, Any]]:
        """A plan with some options changed (``None`` keeps one), and the options it used; nothing swaps."""
        options = dict(self._options)
        options.update({name: value for name, value in overrides.items() if value is not None})
        unknown = sorted(set(options) - set(PLAN_OPTIONS))
        if unknown:
            raise ConfigurationError(f"unknown plan option(s) {unknown}; plans take {list(PLAN_OPTIONS)}")
        shards = total_shards if total_shards is not None else self.plan.total_shards
        return build_plan(shards, **options), options

    def reshard(
        self, plan: ShardPlan, options: dict[str, Any], *, now: float
    ) -> list[tuple[Peer, Assignment]]:
        """Switch to ``plan``; every bot machine gets a share of it (the messages to send).

        Each share says which running clusters of the old plan its new clusters replace, on
        any machine (:mod:`zmqcross._handover`); a machine left with no share is told so too,
        and retires its clusters once their successors are ready.
        """
        machines = [p for p in self.registry if not p.leaving and (p.clusters or p.standby)]
        # Machines keep their place in the order of chunks (the one with cluster 0 first).
        machines.sort(key=lambda p: (not p.clusters, min(p.clusters, default=0)))
        old_plan = self.plan
        old_clusters = {p.info.id: p.clusters for p in machines}
        holders = self.running()
        live_after, retire_after = overlaps(
            {cid: old_plan.clusters[cid] for cid in holders},
            old_plan.total_shards,
            dict(enumerate(plan.clusters)),
            plan.total_shards,
        )
        self.handing_over = HandingOver(old_plan.version, holders)
        self._plan, self._options, self._placement = plan, dict(options), Placement(plan)
        self.unclaimed.clear()
        log.info(
            "resharding to plan %s: %d shards in %d clusters",
            plan.version,
            plan.total_shards,
            plan.total_clusters,
        )
        reason = f"reshard to {plan.total_shards} shards (plan {plan.version})"
        pushes = []
        for peer in machines:
            # A machine running the old plan says it follows with its next claim, or stays stale;
            # only a standby that starts nothing leaves a chunk unserved.
            ran = old_clusters[peer.info.id]
            assignment = self.assign(peer, reason, now=now if not ran else None)
            if assignment is None and ran:
                assignment = self._nothing(reason)  # its clusters must retire all the same
            if assignment is not None:
                handover = HandoverPlan(
                    old_plan.version,
                    {cid: live_after[cid] for cid in assignment.cluster_list},
                    {cid: retire_after[cid] for cid in ran},
                )
                pushes.append((peer, dataclasses.replace(assignment, handover=handover.to_json())))
        return pushes

    def _nothing(self, reason: str) -> Assignment:
        plan = self.plan
        return Assignment(
            total_shards=plan.total_shards,
            shard_list=(),
            cluster_list=(),
            total_clusters=plan.total_clusters,
            plan_version=plan.version,
            reason=f"{reason}: this machine runs none of it (a standby)",
            identify=self.identify.to_json(),
        )

    def check_notice(self, machine_id: str, msg: Handover) -> str | None:
        """Why a machine's handover notice is not believable (None: pass it on)."""
        if msg.step == "ready":
            if msg.plan_version != self.plan.version or msg.cluster_id not in self.placement.held_by(
                machine_id
            ):
                return f"cluster {msg.cluster_id} of plan {msg.plan_version} is not this machine's"
            return None
        if msg.step == "retired":
            past = self.handing_over
            if (
                past is None
                or msg.plan_version != past.from_plan
                or past.holders.get(msg.cluster_id) != machine_id
            ):
                return f"cluster {msg.cluster_id} of plan {msg.plan_version} was not this machine's"
            return None
        return f"machines send only 'ready' and 'retired' steps, not {msg.step!r}"

    # ------------------------------------------------------------------ placement

    def claim(self, machine_id: str, hosting: Hosting) -> Claim:
        """A re-registering machine says what it runs: does it keep it, and if not, why."""
        plan = self.plan
        if hosting.plan_version != plan.version or hosting.total_shards != plan.total_shards:
            notice = f"runs plan {hosting.plan_version}, the bridge's plan is {plan.version}: stale"
            log.warning("machine %r %s", machine_id, notice)
            return Claim(notice, refused=False)  # another plan: an assignment follows
        problem = self.placement.claim(machine_id, hosting.cluster_list)
        unclaimed = self.unclaimed.get(machine_id)
        if problem is None and unclaimed is not None and set(unclaimed.clusters) <= set(hosting.cluster_list):
            del self.unclaimed[machine_id]
        if problem is not None:
            log.warning(
                "machine %r claims clusters %s: refused, %s; it must stop them",
                machine_id,
                list(hosting.cluster_list),
                problem,
            )
            return Claim(f"claim refused: {problem}; stop those clusters", refused=True)
        log.info("machine %r re-registered running clusters %s", machine_id, list(hosting.cluster_list))
        return Claim(None, refused=False)

    def grant(self, peer: Peer, *, max_clusters: int | None, now: float) -> ShardData:
        """A machine asks for its share (ShardDataRequest); raises ConfigurationError on bad options."""
        if peer.stalled is not None:
            clusters: tuple[int, ...] = ()  # it was handed a chunk and never started it
        else:
            had = self.placement.held_by(peer.info.id)
            clusters = self.placement.assign(peer.info.id, max_clusters=max_clusters, fenced=self.fenced)
            if clusters and not had:
                self.unclaimed[peer.info.id] = Unclaimed(clusters, now)
        peer.clusters, peer.standby = clusters, not clusters and peer.stalled is None
        peer.plan_version = self.plan.version if clusters else None
        data = dataclasses.replace(self.placement.shard_data(clusters), identify=self.identify)
        if clusters:
            log.info(
                "machine %r runs clusters %s (shards %s)",
                peer.info.id,
                list(clusters),
                [list(s) for s in data.shard_list],
            )
        else:
            log.info("machine %r is a standby: every chunk of the plan is held", peer.info.id)
        return data

    def assign(self, peer: Peer, reason: str, *, now: float | None = None) -> Assignment | None:
        """Give ``peer`` a share of the plan: the Assignment to push, or None (it waits as a standby).

        With ``now``, the machine runs nothing yet: the chunk waits for its claim (see
        :meth:`expire_claims`).
        """
        clusters = self.placement.assign(peer.info.id, fenced=self.fenced)
        peer.clusters, peer.standby = clusters, not clusters
        if clusters and now is not None:
            self.unclaimed[peer.info.id] = Unclaimed(clusters, now)
        if not clusters:
            log.info(
                "machine %r waits as a standby: every chunk of plan %s is held",
                peer.info.id,
                self.plan.version,
            )
            return None
        data = self.placement.shard_data(clusters)
        log.info(
            "machine %r is assigned clusters %s of plan %s: %s",
            peer.info.id,
            list(clusters),
            data.plan_version,
            reason,
        )
        return Assignment(
            total_shards=data.total_shards,
            shard_list=data.shard_list,
            cluster_list=data.cluster_list,
            total_clusters=data.total_clusters,
            plan_version=data.plan_version,
            reason=reason,
            identify=self.identify.to_json(),
        )

    def release(self, peer: Peer) -> tuple[int, ...]:
        """``peer`` is gone or draining: its clusters wait for it (or a standby)."""
        self.unclaimed.pop(peer.info.id, None)
        return self.placement.release(peer.info.id) if self._placement is not None else ()

    def expire_claims(self, now: float, timeout: float) -> list[tuple[str, Unclaimed]]:
        """Take back every chunk unclaimed for ``timeout`` seconds; its machine gets no other.

        Returns the machines and what they did not start; :meth:`hand_over` then gives those
        chunks to the next standbys.
        """
        overdue = [(mid, u) for mid, u in self.unclaimed.items() if now - u.since >= timeout]
        for machine_id, unclaimed in overdue:
            del self.unclaimed[machine_id]
            self.placement.release(machine_id)
            peer = self.registry.by_id(machine_id)
            if peer is not None:
                peer.clusters, peer.standby = (), False
                peer.stalled = (
                    f"was handed clusters {list(unclaimed.clusters)} and did not start them within "
                    f"claim_timeout={timeout:g} s; it gets no chunk until it reconnects"
                )
        return overdue

    def hand_over(self, reason: str, *, now: float) -> list[tuple[Peer, Assignment]]:
        """Give released chunks to waiting standbys, oldest first (failover): the messages to send."""
        pushes = []
        for peer in self.registry:
            if peer.standby and not peer.leaving:
                assignment = self.assign(peer, reason, now=now)
                if assignment is None:
                    break
                pushes.append((peer, assignment))
        return pushes

    def running(self) -> dict[int, str]:
        """Each cluster a connected machine that is not draining runs, and that machine's id."""
        return {cid: p.info.id for p in self.registry if not p.leaving for cid in p.clusters}

    def placement_holder(self, cluster_id: int) -> str | None:
        """The id of the connected machine running ``cluster_id``, if any."""
        peer = self.holder(cluster_id) if self._placement is not None else None
        return peer.info.id if peer is not None else None

    def holder(self, cluster_id: int) -> Peer | None:
        """The connected peer running ``cluster_id``, if any."""
        machine_id = self.placement.holder_of(cluster_id)
        return self.registry.by_id(machine_id) if machine_id is not None else None

    # ------------------------------------------------------------------ status

    def asked_for_status(self) -> list[Peer]:
        """The peers that run (or ran, or drain) clusters: the ones whose clusters status lists."""
        return [p for p in self.registry if p.clusters or p.leaving or p.plan_version is not None]

    def status(self, answers: dict[str, Any], *, taken_at: float) -> FleetStatus:
        """The fleet status from each asked machine's answer (its clusters, or the exception it ended with)."""
        plan = self.plan
        machines = []
        for peer in self.registry:
            answer = answers.get(peer.info.id, [])
            clusters: tuple[ClusterStatus, ...] = ()
            error = str(answer) if isinstance(answer, BaseException) else None
            if error is None:
                try:
                    if not isinstance(answer, list):
                        raise ValueError(f"expected a list of cluster records, not {type(answer).__name__}")
                    clusters = tuple(ClusterStatus.from_json(c) for c in answer)
                except ValueError as exc:
                    error = f"malformed status from this machine: {exc}"
                    log.warning("machine %r answered the status query with a %s", peer.info.id, error[:300])
            machines.append(
                MachineStatus(
                    id=peer.info.id,
                    agent=peer.info.agent,
                    address=peer.info.address,
                    connected_at=peer.info.connected_at,
                    plan_version=peer.plan_version,
                    stale=peer.plan_version is not None and peer.plan_version != plan.version,
                    standby=peer.standby,
                    leaving=peer.leaving,
                    clusters=clusters,
                    error=error,
                    stalled=peer.stalled,
                )
            )
        snapshot: dict[str, Any] = self.placement.snapshot()
        unassigned = sorted(
            [c for chunk in snapshot["free"] for c in chunk]
            + [c for chunk in snapshot["orphaned"].values() for c in chunk]
        )
        return FleetStatus(
            plan_version=plan.version,
            total_shards=plan.total_shards,
            total_clusters=plan.total_clusters,
            machines=tuple(machines),
            standbys=tuple(p.info.id for p in self.registry if p.standby),
            unassigned=tuple(unassigned),
            taken_at=taken_at,
        )
