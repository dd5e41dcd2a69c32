"""A client of the bridge: a machine agent (``agent="bot"``), a dashboard, or any service.

It holds a DEALER to the bridge's ROUTER and a SUB to its PUB, registers with the auth
token (and CURVE key), keeps the link alive with heartbeats, and re-registers by itself
when the bridge restarts, telling the new bridge what it hosts. Requests carry
deadlines; one the bridge refused to run because it did not know us is sent again after
re-registration if its deadline allows, and otherwise fails with a timeout.

The link's life (registering, heartbeats, noticing a lost or restarted bridge) is in
:mod:`zmqcross.client_link`; evals, guild requests and a machine's relaying in
:mod:`zmqcross.client_fleet`.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import zmq

from ..errors import (
    ConfigurationError,
    ConnectionLost,
    ProtocolError,
    ZmqcrossError,
)
from ..events import EventEmitter, Handler
from ..messages import IncomingMessage, IncomingRequest, serve_request
from ..planning import ShardData
from ..protocol import (
    DEFAULT_LIMITS,
    DEFAULT_TIMEOUT,
    STATUS_SERVICE,
    Assignment,
    Batch,
    Beacon,
    ErrorReply,
    EvalReply,
    Goodbye,
    GuildRequest,
    Hosting,
    Limits,
    Message,
    Pong,
    Reply,
    Request,
    Reregister,
    Send,
    ShardDataRequest,
    Welcome,
    answer_frames,
    check_limits,
    decode_header,
    dump,
    encode,
    read_header,
    result_of,
)
from ..registry import check_name
from ..relaying import eval_route
from ..security import CurveClient
from ..transport import (
    OpenRequests,
    Outbox,
    Pump,
    closed_error,
    configure_socket,
    new_context,
    send_frames,
    watch_monitor,
)
from ._link import _CLOSED, _IDLE, _READY, _REGISTERING, BridgeLink
from ._relay import FleetClient

if TYPE_CHECKING:
    from ..cluster.manager import ClusterManager

__all__ = ["CLIENT_EVENTS", "Client", "ClientStatistics", "default_machine_id"]

log = logging.getLogger("zmqcross.client")

CLIENT_EVENTS = ("assignment", "bridge_message", "bridge_request", "disconnect", "error", "ready")
"""Events a :class:`Client` emits; see :meth:`Client.on`."""


def default_machine_id(agent: str) -> str:
    """``"<host name>:<agent>"``: stable across restarts, distinct per agent on one host."""
    return f"{socket.gethostname()}:{agent}"


@dataclass(frozen=True, slots=True)
class ClientStatistics:
    """A snapshot of a client's link to the bridge."""

    state: str
    machine_id: str
    epoch: str | None
    registrations: int
    open_requests: int
    round_trip: float | None


class Client(FleetClient, BridgeLink):
    """A connection to a zmqcross bridge.

    ::

        client = Client(agent="bot", machine_id="machine-1", auth_token="...",
                        host="bridge.example", port=4444, curve=CurveClient.from_files(...))
        await client.connect()
        shards = await client.request_shard_data()

    ``machine_id`` must be unique in the fleet and stable across restarts (the bridge
    gives a returning machine its clusters back); it defaults to ``"<host>:<agent>"``.
    """

    def __init__(
        self,
        *,
        auth_token: str,
        host: str = "127.0.0.1",
        port: int = 4444,
        pub_port: int | None = None,
        agent: str = "bot",
        machine_id: str | None = None,
        rolling_restarts: bool = False,
        curve: CurveClient | None = None,
        limits: Limits = DEFAULT_LIMITS,
        request_timeout: float = DEFAULT_TIMEOUT,
        connect_timeout: float = 30.0,
        retry_interval: float = 0.5,
        max_retry_interval: float = 5.0,
    ) -> None:
        if not isinstance(auth_token, str) or not auth_token:
            raise ConfigurationError("auth_token must be the bridge's auth token (a non-empty string)")
        machine_id = machine_id if machine_id is not None else default_machine_id(agent)
        for what, value in (("agent", agent), ("machine_id", machine_id)):
            problem = check_name(what, value) if isinstance(value, str) else f"{what} must be a string"
            if problem:
                raise ConfigurationError(problem)
        if not 0 < retry_interval <= max_retry_interval:
            raise ConfigurationError("retry_interval must be positive and at most max_retry_interval")
        where = f"[{host}]" if ":" in host else host
        self._endpoint = f"tcp://{where}:{port}"
        self._pub_endpoint = f"tcp://{where}:{pub_port if pub_port is not None else port + 1}"
        self._ipv6 = ":" in host
        self._auth_token = auth_token
        self._agent = agent
        self._machine_id = machine_id
        self.rolling_restarts = rolling_restarts
        self._curve = curve
        self._limits = limits
        self._request_timeout = float(request_timeout)
        self._connect_timeout = float(connect_timeout)
        self._retry_interval = float(retry_interval)
        self._max_retry_interval = float(max_retry_interval)

        self._events = EventEmitter(CLIENT_EVENTS, log)
        self._open = OpenRequests()
        self._state = _IDLE
        self._initial_data: Any = None
        self._hosting: Hosting | None = None
        self._epoch: str | None = None
        self._permissions: frozenset[str] = frozenset()
        self._heartbeat_interval = 1.0
        self._heartbeat_timeout = 4.0
        self._last_heard = 0.0
        self._round_trip: float | None = None
        self._handshake_failures = 0
        self._registrations = 0
        self._connected: asyncio.Future[None] | None = None
        self._beacon_seen: asyncio.Event | None = None
        self._ctx: zmq.Context[Any] | None = None
        self._dealer: zmq.Socket[Any] | None = None
        self._dealer_pump: Pump | None = None
        self._outbox = Outbox(self._send_held)  # answers to the bridge, batched under load
        self._sockets: list[zmq.Socket[Any]] = []
        self._pumps: list[Pump] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._register_task: asyncio.Task[None] | None = None
        self._manager: ClusterManager | None = None
        self._dispatch: dict[type, Callable[[Any], None]] = {
            Welcome: self._on_answer,
            Reply: self._on_answer,
            ErrorReply: self._on_answer,
            Pong: self._on_pong,
            Reregister: self._on_reregister,
            Goodbye: self._on_goodbye,
            Send: self._on_send,
            Request: self._on_request,
            GuildRequest: self._on_cluster_work,
            EvalReply: self._on_answer,
            Assignment: self._on_assignment,
            Beacon: lambda msg: None,  # the bridge probing whether this connection is still there
            Batch: self._on_batch,
        }

    # ------------------------------------------------------------------ lifetime

    async def connect(self, initial_data: Any = None, *, timeout: float | None = None) -> None:
        """Connect and register; returns once the bridge has accepted this client.

        Raises :class:`AuthenticationError` for a wrong token or a refused CURVE key, and
        :class:`ConnectionLost` if no bridge answers within ``timeout`` (default
        ``connect_timeout``). ``initial_data`` (JSON) reaches the bridge's ``connect`` event.
        """
        if self._state != _IDLE:
            raise RuntimeError(f"this client is {self._state}; create a new Client to connect again")
        dump(initial_data)  # a SerializationError now, not inside the registration loop
        self._initial_data = initial_data
        loop = asyncio.get_running_loop()
        self._connected = loop.create_future()
        self._beacon_seen = asyncio.Event()
        self._open_sockets()
        self._state = _REGISTERING
        self._register_task = loop.create_task(self._register_loop())
        timeout = self._connect_timeout if timeout is None else float(timeout)
        try:
            await asyncio.wait_for(asyncio.shield(self._connected), timeout)
        except TimeoutError:
            await self.close()
            hint = " and that server_key is the bridge's public key" if self._curve else ""
            raise ConnectionLost(
                f"no answer from the bridge at {self._endpoint} within {timeout:g} s: "
                f"check that it is running and reachable{hint}"
            ) from None
        except BaseException:
            await self.close()
            raise
        self._tasks.append(loop.create_task(self._heartbeat()))
        # PUB/SUB joins late: give the subscription one beacon interval to come up, so
        # the first bridge restart is noticed through the beacon's epoch.
        try:
            await asyncio.wait_for(self._beacon_seen.wait(), self._heartbeat_interval * 1.5)
        except TimeoutError:
            log.debug("no beacon yet from %s; continuing", self._pub_endpoint)

    def _open_sockets(self) -> None:
        ctx = new_context()
        self._ctx = ctx
        dealer = ctx.socket(zmq.DEALER)
        sub = ctx.socket(zmq.SUB)
        self._sockets += [dealer, sub]
        # A routing id unique to this process: a new process never inherits the old
        # one's half-closed connection, and the bridge pins it to our key on register.
        dealer.setsockopt(zmq.ROUTING_ID, f"{self._machine_id}/{secrets.token_hex(4)}".encode())
        for sock in (dealer, sub):
            configure_socket(sock, self._limits, curve_client=self._curve)
            sock.setsockopt(zmq.RECONNECT_IVL, 100)
            sock.setsockopt(zmq.RECONNECT_IVL_MAX, 2000)
            if self._ipv6:
                sock.setsockopt(zmq.IPV6, 1)
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        self._dealer_pump = Pump(dealer, self._on_dealer, name="dealer")
        monitor = watch_monitor(dealer, self._on_monitor, name="dealer-monitor")
        self._sockets.append(monitor.sock)
        self._pumps += [self._dealer_pump, Pump(sub, self._on_sub, name="sub"), monitor]
        for pump in self._pumps:
            pump.start()
        dealer.connect(self._endpoint)
        sub.connect(self._pub_endpoint)
        self._dealer = dealer

    async def close(self, reason: str = "closing") -> None:
        """Leave the bridge (it releases this client's clusters at once) and close the sockets."""
        if self._ctx is None:
            self._state = _CLOSED
            return
        if self._state == _READY:
            try:
                self._send(Goodbye(reason=reason))
            except ZmqcrossError:
                pass
        self._state = _CLOSED
        current = asyncio.current_task()
        tasks = [t for t in (*self._tasks, self._register_task) if t is not None and t is not current]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._open.fail_all(ConnectionLost("the client was closed"))
        if self._connected is not None and not self._connected.done():
            self._connected.set_exception(ConnectionLost("the client was closed while connecting"))
            self._connected.exception()  # retrieved: nobody else may be waiting
        for pump in self._pumps:
            pump.stop()
        for sock in self._sockets:
            sock.close(linger=200 if sock is self._dealer else 0)  # let the goodbye leave
        self._sockets.clear()
        self._dealer = None
        ctx, self._ctx = self._ctx, None
        if ctx is not None:
            await asyncio.to_thread(ctx.term)
        await self._events.aclose()

    async def __aenter__(self) -> Client:
        await self.connect()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # ------------------------------------------------------------------ public API

    def on(self, name: str, handler: Handler | None = None) -> Any:
        """Register a handler (sync or async) for an event; usable as ``@client.on(name)``.

        Events: ``ready()`` after each (re-)registration, ``disconnect(reason)`` when the
        bridge goes silent or leaves, ``bridge_message(message)`` (a machine also passes it to
        every cluster's ``message`` handlers), ``bridge_request(request)`` (answer with
        ``await request.reply(data)`` or by returning a value), ``assignment(shard_data, reason)``
        when the bridge hands this machine clusters, ``error(exception)``.
        """
        return self._events.on(name, handler) if handler is not None else self._events.on(name)

    @property
    def id(self) -> str:
        """This client's id on the bridge: its machine id."""
        return self._machine_id

    @property
    def machine_id(self) -> str:
        """The machine id this client registers with."""
        return self._machine_id

    @property
    def agent(self) -> str:
        """The agent name (``"bot"`` for machines hosting clusters)."""
        return self._agent

    @property
    def connected(self) -> bool:
        """Whether the bridge currently has this client registered."""
        return self._state == _READY

    @property
    def permissions(self) -> frozenset[str]:
        """What the bridge allows this client to do (from the last registration)."""
        return self._permissions

    @property
    def hosting(self) -> Hosting | None:
        """What this machine runs, as told to the bridge on every (re-)registration."""
        return self._hosting

    def set_hosting(self, shard_data: ShardData | None) -> None:
        """Record the clusters this machine runs (None: nothing) for future registrations."""
        if shard_data is None or shard_data.standby:
            self._hosting = None
            return
        self._hosting = Hosting(
            plan_version=shard_data.plan_version,
            total_shards=shard_data.total_shards,
            cluster_list=shard_data.cluster_list,
            shard_list=shard_data.shard_list,
        )

    def statistics(self) -> ClientStatistics:
        """The link's state and counters."""
        return ClientStatistics(
            state=self._state,
            machine_id=self._machine_id,
            epoch=self._epoch,
            registrations=self._registrations,
            open_requests=len(self._open),
            round_trip=self._round_trip,
        )

    async def send(self, data: Any) -> None:
        """Send a custom message to the bridge (its ``client_message`` event).

        At most once: raises :class:`ConnectionLost` while the link is down. Use
        :meth:`request` when the sender must know it arrived.
        """
        if self._state != _READY:
            raise ConnectionLost(
                f"not connected to the bridge (link is {self._state}); the message was not sent"
            )
        self._send(Send(data=dump(data)))

    async def request_shard_data(
        self, *, max_clusters: int | None = None, timeout: float | None = None
    ) -> ShardData:
        """Ask the bridge which clusters this machine should run.

        A standby machine (every chunk held) gets empty lists. The answer is also
        recorded as :attr:`hosting`, so a restarted bridge learns it back.
        """
        if max_clusters is not None and (type(max_clusters) is not int or max_clusters < 1):
            raise ConfigurationError(f"max_clusters must be a positive integer, not {max_clusters!r}")
        timeout = self._timeout_or_default(timeout)
        request_id = self._next_request_id()
        msg = ShardDataRequest(id=request_id, deadline=time.time() + timeout, max_clusters=max_clusters)
        data = ShardData.from_json(result_of(await self._exchange(msg, request_id, timeout, "shard data request")))
        self.set_hosting(data)
        return data

    # ------------------------------------------------------------------ requests

    def _next_request_id(self) -> int:
        return self._open.next_id()

    async def _exchange(
        self, msg: Message, request_id: int, timeout: float, what: str
    ) -> Message | ZmqcrossError:
        if self._state in (_IDLE, _CLOSED):
            raise closed_error("the client")
        frames = encode(msg)
        check_limits(frames, self._limits)
        outcome = self._open.future(request_id=request_id, timeout=timeout, what=what, frames=frames)
        try:
            self._send_frames(frames)
        except ConnectionLost as exc:
            self._open.finish(request_id, exc)
        return await outcome

    # ------------------------------------------------------------------ clusters

    def _answer(self, msg: Message) -> None:
        try:
            frames = answer_frames(msg, self._limits)
        except ZmqcrossError as exc:
            log.warning("could not answer the bridge: %s", exc.message)
            return
        self._outbox.put(None, frames)

    def _send_held(self, key: None, frames: list[bytes]) -> None:
        try:
            self._send_now(frames)
        except ZmqcrossError as exc:
            log.warning("could not answer the bridge: %s", exc.message)

    # ------------------------------------------------------------------ receiving

    def _on_batch(self, batch: Batch) -> None:
        for frames in batch.messages():
            self._on_dealer(frames, nested=True)

    def _on_dealer(self, frames: list[bytes], *, nested: bool = False) -> None:
        try:
            header = read_header(frames, self._limits)
            if header.get("type") == "eval":  # relayed from its header (zmqcross.relaying)
                route = eval_route(header, frames)
                self._last_heard = time.monotonic()
                self._on_eval(route)
                return
            msg = decode_header(header, frames)
            if nested and type(msg) is Batch:
                raise ProtocolError("a batch inside a batch")
        except ProtocolError as exc:
            log.warning("bad message from the bridge: %s", exc.message)
            self._events.emit("error", exc)
            return
        self._last_heard = time.monotonic()
        handler = self._dispatch.get(type(msg))
        if handler is None:
            log.warning("ignored a %r message, which bridges do not send", msg.type)
            return
        handler(msg)

    def _on_answer(self, msg: Welcome | Reply | ErrorReply) -> None:
        if isinstance(msg, ErrorReply) and msg.reply_to is None:
            error = msg.error.to_exception()
            log.warning("the bridge rejected a message from this client: %s", error.message)
            self._events.emit("error", error)
            return
        if not self._open.finish(msg.reply_to, msg):
            log.debug("ignored a late answer to request %s", msg.reply_to)

    def _on_pong(self, msg: Pong) -> None:
        self._round_trip = max(time.time() - msg.sent_at, 0.0)

    def _on_send(self, msg: Send) -> None:
        if self._manager is not None:  # a machine passes the bridge's messages on to its bots
            self._manager.send_to_clusters(msg.data)
        self._events.emit("bridge_message", IncomingMessage(msg.data))

    def _on_request(self, msg: Request) -> None:
        if msg.deadline < time.time():
            log.debug("dropped request %d: its deadline passed in transit", msg.id)
            return
        if msg.service == STATUS_SERVICE:  # the bridge collecting the fleet's status
            statuses = self._manager.statuses() if self._manager is not None else []
            self._answer(Reply(reply_to=msg.id, data=dump([c.to_json() for c in statuses])))
            return
        request = IncomingRequest(
            msg.data, request_id=msg.id, deadline=msg.deadline, respond=self._send, origin=msg.origin
        )
        serve_request(
            request,
            self._events.handlers("bridge_request"),
            (request,),
            self._events,
            "bridge_request",
            missing=f"client {self._machine_id!r} has no 'bridge_request' handler",
        )

    # ------------------------------------------------------------------ sending

    def _send(self, msg: Message) -> None:
        frames = encode(msg)
        check_limits(frames, self._limits)
        self._send_frames(frames)

    def _send_frames(self, frames: list[bytes]) -> None:
        self._outbox.flush_key(None)  # held answers go first: messages keep their order
        self._send_now(frames)

    def _send_now(self, frames: list[bytes]) -> None:
        dealer = self._dealer
        if dealer is None:
            raise closed_error("the client")
        try:
            send_frames(dealer, frames)
        except zmq.Again:
            raise ConnectionLost(
                f"the queue to the bridge at {self._endpoint} is full: the bridge is unreachable or not reading"
            ) from None
        finally:
            if self._dealer_pump is not None:
                self._dealer_pump.kick()
