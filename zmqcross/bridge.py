"""The bridge: the fleet's one ROUTER (requests, replies, per-peer sends) and PUB (beacons).

Every machine agent and dashboard connects here. The bridge authenticates them (CURVE
allow-list through ZAP, then the auth token), keeps the registry of who is connected,
hands out the shard plan, answers and relays requests, and drops peers that go silent.
All of its socket work happens in this module's loop; decisions live in
:mod:`~zmqcross.registry`, :mod:`~zmqcross.planning` and :mod:`~zmqcross.security`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, cast

import zmq

from .discord_api import fetch_recommended_shards
from .errors import (
    AuthenticationError,
    ClientNotFound,
    ConfigurationError,
    ConnectionLost,
    PermissionDenied,
    ProtocolError,
    RequestTimeout,
    ZmqcrossError,
)
from .events import EventEmitter, Handler
from .fanout import (
    FanOut,
    FanOuts,
    Gather,
    eval_outcome,
    eval_request,
    guild_of,
    hop_deadline,
    select_clusters,
)
from .messages import IncomingMessage, IncomingRequest, serve_request
from .planning import ClusterListParser, Placement, ShardPlan, build_plan, shard_for_guild
from .protocol import (
    DEFAULT_LIMITS,
    DEFAULT_TIMEOUT,
    PROTOCOL_VERSION,
    RESHARD_SERVICE,
    STATUS_SERVICE,
    Assignment,
    Beacon,
    ErrorInfo,
    ErrorReply,
    EvalReply,
    EvalRequest,
    Goodbye,
    GuildRequest,
    Hosting,
    Leaving,
    Limits,
    Message,
    Ping,
    Pong,
    Register,
    Reply,
    Request,
    Reregister,
    Send,
    ShardDataRequest,
    Welcome,
    check_limits,
    decode,
    dump,
    encode,
    readdress,
    result_of,
)
from .registry import ClientInfo, Peer, Registry, check_name
from .security import ACTIONS, AccessPolicy, CurveServer, ZapHandler, tokens_match
from .status import ClusterStatus, FleetStatus, MachineStatus
from .transport import (
    MonitorEvent,
    OpenRequests,
    Pump,
    closed_error,
    configure_socket,
    receive_frames,
    send_frames,
    watch_monitor,
)

__all__ = ["BRIDGE_EVENTS", "Bridge", "BridgeStatistics"]


log = logging.getLogger("zmqcross.bridge")

BRIDGE_EVENTS = ("client_message", "client_request", "connect", "disconnect", "error", "ready")
"""Events a :class:`Bridge` emits; see :meth:`Bridge.on`."""

ClientFilter = Callable[[ClientInfo], bool]
ServiceHandler = Callable[[IncomingRequest, ClientInfo], Any]


@dataclass(frozen=True, slots=True)
class _Service:
    handler: ServiceHandler
    action: str


BEACON_BURST = (0.0, 0.02, 0.1, 0.3)

PROBE_DELAYS = (0.05, 0.3)
"""Seconds after a connection drops at which the bridge probes its peers to find which one left."""
"""Seconds after a registration at which extra beacons go out, for the newcomer's SUB."""


@dataclass(frozen=True, slots=True)
class BridgeStatistics:
    """A snapshot of a running bridge's counters."""

    clients: int
    open_requests: int
    messages_in: int
    messages_out: int
    protocol_errors: int
    refused_registrations: int
    refused_keys: int
    plan_version: str | None


def _endpoint(host: str, port: int) -> str:
    where = f"[{host}]" if ":" in host else host
    return f"tcp://{where}:{port if port else '*'}"


def _is_loopback(host: str) -> bool:
    return host in ("localhost", "::1") or host.startswith("127.")


def _peer_address(frame: zmq.Frame) -> str | None:
    try:
        return str(frame.get("Peer-Address"))
    except zmq.ZMQError:
        return None


class Bridge:
    """The central process of a zmqcross fleet.

    ::

        async with Bridge(auth_token="...", total_shards=16, total_machines=4,
                          shards_per_cluster=2) as bridge:
            await bridge.wait_closed()

    ``port`` is the ROUTER's port and ``pub_port`` the PUB's (default ``port + 1``);
    ``port=0`` picks free ports, readable from :attr:`port` and :attr:`pub_port` after
    :meth:`start`. ``total_shards="auto"`` asks Discord (``token`` is the bot token;
    ``api_base`` or ``$ZMQCROSS_DISCORD_API`` redirects the call). With ``curve`` set,
    only allow-listed client keys get in; ``auth_token`` is checked in every case.
    A client silent for ``heartbeat_timeout`` seconds is dropped with a ``disconnect``.
    """

    def __init__(
        self,
        *,
        auth_token: str,
        host: str = "127.0.0.1",
        port: int = 4444,
        pub_port: int | None = None,
        total_shards: int | Literal["auto"] = 1,
        shards_per_cluster: int = 1,
        total_machines: int = 1,
        shard_list: Sequence[int] | None = None,
        parse_cluster_list: ClusterListParser | None = None,
        token: str | None = None,
        api_base: str | None = None,
        curve: CurveServer | None = None,
        permissions: AccessPolicy | None = None,
        heartbeat_interval: float = 1.0,
        heartbeat_timeout: float = 4.0,
        limits: Limits = DEFAULT_LIMITS,
        request_timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        if not isinstance(auth_token, str) or not auth_token:
            raise ConfigurationError("auth_token must be a non-empty string; every client must present it")
        for name, value in (("port", port), ("pub_port", pub_port)):
            if value is not None and (type(value) is not int or not 0 <= value <= 65535):
                raise ConfigurationError(
                    f"{name} must be a TCP port number (0 picks a free one), not {value!r}"
                )
        if not 0 < heartbeat_interval < heartbeat_timeout:
            raise ConfigurationError("heartbeat_interval must be positive and shorter than heartbeat_timeout")
        if total_shards != "auto" and type(total_shards) is not int:
            raise ConfigurationError(
                f'total_shards must be a positive integer or "auto", not {total_shards!r}'
            )
        self._auth_token = auth_token
        self._host = host
        self._port = port
        self._pub_port = pub_port if pub_port is not None else (port + 1 if port else 0)
        self._plan_options: dict[str, Any] = {
            "shards_per_cluster": shards_per_cluster,
            "total_machines": total_machines,
            "shard_list": shard_list,
            "parse_cluster_list": parse_cluster_list,
        }
        self._total_shards = total_shards
        self._discord_token = token
        self._api_base = api_base
        self._plan: ShardPlan | None = None
        if total_shards != "auto":
            self._plan = build_plan(total_shards, **self._plan_options)  # fail at construction, not later
        self._curve = curve
        self._policy = permissions or AccessPolicy()
        self._heartbeat_interval = float(heartbeat_interval)
        self._heartbeat_timeout = float(heartbeat_timeout)
        self._limits = limits
        self._request_timeout = float(request_timeout)

        self._events = EventEmitter(BRIDGE_EVENTS, log)
        self._registry = Registry()
        self._services: dict[str, _Service] = {
            STATUS_SERVICE: _Service(self._serve_status, "request"),
            RESHARD_SERVICE: _Service(self._serve_reshard, "admin"),
        }
        self._open = OpenRequests()
        self._fanouts = FanOuts()
        self._placement: Placement | None = None
        self._zap: ZapHandler | None = None
        self._epoch = secrets.token_hex(8)
        self._beacon_seq = 0
        self._counters = {"in": 0, "out": 0, "protocol_errors": 0, "refused": 0}
        self._ctx: zmq.Context[Any] | None = None
        self._router: zmq.Socket[Any] | None = None
        self._pub: zmq.Socket[Any] | None = None
        self._pumps: list[Pump] = []
        self._router_pump: Pump | None = None
        self._sockets: list[zmq.Socket[Any]] = []
        self._heartbeat_task: asyncio.Task[None] | None = None
        self._closed: asyncio.Event | None = None
        self._dispatch: dict[type, Callable[[Peer, Any], None]] = {
            Ping: self._on_ping,
            Request: self._on_request,
            Send: self._on_send,
            ShardDataRequest: self._on_shard_data,
            Reply: self._on_answer,
            ErrorReply: self._on_answer,
            Goodbye: self._on_goodbye,
            Register: self._on_reregister,
            EvalRequest: self._on_eval,
            EvalReply: self._on_answer,
            GuildRequest: self._on_guild_request,
            Leaving: self._on_leaving,
        }

    # ------------------------------------------------------------------ lifetime

    async def start(self) -> None:
        """Resolve the shard plan, start the ZAP handler, bind both sockets, begin heartbeats."""
        if self._ctx is not None:
            raise RuntimeError("this bridge is already started")
        if self._plan is None:
            shards = await fetch_recommended_shards(self._discord_token or "", base=self._api_base)
            self._plan = build_plan(shards, **self._plan_options)
            log.info('total_shards="auto": Discord recommends %d shards', shards)
        self._placement = Placement(self._plan)
        self._closed = asyncio.Event()
        ctx: zmq.Context[Any] = zmq.Context()
        self._ctx = ctx
        try:
            self._bind(ctx)
        except BaseException:
            self._close_sockets()
            raise
        self._heartbeat_task = asyncio.get_running_loop().create_task(self._heartbeat())
        log.info(
            "bridge listening on %s (pub %s), CURVE %s, plan %s: %d shards in %d clusters for %d machine chunks",
            self.endpoint,
            self.pub_endpoint,
            "on" if self._curve else "off",
            self._plan.version,
            self._plan.total_shards,
            self._plan.total_clusters,
            len(self._plan.chunks),
        )
        self._events.emit("ready")

    def _bind(self, ctx: zmq.Context[Any]) -> None:
        if self._curve is not None:
            # Must exist before any CURVE socket binds: libzmq admits every key without it.
            zap_socket = self._socket(ctx, zmq.REP)
            zap_socket.bind("inproc://zeromq.zap.01")
            self._zap = ZapHandler(self._curve.allowed, reload=self._curve.reload)
            zap = self._zap

            def answer_zap(frames: list[bytes]) -> None:
                zap_socket.send_multipart(zap.handle(frames))

            self._pump(zap_socket, answer_zap, name="zap")
        elif not _is_loopback(self._host):
            log.warning(
                "!!! The bridge listens on %s WITHOUT CURVE: anyone who can reach it and learns the auth "
                "token can run code on every cluster. Configure curve=CurveServer.from_files(...). !!!",
                self._host,
            )
        router = self._socket(ctx, zmq.ROUTER)
        configure_socket(router, self._limits, curve_server=self._curve)
        # Without ROUTER_MANDATORY a send to a vanished peer is dropped silently; with it
        # the send fails and the peer is known to be gone at once.
        router.setsockopt(zmq.ROUTER_MANDATORY, 1)
        pub = self._socket(ctx, zmq.PUB)
        configure_socket(pub, self._limits, curve_server=self._curve)
        for sock in (router, pub):
            if ":" in self._host:
                sock.setsockopt(zmq.IPV6, 1)
        try:
            router.bind(_endpoint(self._host, self._port))
            pub.bind(_endpoint(self._host, self._pub_port))
        except zmq.ZMQError as exc:
            raise ConfigurationError(
                f"cannot listen on {self._host} ports {self._port}/{self._pub_port}: {exc.strerror}"
            ) from None
        self._router, self._pub = router, pub
        self._port = _bound_port(router)
        self._pub_port = _bound_port(pub)
        self._router_pump = self._pump(router, self._on_router, name="router", receive=_receive_routed)
        self._pump_monitor(router, "router")

    def _socket(self, ctx: zmq.Context[Any], kind: int) -> zmq.Socket[Any]:
        sock = ctx.socket(kind)
        self._sockets.append(sock)
        return sock

    def _pump(self, sock: zmq.Socket[Any], handle: Callable[[Any], None], **kwargs: Any) -> Pump:
        pump = Pump(sock, handle, **kwargs)
        pump.start()
        self._pumps.append(pump)
        return pump

    def _pump_monitor(self, sock: zmq.Socket[Any], name: str) -> None:
        pump = watch_monitor(sock, self._on_monitor, name=f"{name}-monitor")
        self._sockets.append(pump.sock)
        pump.start()
        self._pumps.append(pump)

    async def close(self) -> None:
        """Tell clients the bridge is going (they will re-register with the next one), then stop."""
        if self._ctx is None:
            return
        for peer in self._registry:
            self._send(peer.routing_id, Goodbye(reason="the bridge is shutting down", retry=True))
        if self._heartbeat_task is not None:
            self._heartbeat_task.cancel()
            await asyncio.gather(self._heartbeat_task, return_exceptions=True)
        self._open.fail_all(ConnectionLost("the bridge was closed"))
        self._fanouts.fail_all(ConnectionLost("the bridge was closed"))
        for peer in self._registry:
            self._registry.remove(peer.routing_id)
        ctx = self._ctx
        self._ctx = None
        self._close_sockets(linger_ms=200)
        await asyncio.to_thread(ctx.term)  # waits out the goodbyes' linger without blocking the loop
        await self._events.aclose()
        if self._closed is not None:
            self._closed.set()
        log.info("bridge closed")

    def _close_sockets(self, linger_ms: int = 0) -> None:
        for pump in self._pumps:
            pump.stop()
        self._pumps.clear()
        for sock in self._sockets:
            sock.close(linger=linger_ms if sock is self._router else 0)
        self._sockets.clear()
        if self._ctx is not None:
            self._ctx.term()
            self._ctx = None

    async def wait_closed(self) -> None:
        """Wait until :meth:`close` has finished."""
        if self._closed is None:
            raise RuntimeError("the bridge was never started")
        await self._closed.wait()

    async def __aenter__(self) -> Bridge:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # ------------------------------------------------------------------ public API

    def on(self, name: str, handler: Handler | None = None) -> Any:
        """Register a handler (sync or async) for an event; usable as ``@bridge.on(name)``.

        Events: ``ready()``, ``connect(client, initial_data)``, ``disconnect(client, reason)``,
        ``client_message(message, client)``, ``client_request(request, client)`` (answer with
        ``await request.reply(data)`` or by returning a value), ``error(exception)``.
        """
        return self._events.on(name, handler) if handler is not None else self._events.on(name)

    @property
    def endpoint(self) -> str:
        """The ROUTER's address, e.g. ``tcp://127.0.0.1:4444``."""
        return _endpoint(self._host, self._port)

    @property
    def pub_endpoint(self) -> str:
        """The PUB socket's address."""
        return _endpoint(self._host, self._pub_port)

    @property
    def port(self) -> int:
        """The ROUTER's port (the real one after :meth:`start`, also when 0 was asked for)."""
        return self._port

    @property
    def pub_port(self) -> int:
        """The PUB socket's port."""
        return self._pub_port

    @property
    def epoch(self) -> str:
        """Random id of this bridge run; clients re-register when it changes."""
        return self._epoch

    @property
    def plan(self) -> ShardPlan:
        """The shard plan (available after :meth:`start` when ``total_shards="auto"``)."""
        if self._plan is None:
            raise RuntimeError('the plan is not known yet: total_shards="auto" is resolved by start()')
        return self._plan

    @property
    def clients(self) -> tuple[ClientInfo, ...]:
        """The connected clients, in registration order."""
        return tuple(peer.info for peer in self._registry)

    def shard_map(self) -> dict[str, object]:
        """Which machine holds which clusters (held, orphaned and free chunks)."""
        return self._placement.snapshot() if self._placement is not None else {}

    def statistics(self) -> BridgeStatistics:
        """Counters of this bridge since it started."""
        return BridgeStatistics(
            clients=len(self._registry),
            open_requests=len(self._open),
            messages_in=self._counters["in"],
            messages_out=self._counters["out"],
            protocol_errors=self._counters["protocol_errors"],
            refused_registrations=self._counters["refused"],
            refused_keys=self._zap.denied if self._zap is not None else 0,
            plan_version=self._plan.version if self._plan is not None else None,
        )

    async def send(self, data: Any, *, filter: ClientFilter | None = None) -> list[str]:
        """Send a custom message to every client ``filter`` accepts (all without one).

        Delivered peer by peer over the ROUTER, so none is silently lost to a slow
        subscriber; returns the ids of the clients it was handed to.
        """
        self._require_running()
        frames = encode(Send(data=dump(data)))
        check_limits(frames, self._limits)
        sent = []
        for peer in self._registry.select(filter):
            if self._send_frames(peer.routing_id, frames):
                sent.append(peer.info.id)
        return sent

    async def request(
        self, data: Any, *, client: str | ClientInfo, timeout: float | None = None, service: str | None = None
    ) -> Any:
        """Send a custom request to one client and return its answer.

        Raises :class:`ClientNotFound`, :class:`RequestTimeout`, :class:`ConnectionLost` (the
        client went away), or the client handler's error as :class:`RemoteError`.
        """
        self._require_running()
        client_id = client.id if isinstance(client, ClientInfo) else client
        peer = self._registry.by_id(client_id)
        if peer is None:
            raise ClientNotFound(f"no connected client {client_id!r}; connected: {self._client_ids()}")
        timeout = self._request_timeout if timeout is None else float(timeout)
        request_id = self._open.next_id()
        frames = encode(
            Request(id=request_id, deadline=time.time() + timeout, data=dump(data), service=service)
        )
        check_limits(frames, self._limits)
        outcome = self._open.future(
            request_id=request_id,
            timeout=timeout,
            what=f"request to client {client_id!r}",
            peer=peer.routing_id,
        )
        self._send_frames(peer.routing_id, frames)
        return result_of(await outcome)

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

    # ------------------------------------------------------------------ receiving

    def _on_router(self, routed: tuple[zmq.Frame, list[bytes]]) -> None:
        first, body = routed
        routing_id = first.bytes
        self._counters["in"] += 1
        try:
            msg = decode(body, self._limits)
        except ProtocolError as exc:
            self._counters["protocol_errors"] += 1
            peer = self._registry.get(routing_id)
            who = repr(peer.info.id) if peer else f"an unregistered peer at {_peer_address(first)}"
            log.warning("bad message from %s: %s", who, exc.message)
            self._send(
                routing_id,
                ErrorReply(
                    reply_to=exc.request_id, error=ErrorInfo.from_exception(exc, with_traceback=False)
                ),
            )
            return
        peer = self._registry.get(routing_id)
        if peer is None:
            self._from_stranger(routing_id, first, msg)
            return
        if self._curve is not None and _user_id(first) != peer.user_id:
            # Any allow-listed key can claim any routing id; the registration pinned this one to a key.
            log.warning(
                "dropped a message claiming client %r's routing id from another CURVE key", peer.info.id
            )
            return
        peer.last_seen = time.monotonic()
        handler = self._dispatch.get(type(msg))
        if handler is None:
            error = ProtocolError(f"the bridge does not accept {msg.type!r} messages")
            self._send(
                routing_id,
                ErrorReply(
                    reply_to=getattr(msg, "id", None),
                    error=ErrorInfo.from_exception(error, with_traceback=False),
                ),
            )
            return
        handler(peer, msg)

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

    def _on_ping(self, peer: Peer, msg: Ping) -> None:
        self._send(peer.routing_id, Pong(sent_at=msg.sent_at))

    def _on_goodbye(self, peer: Peer, msg: Goodbye) -> None:
        self._drop(peer, f"left: {msg.reason}")

    def _allowed(self, peer: Peer, action: str, request_id: int | None) -> bool:
        if action in peer.info.permissions:
            return True
        error = PermissionDenied(
            f"client {peer.info.id!r} (agent {peer.info.agent!r}, key {peer.info.key!r}) may not {action}; "
            f"it may: {', '.join(sorted(peer.info.permissions)) or 'nothing'}"
        )
        log.warning("%s", error.message)
        self._send(
            peer.routing_id,
            ErrorReply(reply_to=request_id, error=ErrorInfo.from_exception(error, with_traceback=False)),
        )
        return False

    def _on_send(self, peer: Peer, msg: Send) -> None:
        if self._allowed(peer, "request", None):
            self._events.emit("client_message", IncomingMessage(msg.data, client=peer.info), peer.info)

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
            respond=functools.partial(self._send, peer.routing_id),
            client=peer.info,
        )
        if service is not None:
            handlers, event, missing = (service.handler,), "error", ""
        else:
            handlers, event = self._events.handlers("client_request"), "client_request"
            missing = (
                "the bridge has no 'client_request' handler; add one with bridge.on('client_request', ...)"
            )
        serve_request(request, handlers, (request, peer.info), self._events, event, missing=missing)

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

    def add_service(self, name: str, handler: ServiceHandler, *, action: str = "request") -> None:
        """Answer requests addressed to service ``name`` with ``handler(request, client)``.

        This is how bridge plugins (the cache) receive their calls: clients reach them with
        ``call_service(name, data)``. ``action`` is the permission a caller needs.
        """
        if name in self._services:
            raise ConfigurationError(f"the bridge already has a {name!r} service")
        if action not in ACTIONS:
            raise ConfigurationError(f"unknown action {action!r}; actions are {sorted(ACTIONS)}")
        self._services[name] = _Service(handler, action)

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

        def forward(outcome: Any) -> None:
            self._send(origin_route, readdress(outcome, origin_id))  # body bytes pass through untouched

        request_id = self._open.next_id()
        self._open.add(
            request_id=request_id,
            timeout=max(msg.deadline - time.time(), 0.0),
            what=f"request relayed to client {target.info.id!r}",
            on_done=forward,
            peer=target.routing_id,
        )
        self._send(
            target.routing_id,
            Request(id=request_id, deadline=msg.deadline, data=msg.data, origin=origin.info.id),
        )

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
        fan = FanOut(msg.id, gather, by_machine, respond)
        if not self._fanouts.open(fan_id, fan):
            return
        now = time.time()
        deadline = hop_deadline(msg.deadline, now)
        fan.timer = asyncio.get_running_loop().call_later(
            max(deadline - now, 0.0),
            self._fanouts.expire,
            fan_id,
            RequestTimeout("its machine did not answer before the deadline"),
        )
        frames = encode(
            dataclasses.replace(
                msg, id=fan_id, deadline=deadline, clusters=tuple(targets), shards=None, guild_id=None
            )
        )
        check_limits(frames, self._limits)
        for route in list(by_machine):
            self._send_frames(route, frames)

    def _on_guild_request(self, peer: Peer, msg: GuildRequest) -> None:
        if not self._allowed(peer, "request", msg.id):
            return
        if msg.deadline < time.time():
            return
        self._route_guild(msg, functools.partial(self._send, peer.routing_id))

    def _route_guild(self, msg: GuildRequest, respond: Callable[[Message], object]) -> None:
        """Relay a guild request to the machine running the guild's shard; ``respond`` gets the answer."""
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
        sub_id = self._open.next_id()
        self._open.add(
            request_id=sub_id,
            timeout=max(msg.deadline - time.time(), 0.0),
            what=f"request to guild {msg.guild_id} on machine {target.info.id!r}",
            on_done=lambda outcome: respond(readdress(outcome, msg.id)),
            peer=target.routing_id,
        )
        self._send(target.routing_id, dataclasses.replace(msg, id=sub_id))

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

    def _on_answer(self, peer: Peer, msg: Reply | ErrorReply | EvalReply) -> None:
        entry = self._open.get(msg.reply_to) if msg.reply_to is not None else None
        if (
            entry is None
            and msg.reply_to is not None
            and self._fanouts.absorb(msg.reply_to, peer.routing_id, msg)
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
        self._open.finish(msg.reply_to, msg)

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
                    clusters=() if failed else tuple(ClusterStatus.from_json(c) for c in answer),
                    error=str(answer) if failed else None,
                )
            )
        snapshot = self._placement.snapshot()
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

    def _probe_peers(self) -> None:
        # A peer's TCP connection closed (process killed, machine rebooted): a send to
        # a routing id whose pipe is gone fails at once with ROUTER_MANDATORY, so probing
        # everyone finds the lost peer in milliseconds instead of a heartbeat timeout.
        probe = Beacon(epoch=self._epoch, seq=self._beacon_seq, plan_version=self.plan.version)
        for peer in self._registry:
            self._send(peer.routing_id, probe)

    def _on_monitor(self, event: MonitorEvent) -> None:
        if event.event == zmq.EVENT_DISCONNECTED:
            loop = asyncio.get_running_loop()
            for delay in PROBE_DELAYS:  # libzmq retires the pipe shortly after the event
                loop.call_later(delay, self._probe_peers)
            return
        if event.event == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL:
            log.warning(
                "a peer failed the ZMTP handshake (a client without CURVE, or with a wrong server key?)"
            )
        elif event.event == zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL:
            log.warning(
                "a peer's handshake failed (errno %d): often a CURVE client with a wrong server key",
                event.value,
            )

    # ------------------------------------------------------------------ sending

    def _send(self, routing_id: bytes, msg: Message) -> bool:
        frames = encode(msg)
        check_limits(frames, self._limits)
        return self._send_frames(routing_id, frames)

    def _send_frames(self, routing_id: bytes, frames: list[bytes]) -> bool:
        router = self._router
        if router is None or router.closed:
            return False
        try:
            send_frames(router, [routing_id, *frames])
        except zmq.ZMQError as exc:
            peer = self._registry.get(routing_id)
            if exc.errno == zmq.EHOSTUNREACH:
                if peer is not None:
                    self._drop(peer, "its connection is gone (send failed: host unreachable)")
                return False
            if exc.errno == zmq.EAGAIN:
                log.warning(
                    "send queue to %r is full; a message was dropped", peer.info.id if peer else routing_id
                )
                return False
            raise
        finally:
            if self._router_pump is not None:
                self._router_pump.kick()
        self._counters["out"] += 1
        return True

    def _publish_beacon(self) -> None:
        if self._pub is None or self._pub.closed:
            return
        self._beacon_seq += 1
        beacon = Beacon(
            epoch=self._epoch, seq=self._beacon_seq, plan_version=self._plan.version if self._plan else None
        )
        try:
            send_frames(self._pub, encode(beacon))
        except zmq.Again:
            pass  # beacons repeat every interval; a dropped one costs nothing

    def _drop(self, peer: Peer, reason: str) -> None:
        if self._registry.remove(peer.routing_id) is None:
            return
        released = self._placement.release(peer.info.id) if self._placement is not None else ()
        lost = ConnectionLost(f"client {peer.info.id!r} went away: {reason}")
        self._open.fail_peer(peer.routing_id, lost)
        self._fanouts.fail_route(peer.routing_id, lost)
        log.info("client %r disconnected: %s", peer.info.id, reason)
        self._events.emit("disconnect", peer.info, reason)
        if released:
            self._hand_over(f"machine {peer.info.id!r} was lost ({reason})")

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self._heartbeat_interval)
            try:
                now = time.monotonic()
                for peer in self._registry.silent(now, self._heartbeat_timeout):
                    silent_for = now - peer.last_seen
                    self._drop(
                        peer,
                        f"silent for {silent_for:.1f} s (heartbeat_timeout is {self._heartbeat_timeout:g} s)",
                    )
                self._publish_beacon()
            except Exception:  # the heartbeat must outlive any one bad tick
                log.exception("bridge heartbeat tick failed")

    def _require_running(self) -> zmq.Socket[Any]:
        if self._router is None or self._ctx is None:
            raise closed_error("the bridge")
        return self._router


def _bound_port(sock: zmq.Socket[Any]) -> int:
    return int(cast(bytes, sock.getsockopt(zmq.LAST_ENDPOINT)).decode().rsplit(":", 1)[1])


def _user_id(frame: zmq.Frame) -> str:
    """The CURVE key (z85) that ZAP admitted for the connection ``frame`` came on."""
    return str(frame.get("User-Id"))


_DONTWAIT = int(zmq.DONTWAIT)


def _receive_routed(sock: zmq.Socket[Any]) -> tuple[zmq.Frame, list[bytes]]:
    # The routing frame is kept as a zmq.Frame: its User-Id (the CURVE key ZAP admitted)
    # and Peer-Address properties are read from it. The rest of a multipart message is
    # already here once its first part is, so NOBLOCK cannot split it.
    first = sock.recv(_DONTWAIT, copy=False)
    body = receive_frames(sock) if first.more else []
    return first, body


def _settle(answer: asyncio.Future[Message], outcome: Message) -> None:
    if not answer.done():
        answer.set_result(outcome)
