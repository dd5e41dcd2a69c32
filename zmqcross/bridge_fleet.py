"""The bridge's fleet work: registration, which machine runs which clusters, standbys,
drains, reshards and the fleet's status.

Mixed into :class:`zmqcross.Bridge`; the socket loop stays in :mod:`zmqcross.bridge`, the
decisions in :mod:`zmqcross.planning` (placement) and :mod:`zmqcross.registry`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Any

import zmq

from .bridge_parts import BridgeParts
from .errors import AuthenticationError, ConfigurationError, ProtocolError, ZmqcrossError
from .messages import IncomingRequest
from .planning import Placement, ShardPlan, build_plan
from .protocol import (
    PROTOCOL_VERSION,
    STATUS_SERVICE,
    Assignment,
    Beacon,
    ErrorInfo,
    ErrorReply,
    Goodbye,
    Hosting,
    Leaving,
    Message,
    Pong,
    Register,
    Reply,
    Reregister,
    ShardDataRequest,
    Welcome,
    dump,
)
from .registry import ClientInfo, Peer, check_name
from .security import tokens_match
from .status import ClusterStatus, FleetStatus, MachineStatus

__all__ = ["BEACON_BURST", "FleetOps"]

log = logging.getLogger("zmqcross.bridge")

BEACON_BURST = (0.0, 0.02, 0.1, 0.3)
"""Seconds after a registration at which extra beacons go out, for the newcomer's SUB."""


def _peer_address(frame: zmq.Frame) -> str | None:
    try:
        return str(frame.get("Peer-Address"))
    except zmq.ZMQError:
        return None


def _user_id(frame: zmq.Frame) -> str:
    """The CURVE key (z85) that ZAP admitted for the connection ``frame`` came on."""
    return str(frame.get("User-Id"))


class FleetOps(BridgeParts):
    """Registration, placement of clusters on machines, failover, reshards and status."""

    def _from_stranger(self, routing_id: bytes, frame: zmq.Frame, msg: Message) -> None:
        if isinstance(msg, Register):
            self._register(routing_id, frame, msg)
        elif isinstance(msg, (Reply, ErrorReply, Pong, Goodbye)):
            log.debug("ignored a %r from an unregistered peer", msg.type)
        else:
            # Typically a client of the previous bridge run: nothing it sent was run here.
            self._send(
                routing_id,
                Reregister(
                    reason="this bridge does not know you (it restarted?); register again",
                    reply_to=getattr(msg, "id", None),
                ),
            )

    def _on_reregister(self, peer: Peer, msg: Register) -> None:
        self._register(peer.routing_id, None, msg, current=peer)

    def _register(
        self, routing_id: bytes, frame: zmq.Frame | None, msg: Register, current: Peer | None = None
    ) -> None:
        if msg.deadline < time.time():
            log.debug("ignored an expired registration from %r", msg.machine_id)
            return
        address = current.info.address if current is not None else (_peer_address(frame) if frame else None)
        user_id = (
            current.user_id if current is not None else (_user_id(frame) if self._curve and frame else None)
        )

        def refuse(error: ZmqcrossError) -> None:
            self._counters["refused"] += 1
            log.warning(
                "refused registration of %r (agent %r) from %s: %s",
                msg.machine_id,
                msg.agent,
                address,
                error.message,
            )
            self._send(
                routing_id,
                ErrorReply(reply_to=msg.id, error=ErrorInfo.from_exception(error, with_traceback=False)),
            )

        if msg.protocol != PROTOCOL_VERSION:
            return refuse(
                ProtocolError(f"client speaks protocol {msg.protocol}; this bridge speaks {PROTOCOL_VERSION}")
            )
        if not tokens_match(self._auth_token, msg.token):
            return refuse(AuthenticationError("wrong auth token: it does not match the bridge's auth_token"))
        for what, value in (("machine_id", msg.machine_id), ("agent", msg.agent)):
            problem = check_name(what, value)
            if problem:
                return refuse(ProtocolError(problem))
        admission = self._registry.admit(routing_id=routing_id, client_id=msg.machine_id, user_id=user_id)
        if not admission.accepted:
            return refuse(AuthenticationError(admission.reason or "refused"))
        if admission.replaces is not None:
            old = admission.replaces
            reason = f"replaced by a new connection for machine id {msg.machine_id!r} from {address}"
            self._send(
                old.routing_id, Goodbye(reason=reason + "; give each process its own machine_id", retry=False)
            )
            self._drop(old, reason)
        key_name = self._curve.allowed.get(user_id.encode()) if self._curve is not None and user_id else None
        refresh = current is not None and current.info.id == msg.machine_id
        info = ClientInfo(
            id=msg.machine_id,
            agent=msg.agent,
            initial_data=msg.initial_data,
            address=address,
            key=key_name,
            connected_at=current.info.connected_at if refresh and current else time.time(),
            permissions=self._policy.permissions(agent=msg.agent, key=key_name),
        )
        notice = self._claim(msg.machine_id, msg.hosting) if msg.hosting is not None else None
        assert self._placement is not None
        peer = Peer(routing_id, info, user_id, time.monotonic(), self._placement.held_by(msg.machine_id))
        if msg.hosting is not None:
            peer.plan_version = msg.hosting.plan_version
        if refresh and current is not None:
            peer.standby, peer.leaving = current.standby, current.leaving
        self._registry.add(peer)
        self._send(
            routing_id,
            Welcome(
                reply_to=msg.id,
                client_id=info.id,
                epoch=self._epoch,
                heartbeat_interval=self._heartbeat_interval,
                heartbeat_timeout=self._heartbeat_timeout,
                permissions=tuple(sorted(info.permissions)),
                plan_version=self.plan.version,
                notice=notice,
            ),
        )
        # A new subscriber misses what PUB sends before its subscription arrives (slow
        # joiner); a short burst of beacons lets it see one without waiting an interval.
        loop = asyncio.get_running_loop()
        for delay in BEACON_BURST:
            loop.call_later(delay, self._publish_beacon)
        if not refresh:
            log.info("client %r (agent %r) connected from %s", info.id, info.agent, address)
            self._events.emit("connect", info, msg.initial_data)
        if msg.hosting is not None and msg.hosting.plan_version != self.plan.version and not peer.clusters:
            # It runs another plan (the bridge came back with new options): give it a share
            # of this plan. With rolling restarts it switches over; without, it stays stale.
            self._assign(peer, "the bridge's shard plan changed")

    def _claim(self, machine_id: str, hosting: Hosting) -> str | None:
        assert self._placement is not None
        if hosting.plan_version != self.plan.version or hosting.total_shards != self.plan.total_shards:
            notice = f"runs plan {hosting.plan_version}, the bridge's plan is {self.plan.version}: stale"
            log.warning("machine %r %s", machine_id, notice)
            return notice
        problem = self._placement.claim(machine_id, hosting.cluster_list)
        if problem is not None:
            log.warning(
                "machine %r claims clusters %s: refused, %s", machine_id, list(hosting.cluster_list), problem
            )
            return f"claim refused: {problem}"
        log.info("machine %r re-registered running clusters %s", machine_id, list(hosting.cluster_list))
        return None

    def _on_shard_data(self, peer: Peer, msg: ShardDataRequest) -> None:
        assert self._placement is not None
        try:
            clusters = self._placement.assign(peer.info.id, max_clusters=msg.max_clusters)
        except ConfigurationError as exc:
            self._send(
                peer.routing_id,
                ErrorReply(reply_to=msg.id, error=ErrorInfo.from_exception(exc, with_traceback=False)),
            )
            return
        peer.clusters, peer.standby = clusters, not clusters
        peer.plan_version = self.plan.version if clusters else None
        data = self._placement.shard_data(clusters)
        if clusters:
            log.info(
                "machine %r runs clusters %s (shards %s)",
                peer.info.id,
                list(clusters),
                [list(s) for s in data.shard_list],
            )
        else:
            log.info("machine %r is a standby: every chunk of the plan is held", peer.info.id)
        self._send(peer.routing_id, Reply(reply_to=msg.id, data=dump(data.to_json())))

    def _assign(self, peer: Peer, reason: str) -> tuple[int, ...]:
        """Give ``peer`` a share of the current plan and push it; returns its clusters."""
        assert self._placement is not None
        clusters = self._placement.assign(peer.info.id)
        peer.clusters, peer.standby = clusters, not clusters
        if not clusters:
            log.info(
                "machine %r waits as a standby: every chunk of plan %s is held",
                peer.info.id,
                self.plan.version,
            )
            return clusters
        data = self._placement.shard_data(clusters)
        log.info(
            "machine %r is assigned clusters %s of plan %s: %s",
            peer.info.id,
            list(clusters),
            data.plan_version,
            reason,
        )
        self._send(
            peer.routing_id,
            Assignment(
                total_shards=data.total_shards,
                shard_list=data.shard_list,
                cluster_list=data.cluster_list,
                total_clusters=data.total_clusters,
                plan_version=data.plan_version,
                reason=reason,
            ),
        )
        return clusters

    def _hand_over(self, reason: str) -> None:
        """Give released chunks to waiting standbys, oldest first (failover)."""
        for peer in self._registry:
            if peer.standby and not peer.leaving:
                if not self._assign(peer, reason):
                    break

    def _on_leaving(self, peer: Peer, msg: Leaving) -> None:
        # Draining: hand its clusters over now, but keep it registered so the answers to
        # work already sent to it still arrive. Its Goodbye (or silence) removes it.
        peer.leaving = True
        assert self._placement is not None
        released = self._placement.release(peer.info.id)
        peer.clusters = ()
        log.info(
            "machine %r is draining (%s); handing over clusters %s", peer.info.id, msg.reason, list(released)
        )
        if released:
            self._hand_over(f"machine {peer.info.id!r} is draining")

    async def reshard(
        self,
        *,
        total_shards: int | None = None,
        shards_per_cluster: int | None = None,
        total_machines: int | None = None,
        shard_list: Sequence[int] | None = None,
    ) -> ShardPlan:
        """Switch the fleet to a new shard plan while it runs.

        Every connected bot machine gets a share of the new plan at once. Machines with
        ``rolling_restarts=True`` replace their clusters one at a time, never all down;
        the others keep what they run and are reported stale by :meth:`status`.
        """
        self._require_running()
        options = dict(self._plan_options)
        for name, value in (
            ("shards_per_cluster", shards_per_cluster),
            ("total_machines", total_machines),
            ("shard_list", shard_list),
        ):
            if value is not None:
                options[name] = value
        plan = build_plan(total_shards if total_shards is not None else self.plan.total_shards, **options)
        if plan.version == self.plan.version:
            return plan
        old = self._placement
        assert old is not None
        machines = [p for p in self._registry if not p.leaving and (p.clusters or p.standby)]
        # Machines keep their place in the order of chunks (the one with cluster 0 first).
        machines.sort(key=lambda p: (not p.clusters, min(p.clusters, default=0)))
        self._plan, self._plan_options, self._placement = plan, options, Placement(plan)
        log.info(
            "resharding to plan %s: %d shards in %d clusters",
            plan.version,
            plan.total_shards,
            plan.total_clusters,
        )
        for peer in machines:
            self._assign(peer, f"reshard to {plan.total_shards} shards (plan {plan.version})")
        self._publish_beacon()
        return plan

    async def status(self, *, timeout: float = 2.0) -> FleetStatus:
        """A snapshot of the fleet: every client, the clusters each machine runs, standbys, free clusters.

        Machines are asked for their clusters' state in parallel; one that does not answer
        within ``timeout`` is listed with an ``error`` and no clusters.
        """
        self._require_running()
        assert self._placement is not None
        peers = list(self._registry)
        asked = [p for p in peers if p.clusters or p.leaving or p.plan_version is not None]
        answers = await asyncio.gather(
            *(self.request(None, client=p.info.id, timeout=timeout, service=STATUS_SERVICE) for p in asked),
            return_exceptions=True,
        )
        by_id = dict(zip([p.info.id for p in asked], answers, strict=True))
        machines = []
        for peer in peers:
            answer = by_id.get(peer.info.id, [])
            failed = isinstance(answer, BaseException)
            machines.append(
                MachineStatus(
                    id=peer.info.id,
                    agent=peer.info.agent,
                    address=peer.info.address,
                    connected_at=peer.info.connected_at,
                    plan_version=peer.plan_version,
                    stale=peer.plan_version is not None and peer.plan_version != self.plan.version,
                    standby=peer.standby,
                    leaving=peer.leaving,
                    clusters=() if failed else tuple(ClusterStatus.from_json(c) for c in answer),  # type: ignore[union-attr]
                    error=str(answer) if failed else None,
                )
            )
        snapshot: dict[str, Any] = self._placement.snapshot()
        unassigned = sorted(
            [c for chunk in snapshot["free"] for c in chunk]
            + [c for chunk in snapshot["orphaned"].values() for c in chunk]
        )
        return FleetStatus(
            plan_version=self.plan.version,
            total_shards=self.plan.total_shards,
            total_clusters=self.plan.total_clusters,
            machines=tuple(machines),
            standbys=tuple(p.info.id for p in peers if p.standby),
            unassigned=tuple(unassigned),
            taken_at=time.time(),
        )

    async def _serve_status(self, request: IncomingRequest, client: ClientInfo) -> Any:
        return (await self.status()).to_json()

    async def _serve_reshard(self, request: IncomingRequest, client: ClientInfo) -> Any:
        options = request.data if isinstance(request.data, dict) else {}
        allowed = {"total_shards", "shards_per_cluster", "total_machines", "shard_list"}
        unknown = sorted(set(options) - allowed)
        if unknown:
            raise ConfigurationError(f"reshard got unknown option(s) {unknown}; it takes {sorted(allowed)}")
        log.info("client %r asks for a reshard: %s", client.id, options)
        plan = await self.reshard(**options)
        return {
            "plan_version": plan.version,
            "total_shards": plan.total_shards,
            "total_clusters": plan.total_clusters,
        }

    def _probe_peers(self) -> None:
        # A peer's TCP connection closed (process killed, machine rebooted): a send to
        # a routing id whose pipe is gone fails at once with ROUTER_MANDATORY, so probing
        # everyone finds the lost peer in milliseconds instead of a heartbeat timeout.
        probe = Beacon(epoch=self._epoch, seq=self._beacon_seq, plan_version=self.plan.version)
        for peer in self._registry:
            self._send(peer.routing_id, probe)
