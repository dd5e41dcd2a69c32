"""Registration: who may join, as whom, and what a returning machine keeps.

A registration is checked in order (protocol version, auth token, names, the registry's
admission, which pins a machine id to its CURVE key) and answered with a Welcome or the
error that says what is wrong. A machine that re-registers after a bridge restart claims
the clusters it runs (:meth:`FleetState.claim`), so the placement is rebuilt from what
really runs instead of being handed out afresh.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from .._clock import Clock
from .._events import EventEmitter
from ..errors import AuthenticationError, ProtocolError, ZmqcrossError
from ..protocol import (
    PROTOCOL_VERSION,
    ErrorInfo,
    ErrorReply,
    Goodbye,
    Register,
    Welcome,
)
from ..registry import ClientInfo, Peer, check_name
from ..security import tokens_match
from ._fleet import Claim, FleetState
from ._outgoing import BridgeCounters, Outgoing
from ._settings import CoreSettings, Origin

__all__ = ["BEACON_BURST", "Registrar"]

log = logging.getLogger("zmqcross.bridge")

BEACON_BURST = (0.0, 0.02, 0.1, 0.3)
"""Seconds after a registration at which extra beacons go out, for the newcomer's SUB."""


class Registrar:
    """Admits registrations into the fleet's registry; ``drop`` removes a replaced peer."""

    def __init__(
        self,
        *,
        fleet: FleetState,
        outgoing: Outgoing,
        clock: Clock,
        events: EventEmitter,
        counters: BridgeCounters,
        settings: CoreSettings,
        drop: Callable[[Peer, str], None],
        beacon: Callable[[], None],
    ) -> None:
        self._fleet = fleet
        self._outgoing = outgoing
        self._clock = clock
        self._events = events
        self._counters = counters
        self._settings = settings
        self._drop = drop
        self._beacon = beacon

    def register(self, route: bytes, origin: Origin, msg: Register) -> None:
        """A registration from a connection the registry does not know yet."""
        self._register(route, msg, address=origin.address(), user_id=origin.user_id(), current=None)

    def reregister(self, peer: Peer, msg: Register) -> None:
        """A registration again on a known connection (after a lost bridge, or a refresh)."""
        self._register(peer.routing_id, msg, address=peer.info.address, user_id=peer.user_id, current=peer)

    def _register(
        self, route: bytes, msg: Register, *, address: str | None, user_id: str | None, current: Peer | None
    ) -> None:
        settings, clock = self._settings, self._clock
        if msg.deadline < clock.time():
            log.debug("ignored an expired registration from %r", msg.machine_id)
            return

        def refuse(error: ZmqcrossError) -> None:
            self._counters.refused_registrations += 1
            log.warning(
                "refused registration of %r (agent %r) from %s: %s",
                msg.machine_id,
                msg.agent,
                address,
                error.message,
            )
            self._outgoing.send(
                route,
                ErrorReply(reply_to=msg.id, error=ErrorInfo.from_exception(error, with_traceback=False)),
            )

        if msg.protocol != PROTOCOL_VERSION:
            return refuse(
                ProtocolError(f"client speaks protocol {msg.protocol}; this bridge speaks {PROTOCOL_VERSION}")
            )
        if not tokens_match(settings.auth_token, msg.token):
            return refuse(AuthenticationError("wrong auth token: it does not match the bridge's auth_token"))
        for what, value in (("machine_id", msg.machine_id), ("agent", msg.agent)):
            problem = check_name(what, value)
            if problem:
                return refuse(ProtocolError(problem))
        if current is not None and (msg.machine_id, msg.agent) != (current.info.id, current.info.agent):
            # Who a connection is was settled when it registered; changing it here would
            # strand the clusters the old id holds, or shop for another agent's rights.
            return refuse(
                AuthenticationError(
                    f"this connection registered as machine {current.info.id!r} (agent {current.info.agent!r}); "
                    f"a connection cannot change its machine id or agent to {msg.machine_id!r} "
                    f"(agent {msg.agent!r}): connect anew"
                )
            )
        key_name = None
        if settings.key_name is not None:
            key_name = settings.key_name(user_id) if user_id else None
            if key_name is None:
                return refuse(
                    AuthenticationError(
                        "this connection's CURVE key is not in the allow-list (it was removed): "
                        "connect with an allowed key"
                    )
                )
        fleet = self._fleet
        admission = fleet.registry.admit(routing_id=route, client_id=msg.machine_id, user_id=user_id)
        if not admission.accepted:
            return refuse(AuthenticationError(admission.reason or "refused"))
        if admission.replaces is not None:
            old = admission.replaces
            if settings.key_name is None and self._outgoing.reachable(old.routing_id):
                # Without CURVE a token is all a newcomer shows, so it cannot push a live
                # machine out (the real one would be told to stop for good). A restarted
                # process finds its predecessor's connection gone and is let in.
                return refuse(
                    AuthenticationError(
                        f"machine id {msg.machine_id!r} is in use by a live connection from {old.info.address}; "
                        "two processes cannot share a machine id (if the old one has just died, try again)"
                    )
                )
            reason = f"replaced by a new connection for machine id {msg.machine_id!r} from {address}"
            self._outgoing.send(
                old.routing_id, Goodbye(reason=reason + "; give each process its own machine_id", retry=False)
            )
            self._drop(old, reason)
        permissions = settings.policy.permissions(agent=msg.agent, key=key_name)
        info = ClientInfo(
            id=msg.machine_id,
            agent=msg.agent,
            initial_data=msg.initial_data,
            address=address,
            key=key_name,
            connected_at=current.info.connected_at if current is not None else clock.time(),
            permissions=permissions,
        )
        hosts = "host" in permissions
        claim = Claim(None, refused=False)
        if msg.hosting is not None:
            if hosts:
                claim = fleet.claim(msg.machine_id, msg.hosting)
            elif msg.hosting.cluster_list:
                claim = Claim(
                    f"claim refused: client {msg.machine_id!r} (key {key_name!r}) may not host clusters; "
                    "give its key the 'host' permission",
                    refused=True,
                )
                log.warning("%s", claim.notice)
        peer = Peer(route, info, user_id, clock.monotonic(), fleet.placement.held_by(msg.machine_id))
        peer.lease_from = clock.monotonic()
        fleet.fenced.discard(msg.machine_id)  # back: its clusters live under the lease granted now
        if msg.hosting is not None and hosts:
            peer.plan_version = msg.hosting.plan_version
        if current is not None:
            peer.standby, peer.leaving, peer.stalled = current.standby, current.leaving, current.stalled
        if peer.clusters and not claim.refused:
            peer.stalled = None  # it runs a chunk after all
        fleet.registry.add(peer)
        self._outgoing.send(
            route,
            Welcome(
                reply_to=msg.id,
                client_id=info.id,
                epoch=settings.epoch,
                heartbeat_interval=settings.heartbeat_interval,
                heartbeat_timeout=settings.heartbeat_timeout,
                permissions=tuple(sorted(info.permissions)),
                plan_version=fleet.plan.version,
                notice=claim.notice,
                refused_claim=claim.refused,
                lease=settings.lease,
            ),
        )
        # A new subscriber misses what PUB sends before its subscription arrives (slow
        # joiner); a short burst of beacons lets it see one without waiting an interval.
        for delay in BEACON_BURST:
            clock.call_later(delay, self._beacon)
        if current is None:
            log.info("client %r (agent %r) connected from %s", info.id, info.agent, address)
            self._events.emit("connect", info, msg.initial_data)
        if (
            hosts
            and msg.hosting is not None
            and msg.hosting.plan_version != fleet.plan.version
            and not peer.clusters
        ):
            # It runs another plan (the bridge came back with new options): give it a share
            # of this plan. With rolling restarts it switches over; without, it stays stale.
            assignment = fleet.assign(peer, "the bridge's shard plan changed")
            if assignment is not None:
                self._outgoing.send(route, assignment)
