"""The bridge's routing: requests to the bridge, its services and other clients, and broadcast
evals and guild requests fanned out to machines.

Mixed into :class:`zmqcross.Bridge`; what goes where is decided in :mod:`zmqcross.fanout`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from .bridge_parts import BridgeParts
from .errors import ClientNotFound, ConfigurationError, ConnectionLost, RequestTimeout, ZmqcrossError
from .events import Handler
from .fanout import (
    FanOut,
    Gather,
    eval_outcome,
    eval_request,
    guild_of,
    hop_deadline,
    select_clusters,
)
from .messages import IncomingRequest, serve_request
from .planning import shard_for_guild
from .protocol import (
    ErrorInfo,
    ErrorReply,
    EvalReply,
    EvalRequest,
    GuildRequest,
    Message,
    Request,
    check_limits,
    dump,
    encode,
    readdress,
    result_of,
)
from .registry import ClientInfo, Peer
from .security import ACTIONS

__all__ = ["ClientFilter", "Observer", "Routing", "Service", "ServiceHandler", "ServiceOwner", "outcome_of"]

log = logging.getLogger("zmqcross.bridge")

ClientFilter = Callable[[ClientInfo], bool]
ServiceHandler = Callable[[IncomingRequest, ClientInfo], Any]
Observer = Callable[[str, str, float], object]


class ServiceOwner(Protocol):
    """What owns a service (a :class:`~zmqcross.CacheServer`): closed when its bridge closes."""

    async def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Service:
    """A named bridge service: its handler, the permission a caller needs, and its owner.

    The owner, when given, is closed by :meth:`Bridge.close` before the sockets go, so a
    clean bridge shutdown also ends (and saves) what serves through it.
    """

    handler: ServiceHandler
    action: str
    owner: ServiceOwner | None = None


def _settle(answer: asyncio.Future[Message], outcome: Message) -> None:
    if not answer.done():
        answer.set_result(outcome)


class Routing(BridgeParts):
    """Where each request goes: a handler or service here, another client, or the right clusters."""

    async def broadcast_eval(
        self,
        script: str | Callable[..., Any],
        *,
        context: Any = None,
        timeout: float | None = None,
        clusters: Sequence[int] | None = None,
        shards: Sequence[int] | None = None,
        guild_id: int | None = None,
        filter: ClientFilter | None = None,
        return_exceptions: bool = False,
    ) -> list[Any]:
        """Run ``script`` on every cluster of every machine; one result per cluster, in cluster id order.

        ``script`` is a string (an expression, or statements ending in one; ``await`` allowed;
        ``bot`` and ``context`` in scope) or a function called as ``fn(bot, context)``.
        ``clusters``, ``shards`` or ``guild_id`` (one of them) narrow the targets; ``filter``
        picks machines by their :class:`ClientInfo`. If any cluster raised, timed out or was
        down, raises :class:`BroadcastEvalError` with every outcome, unless
        ``return_exceptions`` puts the exceptions in those slots instead.
        """
        self._require_running()
        timeout = self._request_timeout if timeout is None else float(timeout)
        msg = eval_request(
            self._open.next_id(),
            script,
            timeout=timeout,
            context=context,
            clusters=clusters,
            shards=shards,
            guild_id=guild_id,
        )
        answer: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._fan_out(msg, functools.partial(_settle, answer), accept=filter)
        return eval_outcome(await answer, return_exceptions=return_exceptions)

    async def request_to_guild(
        self, data: Any, *, guild_id: int | None = None, timeout: float | None = None
    ) -> Any:
        """Send a custom request to the cluster that owns ``guild_id`` (or ``data["guild_id"]``).

        The bot answers it with a ``@bot.cluster.on_request`` handler. Raises
        :class:`ClientNotFound` or :class:`ConnectionLost` when no running cluster owns the guild.
        """
        self._require_running()
        timeout = self._request_timeout if timeout is None else float(timeout)
        msg = GuildRequest(
            id=self._open.next_id(),
            deadline=time.time() + timeout,
            guild_id=guild_of(data, guild_id),
            data=dump(data),
        )
        answer: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._route_guild(msg, functools.partial(_settle, answer))
        return result_of(await answer)

    def _on_eval(self, peer: Peer, msg: EvalRequest) -> None:
        if not self._allowed(peer, "eval", msg.id):
            return
        if msg.deadline < time.time():
            log.debug("dropped eval %d from %r: its deadline passed in transit", msg.id, peer.info.id)
            return
        self._fan_out(msg, functools.partial(self._send, peer.routing_id))

    def _fan_out(
        self, msg: EvalRequest, respond: Callable[[Message], object], accept: ClientFilter | None = None
    ) -> None:
        """Send an eval to the machines holding its clusters; ``respond`` gets exactly one answer."""
        respond = self._observed("eval", respond)
        try:
            targets = select_clusters(
                self.plan, clusters=msg.clusters, shards=msg.shards, guild_id=msg.guild_id
            )
        except ConfigurationError as exc:
            respond(readdress(exc, msg.id))
            return
        gather = Gather(targets)
        assert self._placement is not None
        by_machine: dict[bytes, list[int]] = {}
        for cid in targets:
            holder = self._placement.holder_of(cid)
            peer = self._registry.by_id(holder) if holder is not None else None
            if peer is None or (accept is not None and not accept(peer.info)):
                gather.fail([cid], ConnectionLost(f"cluster {cid} is not running on any connected machine"))
                continue
            by_machine.setdefault(peer.routing_id, []).append(cid)
        # One id, one timer and one encoding for the whole fan-out: every machine gets the
        # same frames and answers for the listed clusters it runs.
        fan_id = self._open.next_id()
        deadline = self._fanouts.launch(
            fan_id,
            FanOut(msg.id, gather, by_machine, respond),
            deadline=msg.deadline,
            now=time.time(),
            call_later=asyncio.get_running_loop().call_later,
            error=RequestTimeout("its machine did not answer before the deadline"),
        )
        if deadline is None:
            return
        frames = encode(
            dataclasses.replace(
                msg, id=fan_id, deadline=deadline, clusters=tuple(targets), shards=None, guild_id=None
            )
        )
        check_limits(frames, self._limits)
        for route in list(by_machine):
            self._queue_frames(route, frames)

    def _on_guild_request(self, peer: Peer, msg: GuildRequest) -> None:
        if not self._allowed(peer, "request", msg.id):
            return
        if msg.deadline < time.time():
            return
        self._route_guild(msg, functools.partial(self._send, peer.routing_id))

    def _route_guild(self, msg: GuildRequest, respond: Callable[[Message], object]) -> None:
        """Relay a guild request to the machine running the guild's shard; ``respond`` gets the answer."""
        respond = self._observed("guild_request", respond)
        assert self._placement is not None
        shard = shard_for_guild(msg.guild_id, self.plan.total_shards)
        cluster = self.plan.cluster_of_shard(shard)
        holder = self._placement.holder_of(cluster) if cluster is not None else None
        target = self._registry.by_id(holder) if holder is not None else None
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
        now = time.time()
        deadline = hop_deadline(msg.deadline, now)
        sub_id = self._open.next_id()
        self._open.add(
            request_id=sub_id,
            timeout=max(deadline - now, 0.0),
            what=f"request to guild {msg.guild_id} on machine {target.info.id!r}",
            on_done=lambda outcome: respond(readdress(outcome, msg.id)),
            peer=target.routing_id,
        )
        self._send(target.routing_id, dataclasses.replace(msg, id=sub_id, deadline=deadline))

    def _on_request(self, peer: Peer, msg: Request) -> None:
        service = self._services.get(msg.service) if msg.service is not None else None
        if msg.service is not None and service is None:
            error = ClientNotFound(f"the bridge runs no {msg.service!r} service")
            self._send(peer.routing_id, readdress(error, msg.id))
            return
        if not self._allowed(peer, service.action if service is not None else "request", msg.id):
            return
        if msg.deadline < time.time():
            log.debug("dropped request %d from %r: its deadline passed in transit", msg.id, peer.info.id)
            return
        if msg.target is not None or msg.agent is not None:
            self._relay(peer, msg)
            return
        request = IncomingRequest(
            msg.data,
            request_id=msg.id,
            deadline=msg.deadline,
            respond=self._observed(
                f"service:{msg.service}" if service is not None else "request",
                functools.partial(self._send, peer.routing_id),
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

    def add_service(
        self,
        name: str,
        handler: ServiceHandler,
        *,
        action: str = "request",
        owner: ServiceOwner | None = None,
    ) -> None:
        """Answer requests addressed to service ``name`` with ``handler(request, client)``.

        This is how bridge plugins (the cache) receive their calls: clients reach them with
        ``call_service(name, data)``. ``action`` is the permission a caller needs. ``owner``
        (an object with ``async close()``) is closed when the bridge closes.
        """
        if name in self._services:
            raise ConfigurationError(f"the bridge already has a {name!r} service")
        if action not in ACTIONS:
            raise ConfigurationError(f"unknown action {action!r}; actions are {sorted(ACTIONS)}")
        self._services[name] = Service(handler, action, owner)

    def _relay(self, origin: Peer, msg: Request) -> None:
        try:
            target = self._find_target(msg.target, msg.agent)
        except ClientNotFound as exc:
            self._send(
                origin.routing_id,
                ErrorReply(reply_to=msg.id, error=ErrorInfo.from_exception(exc, with_traceback=False)),
            )
            return
        origin_route, origin_id = origin.routing_id, msg.id

        observed = self._observed("relay", functools.partial(self._send, origin_route))

        def forward(outcome: Any) -> None:
            observed(readdress(outcome, origin_id))  # body bytes pass through untouched

        # Answer a little before the caller gives up, so it hears which hop was slow.
        now = time.time()
        deadline = hop_deadline(msg.deadline, now)
        request_id = self._open.next_id()
        self._open.add(
            request_id=request_id,
            timeout=max(deadline - now, 0.0),
            what=f"request relayed to client {target.info.id!r}",
            on_done=forward,
            peer=target.routing_id,
        )
        self._send(
            target.routing_id,
            Request(id=request_id, deadline=deadline, data=msg.data, origin=origin.info.id),
        )

    def _find_target(self, client_id: str | None, agent: str | None) -> Peer:
        if client_id is not None:
            peer = self._registry.by_id(client_id)
            if peer is None:
                raise ClientNotFound(f"no connected client {client_id!r}; connected: {self._client_ids()}")
            return peer
        matches = [p for p in self._registry if p.info.agent == agent]
        if len(matches) == 1:
            return matches[0]
        if not matches:
            raise ClientNotFound(f"no connected client has agent {agent!r}; connected: {self._client_ids()}")
        names = ", ".join(repr(p.info.id) for p in matches)
        raise ClientNotFound(
            f"{len(matches)} clients have agent {agent!r} ({names}); name one with client_id="
        )

    def _client_ids(self) -> str:
        return ", ".join(repr(p.info.id) for p in self._registry) or "none"

    def observe(self, observer: Observer) -> Callable[[], None]:
        """Also call ``observer(kind, outcome, seconds)`` once per request this bridge answers or routes.

        ``kind`` is request, relay, eval, guild_request or ``service:<name>``; ``outcome`` is
        ok, partial (an eval with some failed slots) or the error code (timeout, remote,
        permission_denied...). For metrics. Returns a function that removes this observer.
        """
        self._observers = (*self._observers, observer)
        self._observer = _all_of(self._observers)

        def stop() -> None:
            self._observers = tuple(o for o in self._observers if o is not observer)
            self._observer = _all_of(self._observers)

        return stop

    def _observed(self, kind: str, respond: Callable[[Message], object]) -> Callable[[Message], object]:
        observer = self._observer
        if observer is None:
            return respond
        started = time.perf_counter()

        def answered(msg: Message) -> object:
            try:
                observer(kind, outcome_of(msg), time.perf_counter() - started)
            except Exception:  # metrics must never break an answer
                log.exception("the request observer failed")
            return respond(msg)

        return answered


def _all_of(observers: tuple[Observer, ...]) -> Observer | None:
    # The hot path tests one attribute: None when nobody observes, else one callable.
    if not observers:
        return None
    if len(observers) == 1:
        return observers[0]

    def each(kind: str, outcome: str, seconds: float) -> None:
        for observer in observers:
            observer(kind, outcome, seconds)

    return each


def outcome_of(msg: Message) -> str:
    """How an answer went, for metrics: ok, partial, or the error's code."""
    if isinstance(msg, ErrorReply):
        return msg.error.code
    if isinstance(msg, EvalReply):
        failed = sum(not slot.ok for slot in msg.slots)
        return "ok" if not failed else ("error" if failed == len(msg.slots) else "partial")
    return "ok"
