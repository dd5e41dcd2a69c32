"""The bridge: the fleet's one ROUTER (requests, replies, per-peer sends) and PUB (beacons).

Every machine agent and dashboard connects here. The bridge authenticates them (CURVE
allow-list through ZAP, then the auth token), keeps the registry of who is connected,
hands out the shard plan, answers and relays requests, and drops peers that go silent.
All of its socket work happens in this module's loop; decisions live in
:mod:`~zmqcross.registry`, :mod:`~zmqcross.planning` and :mod:`~zmqcross.security`.
What it does with each message it receives is in :mod:`~zmqcross.bridge_inbox`, fleet
work in :mod:`~zmqcross.bridge_fleet`, requests and evals in :mod:`~zmqcross.bridge_routing`.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal, cast

import zmq

from .bridge_fleet import FleetOps
from .bridge_inbox import Inbox, receive_routed
from .bridge_routing import ClientFilter, Observer, Routing, Service
from .discord_api import fetch_recommended_shards
from .errors import (
    ClientNotFound,
    ConfigurationError,
    ConnectionLost,
)
from .events import EventEmitter, Handler
from .fanout import (
    FanOuts,
)
from .planning import ClusterListParser, Placement, ShardPlan, build_plan
from .protocol import (
    DEFAULT_LIMITS,
    DEFAULT_TIMEOUT,
    RESHARD_SERVICE,
    STATUS_SERVICE,
    Beacon,
    ErrorReply,
    EvalReply,
    EvalRequest,
    Goodbye,
    GuildRequest,
    Leaving,
    Limits,
    Message,
    Ping,
    Register,
    Reply,
    Request,
    Send,
    ShardDataRequest,
    answer_frames,
    check_limits,
    dump,
    encode,
    result_of,
)
from .registry import ClientInfo, Peer, Registry
from .security import AccessPolicy, CurveServer, ZapHandler
from .transport import (
    OpenRequests,
    Outbox,
    Pump,
    closed_error,
    configure_socket,
    new_context,
    send_frames,
    watch_monitor,
)

if TYPE_CHECKING:
    from .metrics import BridgeMetrics

__all__ = ["BRIDGE_EVENTS", "Bridge", "BridgeStatistics"]


log = logging.getLogger("zmqcross.bridge")

BRIDGE_EVENTS = ("client_message", "client_request", "connect", "disconnect", "error", "ready")
"""Events a :class:`Bridge` emits; see :meth:`Bridge.on`."""


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


class Bridge(Inbox, FleetOps, Routing):
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
    With ``metrics_port`` set, Prometheus metrics are served on ``metrics_host:metrics_port``
    while the bridge runs (:class:`zmqcross.metrics.BridgeMetrics`, see :attr:`metrics`).
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
        metrics_port: int | None = None,
        metrics_host: str = "127.0.0.1",
    ) -> None:
        if not isinstance(auth_token, str) or not auth_token:
            raise ConfigurationError("auth_token must be a non-empty string; every client must present it")
        for name, value in (("port", port), ("pub_port", pub_port), ("metrics_port", metrics_port)):
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
        self._metrics_address = (metrics_host, metrics_port)
        self._metrics: BridgeMetrics | None = None

        self._events = EventEmitter(BRIDGE_EVENTS, log)
        self._registry = Registry()
        self._services: dict[str, Service] = {
            STATUS_SERVICE: Service(self._serve_status, "request"),
            RESHARD_SERVICE: Service(self._serve_reshard, "admin"),
        }
        self._open = OpenRequests()
        self._observer: Observer | None = None
        self._observers: tuple[Observer, ...] = ()
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
        self._outbox = Outbox(self._send_now)  # answers and fan-outs, batched per peer under load
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
        ctx = new_context()
        self._ctx = ctx
        try:
            self._bind(ctx)
            await self._start_metrics()
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
        self._router_pump = self._pump(router, self._on_router, name="router", receive=receive_routed)
        self._pump_monitor(router, "router")

    async def _start_metrics(self) -> None:
        host, port = self._metrics_address
        if port is None:
            return
        from .metrics import BridgeMetrics  # aiohttp and prometheus_client only for bridges that ask

        metrics = BridgeMetrics(self, host=host, port=port)
        await metrics.start()
        self._metrics = metrics

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
        if self._metrics is not None:
            await self._metrics.close()
            self._metrics = None
        # Services first: a persisted cache refuses calls from here on and saves what was
        # acknowledged, before any goodbye lets a client believe the bridge is gone.
        for service in self._services.values():
            if service.owner is not None:
                try:
                    await service.owner.close()
                except Exception:
                    log.exception("closing the owner of a bridge service failed")
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
        self._outbox.flush()  # held messages (the goodbyes among them) leave before the sockets close
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
    def metrics(self) -> BridgeMetrics | None:
        """The Prometheus endpoint ``metrics_port`` asked for, while the bridge runs (else ``None``)."""
        return self._metrics

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

    @property
    def services(self) -> Mapping[str, Service]:
        """The bridge's services by name (read-only): handler, permission and owner of each."""
        return MappingProxyType(self._services)

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

    # ------------------------------------------------------------------ sending

    def _send(self, routing_id: bytes, msg: Message) -> None:
        """Send ``msg`` now, or batched with the others for that peer at the end of this burst."""
        self._queue_frames(routing_id, answer_frames(msg, self._limits))

    def _queue_frames(self, routing_id: bytes, frames: list[bytes]) -> None:
        """Send encoded frames now, or batched with the others for that peer at the end of this burst."""
        self._counters["out"] += 1
        self._outbox.put(routing_id, frames)

    def _send_frames(self, routing_id: bytes, frames: list[bytes]) -> bool:
        """Send at once (after what is held for that peer); False if it could not be sent."""
        self._outbox.flush_key(routing_id)
        self._counters["out"] += 1
        return self._send_now(routing_id, frames)

    def _send_now(self, routing_id: bytes, frames: list[bytes]) -> bool:
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
