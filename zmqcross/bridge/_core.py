"""The bridge's socket-free core: decoded messages and a clock in, sends out.

Every message from the ROUTER arrives here as (routing id, origin, frames). It is
decoded (a batch opened, one level deep) and counted, then checked before anything
runs: a malformed one is answered with the ProtocolError that says what is wrong, a
stranger's goes to registration, one whose CURVE key is not the key its routing id
registered with is dropped, and the rest go to their handler in :attr:`BridgeCore.dispatch`.
Answers find their open request, or their eval fan-out.

The core owns no socket, task or timer of its own: the shell (:mod:`._shell`) calls
:meth:`BridgeCore.receive`, :meth:`BridgeCore.tick` and :meth:`BridgeCore.unreachable`,
and the core sends through the :class:`._outgoing.Outgoing` it was given. Tests drive it
with a list for an outbox and a hand-wound clock.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from .._clock import Clock
from .._events import EventEmitter
from .._fanout import FanOuts
from .._relaying import ReplySlots, full_reply, reply_slots
from .._requests import OpenRequests
from ..errors import ConfigurationError, ConnectionLost, MessageTooLarge, ProtocolError
from ..messages import IncomingMessage
from ..protocol import (
    Batch,
    Beacon,
    ErrorInfo,
    ErrorReply,
    EvalReply,
    EvalRequest,
    Goodbye,
    GuildRequest,
    Handover,
    Leaving,
    Message,
    Ping,
    Pong,
    Register,
    Reply,
    Request,
    Reregister,
    Send,
    ShardDataRequest,
    decode_header,
    dump,
    read_header,
)
from ..registry import Peer
from ._fleet import FleetState
from ._observers import Gate, Observers
from ._outgoing import BridgeCounters, Outgoing
from ._registration import Registrar
from ._routing import Router
from ._settings import CoreSettings, Origin
from ._window import MAX_UNREAD_BYTES, SendWindow

__all__ = ["PROBE_DELAYS", "BridgeCore"]

log = logging.getLogger("zmqcross.bridge")

PROBE_DELAYS = (0.05, 0.3)
"""Seconds after a connection drops at which the bridge probes its peers to find which one left."""


class BridgeCore:
    """Registration, routing, placement and liveness of one bridge run, without I/O."""

    def __init__(
        self,
        *,
        fleet: FleetState,
        outgoing: Outgoing,
        clock: Clock,
        events: EventEmitter,
        settings: CoreSettings,
        counters: BridgeCounters | None = None,
        window: SendWindow | None = None,
    ) -> None:
        self.fleet = fleet
        self.counters = counters if counters is not None else BridgeCounters()
        self.window = window if window is not None else SendWindow()
        self.open = OpenRequests(clock)
        self.fanouts = FanOuts()
        self.observers = Observers()
        self._outgoing = outgoing
        self._clock = clock
        self._events = events
        self._settings = settings
        self._beacon_seq = 0
        self._probing = False
        gate = Gate(outgoing, self.observers)
        self._gate = gate
        self.router = Router(
            fleet=fleet,
            outgoing=outgoing,
            clock=clock,
            open_requests=self.open,
            fanouts=self.fanouts,
            gate=gate,
            observers=self.observers,
            events=events,
            limits=settings.limits,
        )
        self.registrar = Registrar(
            fleet=fleet,
            outgoing=outgoing,
            clock=clock,
            events=events,
            counters=self.counters,
            settings=settings,
            drop=self.drop,
            beacon=self.publish_beacon,
        )
        self.dispatch: dict[type, Callable[[Peer, Any], None]] = {
            Ping: self._on_ping,
            Pong: self._on_pong,
            Request: self.router.on_request,
            Send: self._on_send,
            ShardDataRequest: self._on_shard_data,
            Reply: self._on_answer,
            ErrorReply: self._on_answer,
            Goodbye: self._on_goodbye,
            Register: self.registrar.reregister,
            EvalRequest: self.router.on_eval,
            EvalReply: self._on_answer,
            ReplySlots: self._on_answer,
            GuildRequest: self.router.on_guild_request,
            Leaving: self._on_leaving,
            Handover: self._on_handover,
        }

    # ------------------------------------------------------------------ receiving

    def receive(self, route: bytes, origin: Origin, body: list[bytes], *, nested: bool = False) -> None:
        """One message from ``route`` (its frames after the routing id)."""
        msg: Message | ReplySlots
        try:
            header = read_header(body, self._settings.limits)
            if header.get("type") == "eval_reply":  # the hot answer: read from its header, as machines do
                msg = reply_slots(header, body)
            else:
                msg = decode_header(header, body)
            if type(msg) is Batch:
                if nested:
                    raise ProtocolError("a batch inside a batch")
                for inner in msg.messages():
                    self.receive(route, origin, inner, nested=True)
                return
        except ProtocolError as exc:
            self._malformed(route, origin, exc)
            return
        self.counters.messages_in += 1
        peer = self.fleet.registry.get(route)
        if peer is None:
            self._from_stranger(route, origin, msg)
            return
        if self._settings.curve and origin.user_id() != peer.user_id:
            # Any allow-listed key can claim any routing id; the registration pinned this one to a key.
            log.warning(
                "dropped a message claiming client %r's routing id from another CURVE key", peer.info.id
            )
            return
        peer.last_seen = self._clock.monotonic()
        handler = self.dispatch.get(type(msg))
        if handler is None:
            error = ProtocolError(f"the bridge does not accept {getattr(msg, 'type', '?')!r} messages")
            self._outgoing.send(
                route,
                ErrorReply(
                    reply_to=getattr(msg, "id", None),
                    error=ErrorInfo.from_exception(error, with_traceback=False),
                ),
            )
            return
        handler(peer, msg)

    def _malformed(self, route: bytes, origin: Origin, exc: ProtocolError) -> None:
        self.counters.messages_in += 1
        self.counters.protocol_errors += 1
        peer = self.fleet.registry.get(route)
        who = repr(peer.info.id) if peer else f"an unregistered peer at {origin.address()}"
        log.warning("bad message from %s: %s", who, exc.message)
        self._outgoing.send(
            route,
            ErrorReply(reply_to=exc.request_id, error=ErrorInfo.from_exception(exc, with_traceback=False)),
        )

    def oversized(self, route: bytes, origin: Origin, reason: str) -> None:
        """``route`` sent a message over a limit; the shell read it to its end without keeping it.

        While it did, the ROUTER handed out nothing else, so nobody could be heard: every
        peer's silence starts again now rather than counting the time spent discarding.
        """
        self._malformed(route, origin, MessageTooLarge(reason))
        now = self._clock.monotonic()
        for peer in self.fleet.registry:
            peer.last_seen = max(peer.last_seen, now)

    def _from_stranger(self, route: bytes, origin: Origin, msg: Message | ReplySlots) -> None:
        if isinstance(msg, Register):
            self.registrar.register(route, origin, msg)
        elif isinstance(msg, (Reply, ErrorReply, Pong, Goodbye)):
            log.debug("ignored a %r from an unregistered peer", msg.type)
        else:
            # Typically a client of the previous bridge run: nothing it sent was run here.
            self._outgoing.send(
                route,
                Reregister(
                    reason="this bridge does not know you (it restarted?); register again",
                    reply_to=getattr(msg, "id", None),
                ),
            )

    def _on_ping(self, peer: Peer, msg: Ping) -> None:
        # Each answered heartbeat renews the machine's lease: ``lease`` seconds from when it sent it.
        peer.lease_from = self._clock.monotonic()
        self._outgoing.send(
            peer.routing_id, Pong(sent_at=msg.sent_at, mono=msg.mono, lease=self._settings.lease)
        )

    def _on_pong(self, peer: Peer, msg: Pong) -> None:
        # The answer to a read probe (see ._window): everything sent before it was read.
        nonce = self.window.proven(peer.routing_id, msg.sent_at)
        if nonce is not None:
            self._outgoing.probe(peer.routing_id, nonce)

    def _on_goodbye(self, peer: Peer, msg: Goodbye) -> None:
        self.drop(peer, f"left: {msg.reason}", said_goodbye=True)

    def _on_send(self, peer: Peer, msg: Send) -> None:
        if self._gate.allowed(peer, "request", None):
            self._events.emit("client_message", IncomingMessage(msg.data, client=peer.info), peer.info)

    def _on_handover(self, peer: Peer, msg: Handover) -> None:
        # A machine's cluster is ready, or retired, in a reshard: the other machines' held
        # clusters wait for it. Only what the sender really runs (or ran) is passed on.
        if not self._gate.allowed(peer, "host", None):
            return
        problem = self.fleet.check_notice(peer.info.id, msg) if self.fleet.started else "no plan yet"
        if problem is not None:
            log.warning("dropped a handover notice from machine %r: %s", peer.info.id, problem)
            return
        others = [
            other
            for other in self.fleet.registry
            if other is not peer and (other.clusters or other.standby or other.plan_version is not None)
        ]
        log.info(
            "handover: cluster %d of plan %s is %s on machine %r; told %s",
            msg.cluster_id,
            msg.plan_version,
            msg.step,
            peer.info.id,
            [other.info.id for other in others],
        )
        for other in others:
            self._outgoing.send(other.routing_id, msg)

    def _on_answer(self, peer: Peer, msg: Reply | ErrorReply | EvalReply | ReplySlots) -> None:
        entry = self.open.get(msg.reply_to) if msg.reply_to is not None else None
        if (
            entry is None
            and msg.reply_to is not None
            and self.fanouts.absorb(msg.reply_to, peer.routing_id, msg)
        ):
            return
        if entry is None or entry.peer != peer.routing_id:
            if isinstance(msg, ErrorReply) and msg.reply_to is None:
                log.warning(
                    "client %r reports a bad message from the bridge: %s", peer.info.id, msg.error.message
                )
            else:
                log.debug("ignored a late or unknown answer from %r", peer.info.id)
            return
        self.open.finish(msg.reply_to, full_reply(msg) if isinstance(msg, ReplySlots) else msg)

    # ------------------------------------------------------------------ the fleet

    def _on_shard_data(self, peer: Peer, msg: ShardDataRequest) -> None:
        if not self._gate.allowed(peer, "host", msg.id):
            return
        try:
            data = self.fleet.grant(peer, max_clusters=msg.max_clusters, now=self._clock.monotonic())
        except ConfigurationError as exc:
            self._outgoing.send(
                peer.routing_id,
                ErrorReply(reply_to=msg.id, error=ErrorInfo.from_exception(exc, with_traceback=False)),
            )
            return
        self._outgoing.send(peer.routing_id, Reply(reply_to=msg.id, data=dump(data.to_json())))

    def _on_leaving(self, peer: Peer, msg: Leaving) -> None:
        # Draining: hand its clusters over now, but keep it registered so the answers to
        # work already sent to it still arrive. Its Goodbye (or silence) removes it.
        peer.leaving = True
        released = self.fleet.release(peer)
        peer.clusters = ()
        log.info(
            "machine %r is draining (%s); handing over clusters %s", peer.info.id, msg.reason, list(released)
        )
        if released:
            self.hand_over(f"machine {peer.info.id!r} is draining")

    def hand_over(self, reason: str) -> None:
        """Give released chunks to waiting standbys and tell them."""
        for standby, assignment in self.fleet.hand_over(reason, now=self._clock.monotonic()):
            self._outgoing.send(standby.routing_id, assignment)

    def reshard(self, total_shards: int | None, **options: Any) -> Any:
        """Switch to a plan with these options; the new plan (unchanged if nothing differs)."""
        plan, resolved = self.fleet.build(total_shards, **options)
        if plan.version == self.fleet.plan.version:
            return plan
        for peer, assignment in self.fleet.reshard(plan, resolved, now=self._clock.monotonic()):
            self._outgoing.send(peer.routing_id, assignment)
        self.publish_beacon()
        return plan

    # ------------------------------------------------------------------ liveness

    def drop(self, peer: Peer, reason: str, *, said_goodbye: bool = False) -> None:
        """Forget ``peer``: its open requests and fan-out slots fail, its clusters go to a standby.

        Without a goodbye its clusters may still run (a cut link, a frozen agent): they go to
        a standby only once its lease has surely run out, when they have stopped themselves.
        """
        if self.fleet.registry.remove(peer.routing_id) is None:
            return
        released = self.fleet.release(peer)
        self.window.forget(peer.routing_id)
        lost = ConnectionLost(f"client {peer.info.id!r} went away: {reason}")
        self.open.fail_peer(peer.routing_id, lost)
        self.fanouts.fail_route(peer.routing_id, lost)
        log.info("client %r disconnected: %s", peer.info.id, reason)
        self._events.emit("disconnect", peer.info, reason)
        if not released:
            return
        why = f"machine {peer.info.id!r} was lost ({reason})"
        settings = self._settings
        fence = peer.lease_from + settings.lease + settings.lease_margin - self._clock.monotonic()
        if said_goodbye or fence <= 0:
            self.hand_over(why)
            return
        machine_id = peer.info.id
        self.fleet.fenced.add(machine_id)
        log.info(
            "clusters %s wait %.1f s, until machine %r's lease has surely run out, before a standby takes them",
            list(released),
            fence,
            machine_id,
        )
        self._clock.call_later(fence, self._unfence, machine_id, why)

    def _unfence(self, machine_id: str, why: str) -> None:
        self.fleet.fenced.discard(machine_id)
        self.hand_over(f"{why}; its lease has run out")

    def unreachable(self, route: bytes) -> None:
        """A send to ``route`` failed because its connection is gone (ROUTER_MANDATORY)."""
        peer = self.fleet.registry.get(route)
        if peer is not None:
            self.drop(peer, "its connection is gone (send failed: host unreachable)")

    def tick(self, *, hearing: bool = True) -> None:
        """One heartbeat interval passed: drop the silent, publish a beacon.

        ``hearing`` is False while the shell is reading an over-limit message to its end
        (the ROUTER gives out nothing else meanwhile): no one is dropped for silence then.
        """
        now = self._clock.monotonic()
        timeout = self._settings.heartbeat_timeout
        registry = self.fleet.registry
        for peer in registry.silent(now, timeout) if hearing else ():
            self.drop(peer, f"silent for {now - peer.last_seen:.1f} s (heartbeat_timeout is {timeout:g} s)")
        for route in self.window.stuck(now, timeout):
            stuck = registry.get(route)
            if stuck is None:
                self.window.forget(route)
                continue
            self.drop(
                stuck,
                f"it does not read what it is sent: {self.window.unread(route)} bytes unread for over "
                f"{timeout:g} s (MAX_UNREAD_BYTES is {MAX_UNREAD_BYTES})",
            )
        self._expire_claims(now)
        self.publish_beacon()

    def _expire_claims(self, now: float) -> None:
        # A machine handed a chunk says it runs it (its claim) once it has started the
        # clusters; one that never does (a bare ClusterManager that ignores assignments, a
        # hung agent) must not keep those shards offline: they go to the next standby.
        if not self.fleet.unclaimed or not self.fleet.started:
            return
        timeout = self._settings.claim_timeout
        overdue = self.fleet.expire_claims(now, timeout)
        for machine_id, unclaimed in overdue:
            log.error(
                "machine %r did not start clusters %s within claim_timeout=%g s (a machine must run "
                "what it is handed: use zmqcross.Machine, or start a ClusterManager on each 'assignment' "
                "event and call client.listen(manager)); they go to the next standby",
                machine_id,
                list(unclaimed.clusters),
                timeout,
            )
            self._events.emit("assignment_unclaimed", machine_id, unclaimed.clusters)
        if overdue:
            self.hand_over("a machine did not start the clusters it was handed")

    def connection_closed(self) -> None:
        """Some peer's TCP connection closed: find out which, in milliseconds, not a heartbeat timeout."""
        # A send to a routing id whose pipe is gone fails at once with ROUTER_MANDATORY; libzmq
        # retires the pipe shortly after the event, hence a probe now and one a little later.
        # Closes that come while a round is pending join it: a flood of refused handshakes
        # costs at most one round per PROBE_DELAYS[-1] seconds, not one per close.
        if self._probing:
            return
        self._probing = True
        for delay in PROBE_DELAYS:
            self._clock.call_later(delay, self._probe_round, delay == PROBE_DELAYS[-1])

    def _probe_round(self, last: bool) -> None:
        if last:
            self._probing = False
        self.probe_peers()

    def recheck_keys(self) -> None:
        """The allow-list may have changed: end the sessions of keys no longer in it.

        A revoked key's machine ids are released too, so a new key can take them over.
        """
        key_name = self._settings.key_name
        if key_name is None:
            return
        registry = self.fleet.registry
        for user_id in registry.bound_keys():
            if key_name(user_id) is None:
                registry.unbind_key(user_id)
        for peer in registry:
            if peer.user_id is not None and key_name(peer.user_id) is None:
                reason = f"CURVE key {peer.info.key!r} was removed from the allow-list"
                self._outgoing.send(peer.routing_id, Goodbye(reason=f"this client's {reason}", retry=False))
                self.drop(peer, reason)

    def probe_peers(self) -> None:
        """Send every peer a beacon over the ROUTER (a lost one fails the send)."""
        probe = self.beacon()
        for peer in self.fleet.registry:
            self._outgoing.send(peer.routing_id, probe)

    @property
    def epoch(self) -> str:
        """This bridge run's random id."""
        return self._settings.epoch

    def beacon(self) -> Beacon:
        """The current beacon: this run's epoch, the last sequence number, the plan."""
        return Beacon(epoch=self._settings.epoch, seq=self._beacon_seq, plan_version=self.fleet.plan_version)

    def publish_beacon(self) -> None:
        """Publish the next beacon to every subscriber."""
        self._beacon_seq += 1
        self._outgoing.publish(self.beacon())

    def close(self, reason: str) -> None:
        """Say goodbye to every peer (they re-register with the next run) and end what is open."""
        registry = self.fleet.registry
        for peer in registry:
            self._outgoing.send(peer.routing_id, Goodbye(reason=reason, retry=True))
        lost = ConnectionLost("the bridge was closed")
        self.open.fail_all(lost)
        self.fanouts.fail_all(lost)
        for peer in registry:
            registry.remove(peer.routing_id)
