"""A client of the bridge: a machine agent (``agent="bot"``), a dashboard, or any service.

It holds a DEALER to the bridge's ROUTER and a SUB to its PUB, registers with the auth
token (and CURVE key), keeps the link alive with heartbeats, and re-registers by itself
when the bridge restarts, telling the new bridge what it hosts. Requests carry
deadlines; one the bridge refused to run because it did not know us is sent again after
re-registration if its deadline allows, and otherwise fails with a timeout.

:class:`Client` is the whole public surface, and receives what the bridge sends. Its
parts are objects it builds and hands what they need: the sockets
(:class:`~._channel.Channel`), the link's life and states (:class:`~._link.Link`), and a
machine's relaying to its clusters (:class:`~._relay.MachineRelay`). The fleet calls it
shares with :class:`~zmqcross.Shard` are built by :class:`~zmqcross._calls.FleetCalls`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .._calls import FleetCalls
from .._events import EventEmitter, Handler
from .._handover import HandoverPlan
from .._identify import IdentifyParams
from .._relaying import eval_route
from .._requests import OpenRequests
from .._transport import closed_error
from ..cluster._child import CLUSTER_PROCESS_ENV
from ..cluster.manager import ClusterManager
from ..errors import ConfigurationError, ConnectionLost, ProtocolError, ZmqcrossError
from ..messages import IncomingMessage, IncomingRequest, serve_request
from ..planning import ShardData
from ..protocol import (
    DEFAULT_LIMITS,
    DEFAULT_TIMEOUT,
    RESHARD_SERVICE,
    RESTART_CLUSTER_SERVICE,
    RESTART_SERVICE,
    STATUS_SERVICE,
    Assignment,
    Batch,
    Beacon,
    ErrorReply,
    EvalReply,
    Goodbye,
    GuildRequest,
    Handover,
    Hosting,
    Leaving,
    Limits,
    Message,
    Ping,
    Pong,
    Reply,
    Request,
    Reregister,
    Send,
    ShardDataRequest,
    Welcome,
    check_limits,
    decode,
    decode_header,
    dump,
    encode,
    read_header,
    result_of,
)
from ..registry import check_name
from ..relay import Upcalls
from ..security import CurveClient
from ..status import FleetStatus
from ._channel import Channel
from ._link import Link, LinkState
from ._relay import MachineRelay

__all__ = ["CLIENT_EVENTS", "Client", "ClientStatistics", "default_machine_id"]

log = logging.getLogger("zmqcross.client")

CLIENT_EVENTS = (
    "assignment",
    "bridge_message",
    "bridge_request",
    "claim_refused",
    "disconnect",
    "error",
    "ready",
)
"""Events a :class:`Client` emits; see :meth:`Client.on`."""

# The link states in which requests cannot be sent (a tuple: membership by identity is
# cheaper than hashing an Enum member, and every request checks it).
_UNUSABLE = (LinkState.IDLE, LinkState.CLOSED)


def _refuse_in_a_child(machine_id: str, agent: str) -> None:
    """Fail before connecting when this process re-runs a machine's script by mistake.

    With multiprocessing's spawn start method a child imports the parent's script as
    ``__mp_main__``; without an ``if __name__ == "__main__":`` guard it would connect as the
    machine and replace it on the bridge. Cluster processes are started clean (they never
    import the machine's script), so this catches the user's own child processes, and a
    bot file that starts a machine agent inside a cluster.
    """
    main = sys.modules.get("__main__")
    if getattr(main, "__name__", None) == "__mp_main__":
        raise ConfigurationError(
            f"this process (pid {os.getpid()}) is a multiprocessing child re-running the machine's "
            f"script, which connects as machine {machine_id!r} and would replace the real machine on "
            'the bridge. Put the script\'s top level under if __name__ == "__main__": (or in a function '
            "called from there)"
        )
    if agent == "bot" and os.environ.get(CLUSTER_PROCESS_ENV):
        raise ConfigurationError(
            f"cluster {os.environ[CLUSTER_PROCESS_ENV]} tried to connect to the bridge as machine "
            f"{machine_id!r}: a bot file must not create a Client or Machine; its machine relays for "
            "it (use bot.cluster and zmqcross.Shard)"
        )


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


class Client:
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
        self._agent = agent
        self._machine_id = machine_id
        self.rolling_restarts = rolling_restarts
        self._curve = curve
        self._limits = limits
        self._connect_timeout = float(connect_timeout)

        self._events = EventEmitter(CLIENT_EVENTS, log)
        self._open = OpenRequests()
        self._channel = Channel(
            host=host,
            port=port,
            pub_port=pub_port if pub_port is not None else port + 1,
            machine_id=machine_id,
            curve=curve,
            limits=limits,
        )
        self._link = Link(
            self._channel,
            open_requests=self._open,
            events=self._events,
            limits=limits,
            auth_token=auth_token,
            machine_id=machine_id,
            agent=agent,
            curve=curve is not None,
            retry_interval=float(retry_interval),
            max_retry_interval=float(max_retry_interval),
        )
        self._relay = MachineRelay(self._channel, self._link, open_requests=self._open, machine_id=machine_id)
        self._calls = FleetCalls(
            next_id=self._open.next_id, exchange=self._exchange, request_timeout=request_timeout
        )
        self._tasks: list[asyncio.Task[None]] = []
        self._upcall: Upcalls | None = None  # the relay core's way onto this client's loop
        self._dispatch: dict[type, Callable[[Any], None]] = {
            Welcome: self._on_answer,
            Reply: self._on_answer,
            ErrorReply: self._on_answer,
            Pong: self._link.on_pong,
            Reregister: self._link.on_reregister,
            Goodbye: self._link.on_goodbye,
            Send: self._on_send,
            Request: self._on_request,
            EvalReply: self._on_answer,
            Assignment: self._on_assignment,
            Handover: self._relay.on_handover,
            Beacon: lambda msg: None,  # the bridge probing whether this connection is still there
            Ping: self._on_ping,
            Batch: self._on_batch,
        }

    # ------------------------------------------------------------------ lifetime

    async def connect(self, initial_data: Any = None, *, timeout: float | None = None) -> None:
        """Connect and register; returns once the bridge has accepted this client.

        Raises :class:`AuthenticationError` for a wrong token or a refused CURVE key, and
        :class:`ConnectionLost` if no bridge answers within ``timeout`` (default
        ``connect_timeout``). ``initial_data`` (JSON) reaches the bridge's ``connect`` event.
        """
        link = self._link
        if link.state is not LinkState.IDLE:
            raise RuntimeError(f"this client is {link.state.value}; create a new Client to connect again")
        _refuse_in_a_child(self._machine_id, self._agent)
        dump(initial_data)  # a SerializationError now, not inside the registration loop
        self._upcall = Upcalls(asyncio.get_running_loop())
        self._channel.open(on_dealer=self._on_core, on_sub=link.on_sub, on_monitor=link.on_monitor)
        connected = link.start(initial_data)
        timeout = self._connect_timeout if timeout is None else float(timeout)
        try:
            await asyncio.wait_for(asyncio.shield(connected), timeout)
        except TimeoutError:
            await self.close()
            hint = " and that server_key is the bridge's public key" if self._curve else ""
            raise ConnectionLost(
                f"no answer from the bridge at {self._channel.endpoint} within {timeout:g} s: "
                f"check that it is running and reachable{hint}"
            ) from None
        except BaseException:
            await self.close()
            raise
        self._tasks.append(link.start_heartbeats())
        if not await link.wait_beacon():
            log.debug("no beacon yet from %s; continuing", self._channel.pub_endpoint)

    async def close(self, reason: str = "closing") -> None:
        """Leave the bridge (it releases this client's clusters at once) and close the sockets."""
        link = self._link
        if not self._channel.opened:
            link.close()
            return
        if link.connected:
            try:
                self._channel.send(Goodbye(reason=reason))
            except ZmqcrossError:
                pass
        registering = link.close()
        current = asyncio.current_task()
        tasks = [t for t in (*self._tasks, registering) if t is not None and t is not current]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._open.fail_all(ConnectionLost("the client was closed"))
        link.abandon_connect()
        await self._channel.close()
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
        when the bridge hands this machine clusters, ``claim_refused(reason)`` when a
        re-registration's claim was refused (the clusters it runs are another machine's now:
        stop them), ``error(exception)``.
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
    def state(self) -> LinkState:
        """Where the link to the bridge is: idle, registering, ready, lost or closed."""
        return self._link.state

    @property
    def connected(self) -> bool:
        """Whether the bridge currently has this client registered."""
        return self._link.connected

    @property
    def permissions(self) -> frozenset[str]:
        """What the bridge allows this client to do (from the last registration)."""
        return self._link.permissions

    @property
    def hosting(self) -> Hosting | None:
        """What this machine runs, as told to the bridge on every (re-)registration."""
        return self._link.hosting

    def set_hosting(self, shard_data: ShardData | None) -> None:
        """Record the clusters this machine runs (None: nothing) for future registrations."""
        if shard_data is None or shard_data.standby:
            self._link.hosting = None
            return
        self._link.hosting = Hosting(
            plan_version=shard_data.plan_version,
            total_shards=shard_data.total_shards,
            cluster_list=shard_data.cluster_list,
            shard_list=shard_data.shard_list,
        )

    def statistics(self) -> ClientStatistics:
        """The link's state and counters."""
        link = self._link
        return ClientStatistics(
            state=link.state.value,
            machine_id=self._machine_id,
            epoch=link.epoch,
            registrations=link.registrations,
            open_requests=len(self._open),
            round_trip=link.round_trip,
        )

    async def send(self, data: Any) -> None:
        """Send a custom message to the bridge (its ``client_message`` event).

        At most once: raises :class:`ConnectionLost` while the link is down. Use
        :meth:`request` when the sender must know it arrived.
        """
        if not self._link.connected:
            raise ConnectionLost(
                f"not connected to the bridge (link is {self._link.state.value}); the message was not sent"
            )
        self._channel.send(Send(data=dump(data)))

    async def broadcast_eval(
        self,
        script: str | Callable[..., Any],
        *,
        context: Any = None,
        timeout: float | None = None,
        clusters: Sequence[int] | None = None,
        shards: Sequence[int] | None = None,
        guild_id: int | None = None,
        return_exceptions: bool = False,
    ) -> list[Any]:
        """Run ``script`` on every cluster of every machine; one result per cluster, in cluster id order.

        See :meth:`zmqcross.Bridge.broadcast_eval`; raises :class:`BroadcastEvalError` if any
        cluster failed, unless ``return_exceptions``.
        """
        return await self._calls.broadcast_eval(
            script,
            context=context,
            timeout=timeout,
            clusters=clusters,
            shards=shards,
            guild_id=guild_id,
            return_exceptions=return_exceptions,
        )

    async def request(self, data: Any, *, timeout: float | None = None) -> Any:
        """Send a custom request to the bridge (its ``client_request`` event); return the answer."""
        return await self._calls.request(data, timeout=timeout)

    async def call_service(self, service: str, data: Any, *, timeout: float | None = None) -> Any:
        """Call a bridge service (see :meth:`Bridge.add_service`), such as the cache; return its answer."""
        return await self._calls.call_service(service, data, timeout=timeout)

    async def request_to_client(
        self,
        data: Any,
        *,
        client_id: str | None = None,
        agent: str | None = None,
        timeout: float | None = None,
    ) -> Any:
        """Send a custom request to another client through the bridge; return its answer.

        Name the client by ``client_id``, or by ``agent`` when exactly one client has it.
        Raises :class:`ClientNotFound` if no (or more than one) client matches.
        """
        return await self._calls.request_to_client(data, client_id=client_id, agent=agent, timeout=timeout)

    async def request_to_guild(
        self, data: Any, *, guild_id: int | None = None, timeout: float | None = None
    ) -> Any:
        """Send a custom request to the cluster that owns ``guild_id`` (or ``data["guild_id"]``)."""
        return await self._calls.request_to_guild(data, guild_id=guild_id, timeout=timeout)

    async def request_shard_data(
        self, *, max_clusters: int | None = None, timeout: float | None = None
    ) -> ShardData:
        """Ask the bridge which clusters this machine should run.

        A standby machine (every chunk held) gets empty lists. The answer is also
        recorded as :attr:`hosting`, so a restarted bridge learns it back.
        """
        if max_clusters is not None and (type(max_clusters) is not int or max_clusters < 1):
            raise ConfigurationError(f"max_clusters must be a positive integer, not {max_clusters!r}")
        timeout = self._calls.timeout_or_default(timeout)
        request_id = self._open.next_id()
        msg = ShardDataRequest(id=request_id, deadline=time.time() + timeout, max_clusters=max_clusters)
        data = ShardData.from_json(
            result_of(await self._exchange(msg, request_id, timeout, "shard data request"))
        )
        self.set_hosting(data)
        return data

    async def fleet_status(self, *, timeout: float | None = None) -> FleetStatus:
        """The bridge's view of the whole fleet (see :meth:`Bridge.status`)."""
        return FleetStatus.from_json(await self.call_service(STATUS_SERVICE, None, timeout=timeout))

    async def wait_ready(
        self, *, clusters: Sequence[int] | None = None, timeout: float | None = None
    ) -> FleetStatus:
        """Wait until every cluster of the fleet (or each of ``clusters``) is ready; return that status.

        See :meth:`zmqcross.Shard.wait_ready`: a ``timeout`` that runs out raises
        :class:`~zmqcross.RequestTimeout` naming each cluster not ready and why.
        """
        return await self._calls.wait_ready(clusters=clusters, timeout=timeout)

    async def reshard(
        self,
        *,
        total_shards: int | None = None,
        shards_per_cluster: int | None = None,
        total_machines: int | None = None,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        """Ask the bridge to switch the fleet to a new plan (see :meth:`Bridge.reshard`); needs ``admin``."""
        options = {
            name: value
            for name, value in (
                ("total_shards", total_shards),
                ("shards_per_cluster", shards_per_cluster),
                ("total_machines", total_machines),
            )
            if value is not None
        }
        return await self.call_service(RESHARD_SERVICE, options, timeout=timeout)  # type: ignore[no-any-return]

    async def restart(
        self,
        *,
        clusters: Sequence[int] | None = None,
        machines: Sequence[str] | None = None,
        all: bool = False,
        concurrency: int = 1,
        cluster_timeout: float | None = None,
        progress: Callable[[dict[str, Any]], object] | None = None,
        poll: float = 0.5,
    ) -> dict[str, Any]:
        """Restart clusters across the fleet (see :meth:`Bridge.restart`); needs ``admin``.

        The bridge runs the restart; this waits for it, calling ``progress(record)`` each time
        the record changes (polled every ``poll`` seconds), and returns the final record.
        Raises :class:`ZmqcrossError` naming the cluster if the restart failed, or if it was
        cancelled. ``cluster_timeout`` bounds each cluster's restart at the bridge.
        """
        options: dict[str, Any] = {"concurrency": concurrency}
        if clusters is not None:
            options["clusters"] = list(clusters)
        if machines is not None:
            options["machines"] = list(machines)
        if all:
            options["all"] = True
        if cluster_timeout is not None:
            options["timeout"] = cluster_timeout
        answer = await self.call_service(RESTART_SERVICE, options)
        record: dict[str, Any] = answer["run"]
        started, seen = record["started_at"], None
        while True:
            if record != seen and progress is not None:
                progress(record)
            seen = record
            if record["state"] != "running":
                break
            await asyncio.sleep(poll)
            current = (await self.fleet_status()).restart
            if current is None or current.get("started_at") != started:
                raise ZmqcrossError("the restart's record is gone from the bridge (was it restarted?)")
            record = current
        if record["state"] != "done":
            raise ZmqcrossError(record["progress"])
        return record

    async def cancel_restart(self) -> dict[str, Any] | None:
        """Stop the fleet's restart after the clusters restarting now; its record (None: none ran)."""
        answer = await self.call_service(RESTART_SERVICE, {"cancel": True})
        run: dict[str, Any] | None = answer["run"]
        return run

    async def leave(self, reason: str = "draining") -> None:
        """Tell the bridge this machine is draining: its clusters go to a standby now.

        The client stays connected so that work already in flight can still be answered;
        :meth:`close` ends it.
        """
        if self._link.connected:
            self._channel.send(Leaving(reason=reason))

    def unlisten(self) -> None:
        """Stop relaying to the clusters (they were stopped): this machine runs nothing now."""
        self._relay.unlisten()
        self.set_hosting(None)

    def listen(self, manager: ClusterManager) -> None:
        """Make this client the agent of ``manager``'s clusters.

        Evals and guild requests from the bridge go to the clusters; requests made inside
        the bots (``Shard``) go to the bridge; re-registrations report the clusters run here.
        The bridge hears it at once: that claim is what makes a chunk it handed out placed.
        """
        self._relay.listen(manager)
        self.update_hosting(manager.shard_data)

    def update_hosting(self, shard_data: ShardData | None) -> None:
        """Record what this machine now runs and tell the bridge at once (after a rolling restart)."""
        self.set_hosting(shard_data)
        if self._link.connected:
            self._tasks.append(asyncio.get_running_loop().create_task(self._refresh_registration()))

    # ------------------------------------------------------------------ requests

    async def _exchange(
        self, msg: Message, request_id: int, timeout: float, what: str
    ) -> Message | ZmqcrossError:
        if self._link.state in _UNUSABLE:
            raise closed_error("the client")
        frames = encode(msg)
        check_limits(frames, self._limits)
        outcome = self._open.future(request_id=request_id, timeout=timeout, what=what, frames=frames)
        try:
            self._channel.send_frames(frames)
        except ConnectionLost as exc:
            self._open.finish(request_id, exc)
        return await outcome

    async def _refresh_registration(self) -> None:
        # Registering again from the same connection updates what the bridge knows of us
        # without dropping the link: sends keep working meanwhile.
        timeout = self._calls.request_timeout
        request_id = self._open.next_id()
        outcome = self._open.future(request_id=request_id, timeout=timeout, what="registration update")
        try:
            self._channel.send(self._link.register_message(request_id, timeout))
        except ZmqcrossError as exc:
            self._open.finish(request_id, exc)
        result = await outcome
        if isinstance(result, Welcome):
            if result.notice:
                log.warning("the bridge says: %s", result.notice)
            if result.refused_claim:  # what this machine started is another's now: stop it
                self._events.emit("claim_refused", result.notice or "claim refused")
        else:
            log.warning("could not update the bridge on what this machine runs: %s", result)

    # ------------------------------------------------------------------ receiving

    def _on_core(self, frames: list[bytes], nested: bool = False) -> None:
        # On the relay core's thread: evals and guild requests are relayed from here; the
        # rest goes to the loop as it came (where a malformed message is reported).
        try:
            header = read_header(frames, self._limits)
            kind = header.get("type")
            if kind == "eval":  # relayed from its header (zmqcross._relaying)
                route = eval_route(header, frames)
                self._link.last_heard = time.monotonic()
                self._relay.on_eval(route)
                return
            if kind == "guild_request" or (kind == "batch" and not nested):
                msg = decode_header(header, frames)
                self._link.last_heard = time.monotonic()
                if isinstance(msg, GuildRequest):
                    self._relay.on_guild(msg)
                    return
                if isinstance(msg, Batch):
                    for inner in msg.messages():
                        self._on_core(inner, True)
                    return
        except ProtocolError:
            pass  # reported by the loop's own reading of it
        assert self._upcall is not None
        self._upcall(self._on_dealer, frames, nested)

    def _on_dealer(self, frames: list[bytes], nested: bool = False) -> None:
        try:
            msg = decode(frames, self._limits)
            if nested and type(msg) is Batch:
                raise ProtocolError("a batch inside a batch")
        except ProtocolError as exc:
            log.warning("bad message from the bridge: %s", exc.message)
            self._events.emit("error", exc)
            return
        self._link.last_heard = time.monotonic()
        handler = self._dispatch.get(type(msg))
        if handler is None:
            log.warning("ignored a %r message, which bridges do not send", msg.type)
            return
        handler(msg)

    def _on_batch(self, batch: Batch) -> None:
        for frames in batch.messages():
            self._on_dealer(frames, nested=True)

    def _on_answer(self, msg: Welcome | Reply | ErrorReply) -> None:
        if isinstance(msg, ErrorReply) and msg.reply_to is None:
            error = msg.error.to_exception()
            log.warning("the bridge rejected a message from this client: %s", error.message)
            self._events.emit("error", error)
            return
        if not self._open.finish(msg.reply_to, msg):
            log.debug("ignored a late answer to request %s", msg.reply_to)

    def _on_ping(self, msg: Ping) -> None:
        # The bridge asks this client to prove it reads what it is sent (its send bound):
        # the Pong leaves after everything before the Ping was read, which is the proof.
        try:
            self._channel.send(Pong(sent_at=msg.sent_at))
        except ZmqcrossError as exc:
            log.debug("could not answer the bridge's read probe: %s", exc)

    def _on_send(self, msg: Send) -> None:
        self._relay.send_to_clusters(msg.data)  # a machine passes the bridge's messages on to its bots
        self._events.emit("bridge_message", IncomingMessage(msg.data))

    def _on_request(self, msg: Request) -> None:
        if msg.deadline < time.time():
            log.debug("dropped request %d: its deadline passed in transit", msg.id)
            return
        if msg.service == STATUS_SERVICE:  # the bridge collecting the fleet's status
            statuses = self._relay.statuses()
            self._channel.answer(Reply(reply_to=msg.id, data=dump([c.to_json() for c in statuses])))
            return
        if msg.service == RESTART_CLUSTER_SERVICE:  # the bridge restarting clusters one by one
            self._tasks.append(asyncio.get_running_loop().create_task(self._relay.restart(msg)))
            return
        request = IncomingRequest(
            msg.data, request_id=msg.id, deadline=msg.deadline, respond=self._channel.send, origin=msg.origin
        )
        serve_request(
            request,
            self._events.handlers("bridge_request"),
            (request,),
            self._events,
            "bridge_request",
            missing=f"client {self._machine_id!r} has no 'bridge_request' handler",
        )

    @staticmethod
    def _handover_plan(msg: Assignment) -> HandoverPlan | None:
        try:
            return HandoverPlan.from_json(msg.handover)
        except ValueError as exc:
            log.warning(
                "the assignment's handover plan is malformed (%s); this machine hands over from its own clusters only",
                exc,
            )
            return None

    def _on_assignment(self, msg: Assignment) -> None:
        data = ShardData(
            total_shards=msg.total_shards,
            shard_list=msg.shard_list,
            cluster_list=msg.cluster_list,
            total_clusters=msg.total_clusters,
            plan_version=msg.plan_version,
            identify=IdentifyParams.from_json(msg.identify),
            handover=self._handover_plan(msg),
        )
        log.info(
            "the bridge assigns clusters %s of plan %s: %s",
            list(data.cluster_list),
            data.plan_version,
            msg.reason,
        )
        self._events.emit("assignment", data, msg.reason)
