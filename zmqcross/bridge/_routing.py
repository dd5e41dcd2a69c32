"""Where each request goes: a bridge service or handler, another client, or the right clusters.

Socket-free: messages come in decoded, answers leave through :class:`._outgoing.Outgoing`,
deadlines run on the injected clock. What goes where is decided in :mod:`zmqcross._fanout`
and :mod:`zmqcross.planning`; this module applies it to the fleet's current state.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Protocol

from .._clock import Clock
from .._events import EventEmitter, Handler
from .._fanout import FanOut, FanOuts, Gather, hop_deadline, select_clusters
from .._requests import OpenRequests, Outcome
from ..errors import (
    ClientNotFound,
    ConfigurationError,
    ConnectionLost,
    ProtocolError,
    RequestTimeout,
    ZmqcrossError,
)
from ..messages import IncomingRequest, serve_request
from ..planning import shard_for_guild
from ..protocol import (
    ErrorInfo,
    ErrorReply,
    EvalRequest,
    GuildRequest,
    Limits,
    Message,
    Request,
    check_limits,
    encode_each,
    readdress,
)
from ..registry import ClientInfo, Peer
from ..security import ACTIONS
from ._fleet import FleetState
from ._observers import Gate, Observers
from ._outgoing import Outgoing
from ._settings import MAX_OPEN_PER_PEER, MAX_TIMEOUT

__all__ = ["ClientFilter", "Router", "Service", "ServiceHandler", "ServiceOwner"]

log = logging.getLogger("zmqcross.bridge")

ClientFilter = Callable[[ClientInfo], bool]
ServiceHandler = Callable[[IncomingRequest, ClientInfo], Any]


class ServiceOwner(Protocol):
    """What owns a service (a :class:`~zmqcross.CacheServer`): closed when its bridge closes."""

    async def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Service:
    """A named bridge service: its handler, the permission a caller needs, and its owner.

    The owner, when given, is closed by :meth:`zmqcross.Bridge.close` before the sockets
    go, so a clean bridge shutdown also ends (and saves) what serves through it.
    """

    handler: ServiceHandler
    action: str
    owner: ServiceOwner | None = None


class Budget:
    """How many requests each peer has open here; over :data:`MAX_OPEN_PER_PEER`, the next is refused."""

    __slots__ = ("_open", "_outgoing")

    def __init__(self, outgoing: Outgoing) -> None:
        self._open: dict[bytes, int] = {}
        self._outgoing = outgoing

    def take(
        self, peer: Peer, request_id: int, respond: Callable[[Message], object]
    ) -> Callable[[Message], object] | None:
        """``respond``, counting until it is called once; None (and the peer told why) when over budget."""
        route = peer.routing_id
        count = self._open.get(route, 0)
        if count >= MAX_OPEN_PER_PEER:
            error = ProtocolError(
                f"client {peer.info.id!r} has {count} open requests at the bridge, the most one peer may "
                f"have (MAX_OPEN_PER_PEER); wait for answers before sending more"
            )
            log.warning("%s", error.message)
            self._outgoing.send(route, readdress(error, request_id))
            return None
        self._open[route] = count + 1
        done = False

        def settle(msg: Message) -> object:
            nonlocal done
            if not done:
                done = True
                left = self._open.get(route, 1) - 1
                if left:
                    self._open[route] = left
                else:
                    self._open.pop(route, None)
            return respond(msg)

        return settle

    def open_for(self, route: bytes) -> int:
        """How many requests ``route`` has open."""
        return self._open.get(route, 0)


class Router:
    """Requests, evals and guild requests: checked, then answered here or sent on."""

    def __init__(
        self,
        *,
        fleet: FleetState,
        outgoing: Outgoing,
        clock: Clock,
        open_requests: OpenRequests,
        fanouts: FanOuts,
        gate: Gate,
        observers: Observers,
        events: EventEmitter,
        limits: Limits,
    ) -> None:
        self._fleet = fleet
        self._outgoing = outgoing
        self._clock = clock
        self._open = open_requests
        self._fanouts = fanouts
        self._gate = gate
        self._observers = observers
        self._events = events
        self._limits = limits
        self._services: dict[str, Service] = {}
        self._budget = Budget(outgoing)

    # ------------------------------------------------------------------ services

    @property
    def services(self) -> Mapping[str, Service]:
        """The services by name, read-only."""
        return MappingProxyType(self._services)

    def add_service(
        self, name: str, handler: ServiceHandler, *, action: str, owner: ServiceOwner | None = None
    ) -> None:
        """Answer requests addressed to service ``name`` with ``handler(request, client)``."""
        if name in self._services:
            raise ConfigurationError(f"the bridge already has a {name!r} service")
        if action not in ACTIONS:
            raise ConfigurationError(f"unknown action {action!r}; actions are {sorted(ACTIONS)}")
        self._services[name] = Service(handler, action, owner)

    # ------------------------------------------------------------------ evals

    def on_eval(self, peer: Peer, msg: EvalRequest) -> None:
        """A client's broadcast_eval: fanned out, the gathered answer sent back to it."""
        if not self._gate.allowed(peer, "eval", msg.id):
            return
        if msg.deadline < self._clock.time():
            log.debug("dropped eval %d from %r: its deadline passed in transit", msg.id, peer.info.id)
            return
        respond = self._budget.take(peer, msg.id, functools.partial(self._outgoing.send, peer.routing_id))
        if respond is not None:
            self.fan_out(msg, respond)

    def fan_out(
        self, msg: EvalRequest, respond: Callable[[Message], object], accept: ClientFilter | None = None
    ) -> None:
        """Send an eval to the machines holding its clusters; ``respond`` gets exactly one answer.

        Each machine is sent only the clusters it runs, and the gather takes a slot only
        from the machine it was sent to: a machine cannot answer for another's clusters.
        """
        respond = self._observers.wrap("eval", respond)
        fleet = self._fleet
        try:
            targets = select_clusters(
                fleet.plan, clusters=msg.clusters, shards=msg.shards, guild_id=msg.guild_id
            )
        except ConfigurationError as exc:
            respond(readdress(exc, msg.id))
            return
        gather = Gather(targets)
        by_machine: dict[bytes, list[int]] = {}
        for cid in targets:
            peer = fleet.holder(cid)
            if peer is None or (accept is not None and not accept(peer.info)):
                gather.fail([cid], ConnectionLost(f"cluster {cid} is not running on any connected machine"))
                continue
            by_machine.setdefault(peer.routing_id, []).append(cid)
        # One id and one timer for the whole fan-out. Every frame is encoded and checked
        # (an eval for a guild keeps its guild_id: the machine says so if its shard is down)
        # before anything opens, so an eval that cannot be sent (a context nested deeper
        # than the encoder allows) is refused at once and leaves nothing behind.
        now = self._clock.time()
        deadline = min(msg.deadline, now + MAX_TIMEOUT)
        hop = hop_deadline(deadline, now)
        fan_id = self._open.next_id()
        try:
            shares = encode_each(msg, "clusters", by_machine.values(), id=fan_id, deadline=hop, shards=None)
            sends = list(zip(by_machine, shares, strict=True))
            for _, frames in sends:
                check_limits(frames, self._limits)
        except ZmqcrossError as exc:
            respond(readdress(exc, msg.id))
            return
        launched = self._fanouts.launch(
            fan_id,
            FanOut(msg.id, gather, by_machine, respond),
            deadline=deadline,
            now=now,
            call_later=self._clock.call_later,
            error=RequestTimeout("its machine did not answer before the deadline"),
        )
        if launched is None:
            return
        for route, frames in sends:
            self._outgoing.queue(route, frames)

    # ------------------------------------------------------------------ guild requests

    def on_guild_request(self, peer: Peer, msg: GuildRequest) -> None:
        """A client's request_to_guild: sent to the machine running the guild's shard."""
        if not self._gate.allowed(peer, "request", msg.id):
            return
        if msg.deadline < self._clock.time():
            return
        respond = self._budget.take(peer, msg.id, functools.partial(self._outgoing.send, peer.routing_id))
        if respond is not None:
            self.route_guild(msg, respond)

    def route_guild(self, msg: GuildRequest, respond: Callable[[Message], object]) -> None:
        """Relay a guild request to the machine running the guild's shard; ``respond`` gets the answer."""
        respond = self._observers.wrap("guild_request", respond)
        plan = self._fleet.plan
        shard = shard_for_guild(msg.guild_id, plan.total_shards)
        cluster = plan.cluster_of_shard(shard)
        target = self._fleet.holder(cluster) if cluster is not None else None
        if target is None:
            error: ZmqcrossError = (
                ClientNotFound(
                    f"guild {msg.guild_id} is on shard {shard}, which no cluster of this plan runs"
                )
                if cluster is None
                else ConnectionLost(
                    f"guild {msg.guild_id} is on shard {shard} (cluster {cluster}), which no connected machine runs"
                )
            )
            respond(readdress(error, msg.id))
            return
        sub_id, deadline = self._hop(
            msg.deadline,
            target,
            f"request to guild {msg.guild_id} on machine {target.info.id!r}",
            lambda outcome: respond(readdress(outcome, msg.id)),
        )
        self._outgoing.send(target.routing_id, dataclasses.replace(msg, id=sub_id, deadline=deadline))

    # ------------------------------------------------------------------ requests

    def on_request(self, peer: Peer, msg: Request) -> None:
        """A client's request: for a service, the bridge's handlers, or another client."""
        service = self._services.get(msg.service) if msg.service is not None else None
        if msg.service is not None and service is None:
            error = ClientNotFound(f"the bridge runs no {msg.service!r} service")
            self._outgoing.send(peer.routing_id, readdress(error, msg.id))
            return
        if not self._gate.allowed(peer, service.action if service is not None else "request", msg.id):
            return
        if msg.deadline < self._clock.time():
            log.debug("dropped request %d from %r: its deadline passed in transit", msg.id, peer.info.id)
            return
        answer = self._budget.take(peer, msg.id, functools.partial(self._outgoing.send, peer.routing_id))
        if answer is None:
            return
        if msg.target is not None or msg.agent is not None:
            self._relay(peer, msg, answer)
            return
        request = IncomingRequest(
            msg.data,
            request_id=msg.id,
            deadline=min(msg.deadline, self._clock.time() + MAX_TIMEOUT),
            respond=self._observers.wrap(
                f"service:{msg.service}" if service is not None else "request", answer
            ),
            client=peer.info,
        )
        handlers: Sequence[Handler]
        if service is not None:
            handlers, event, missing = (service.handler,), "error", ""
        else:
            handlers, event = self._events.handlers("client_request"), "client_request"
            missing = (
                "the bridge has no 'client_request' handler; add one with bridge.on('client_request', ...)"
            )
        serve_request(request, handlers, (request, peer.info), self._events, event, missing=missing)

    def _relay(self, origin: Peer, msg: Request, answer: Callable[[Message], object]) -> None:
        try:
            target = self.find_target(msg.target, msg.agent)
        except ClientNotFound as exc:
            answer(ErrorReply(reply_to=msg.id, error=ErrorInfo.from_exception(exc, with_traceback=False)))
            return
        origin_id = msg.id
        observed = self._observers.wrap("relay", answer)

        def forward(outcome: Any) -> None:
            observed(readdress(outcome, origin_id))  # body bytes pass through untouched

        request_id, deadline = self._hop(
            msg.deadline, target, f"request relayed to client {target.info.id!r}", forward
        )
        self._outgoing.send(
            target.routing_id, Request(id=request_id, deadline=deadline, data=msg.data, origin=origin.info.id)
        )

    def _hop(
        self, deadline: float, target: Peer, what: str, on_done: Callable[[Outcome], object]
    ) -> tuple[int, float]:
        """Open a request to ``target``: its id, and the deadline to send on.

        The hop answers a little before its caller gives up (so the caller hears which hop
        was slow), and never later than MAX_TIMEOUT from now, whatever the caller wrote.
        """
        now = self._clock.time()
        hop = hop_deadline(min(deadline, now + MAX_TIMEOUT), now)
        request_id = self._open.next_id()
        self._open.add(
            request_id=request_id,
            timeout=max(hop - now, 0.0),
            what=what,
            on_done=on_done,
            peer=target.routing_id,
        )
        return request_id, hop

    def find_target(self, client_id: str | None, agent: str | None) -> Peer:
        """The one connected client with that id, or the one with that agent name."""
        registry = self._fleet.registry
        if client_id is not None:
            peer = registry.by_id(client_id)
            if peer is None:
                raise ClientNotFound(f"no connected client {client_id!r}; connected: {self.client_ids()}")
            return peer
        matches = [p for p in registry if p.info.agent == agent]
        if len(matches) == 1:
            return matches[0]
        if not matches:
            raise ClientNotFound(f"no connected client has agent {agent!r}; connected: {self.client_ids()}")
        names = ", ".join(repr(p.info.id) for p in matches)
        raise ClientNotFound(
            f"{len(matches)} clients have agent {agent!r} ({names}); name one with client_id="
        )

    def client_ids(self) -> str:
        """The connected clients' ids, for error messages."""
        return ", ".join(repr(p.info.id) for p in self._fleet.registry) or "none"
