"""The public :class:`Bridge`: its whole surface in one place, built from the parts beside it.

``Bridge`` validates its options, builds the fleet state (:mod:`._fleet`), the socket-free
core (:mod:`._core`) and the I/O shell (:mod:`._shell`), and delegates to them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from .._clock import LOOP_CLOCK
from .._discord_api import GatewayBot, fetch_gateway_bot
from .._events import EventEmitter, Handler
from .._fanout import eval_outcome, eval_request, guild_of
from .._identify import DISCORD_IDENTIFY_WINDOW, IDENTIFY_SERVICE, LOCAL_RECHECK
from ..errors import ClientNotFound, ConfigurationError
from ..messages import IncomingRequest
from ..planning import ClusterListParser, ShardPlan, build_plan
from ..protocol import (
    DEFAULT_LIMITS,
    DEFAULT_TIMEOUT,
    RESHARD_SERVICE,
    RESTART_CLUSTER_SERVICE,
    RESTART_SERVICE,
    STATUS_SERVICE,
    GuildRequest,
    Limits,
    Message,
    Request,
    Send,
    check_limits,
    dump,
    encode,
    result_of,
)
from ..registry import ClientInfo
from ..security import AccessPolicy, CurveServer
from ..status import FleetStatus
from ._core import BridgeCore
from ._fleet import PLAN_OPTIONS, FleetState
from ._identify import IdentifyQueue
from ._identify_service import IdentifyService, IdentifySettings
from ._observers import Observer
from ._outgoing import BridgeCounters
from ._restart import DEFAULT_CLUSTER_TIMEOUT, RestartRun, Restarts, check_pacing, pick_targets
from ._routing import ClientFilter, Service, ServiceHandler, ServiceOwner
from ._settings import DEFAULT_CLAIM_TIMEOUT, DEFAULT_LEASE, MAX_LEASE, MAX_TIMEOUT, CoreSettings
from ._shell import BridgeShell, endpoint
from ._window import SendWindow

if TYPE_CHECKING:
    from ..metrics import BridgeMetrics

__all__ = ["BRIDGE_EVENTS", "Bridge", "BridgeStatistics"]

log = logging.getLogger("zmqcross.bridge")

BRIDGE_EVENTS = (
    "assignment_unclaimed",
    "client_message",
    "client_request",
    "connect",
    "disconnect",
    "error",
    "identify_held",
    "ready",
    "restart_progress",
)
"""Events a :class:`Bridge` emits; see :meth:`Bridge.on`."""


@dataclass(frozen=True, slots=True)
class BridgeStatistics:
    """A snapshot of a running bridge's counters.

    ``messages_out`` counts messages; ``sends`` counts ROUTER writes, where a batch of
    answers to one peer is one write (under load far fewer than messages).
    """

    clients: int
    open_requests: int
    messages_in: int
    messages_out: int
    protocol_errors: int
    refused_registrations: int
    refused_keys: int
    plan_version: str | None
    sends: int = 0


def _settle(answer: asyncio.Future[Message], outcome: Message) -> None:
    if not answer.done():
        answer.set_result(outcome)


class Bridge:
    """The central process of a zmqcross fleet.

    ::

        async with Bridge(auth_token="...", total_shards=16, total_machines=4,
                          shards_per_cluster=2) as bridge:
            await bridge.wait_closed()

    ``port`` is the ROUTER's port and ``pub_port`` the PUB's (default ``port + 1``);
    ``port=0`` picks free ports, readable from :attr:`port` and :attr:`pub_port` after
    :meth:`start`. ``total_shards="auto"`` asks Discord (``token`` is the bot token;
    ``api_base`` or ``$ZMQCROSS_DISCORD_API`` redirects the call) and rounds its answer up
    to a multiple of ``max_concurrency``.

    The bridge paces the whole fleet's IDENTIFYs (:meth:`identify_queue`): per rate-limit
    bucket ``shard_id % max_concurrency`` one per ``identify_window`` (plus a margin), and
    never past ``session_reserve`` of Discord's daily session budget. With a ``token`` it
    asks Discord for ``max_concurrency`` and the budget; without one ``max_concurrency``
    (default 1) and ``session_budget`` (default: not counted) say them. With ``curve`` set,
    only allow-listed client keys get in; ``auth_token`` is checked in every case.
    A client silent for ``heartbeat_timeout`` seconds is dropped with a ``disconnect``.
    Machines run their clusters under a ``lease`` (seconds) that each answered heartbeat
    renews: a machine that hears nothing from the bridge for that long stops its clusters'
    Discord sessions, and the chunk of a machine lost without a goodbye goes to a standby
    only after its lease has surely run out. A longer lease survives longer bridge outages
    without restarting anything; a shorter one fails over sooner. A machine that ran
    nothing and is handed a chunk must claim it (say it runs it) within ``claim_timeout``
    seconds, or the chunk goes to the next standby and ``assignment_unclaimed`` fires.
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
        max_concurrency: int | None = None,
        identify_window: float = DISCORD_IDENTIFY_WINDOW,
        session_budget: int | None = None,
        session_reserve: int | None = None,
        lease: float = DEFAULT_LEASE,
        claim_timeout: float = DEFAULT_CLAIM_TIMEOUT,
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
        if not heartbeat_timeout < lease <= MAX_LEASE:
            raise ConfigurationError(
                f"lease must be longer than heartbeat_timeout ({heartbeat_timeout:g} s) and at most "
                f"{MAX_LEASE:g} s, not {lease!r}"
            )
        if not (isinstance(claim_timeout, int | float) and claim_timeout > heartbeat_interval):
            raise ConfigurationError(
                f"claim_timeout must be longer than heartbeat_interval ({heartbeat_interval:g} s), "
                f"not {claim_timeout!r}"
            )
        if not 0 < request_timeout <= MAX_TIMEOUT:
            raise ConfigurationError(
                f"request_timeout must be positive and at most {MAX_TIMEOUT:g} s (MAX_TIMEOUT), not {request_timeout!r}"
            )
        if total_shards != "auto" and type(total_shards) is not int:
            raise ConfigurationError(
                f'total_shards must be a positive integer or "auto", not {total_shards!r}'
            )
        options: dict[str, Any] = dict(
            zip(
                PLAN_OPTIONS,
                (shards_per_cluster, total_machines, shard_list, parse_cluster_list),
                strict=True,
            )
        )
        # An impossible plan fails here, at construction, not at start.
        plan = build_plan(total_shards, **options) if total_shards != "auto" else None
        self._discord = (token, api_base)
        self._identify_settings = IdentifySettings(
            max_concurrency, identify_window, session_budget, session_reserve
        )
        self._identify: IdentifyService | None = None
        self._heartbeat_interval = float(heartbeat_interval)
        self._request_timeout = float(request_timeout)
        self._limits = limits
        self._metrics_address = (metrics_host, metrics_port)
        self._metrics: BridgeMetrics | None = None
        self._closed: asyncio.Event | None = None
        self._events = EventEmitter(BRIDGE_EVENTS, log)
        counters = BridgeCounters()
        window = SendWindow()
        self._shell = BridgeShell(
            host=host,
            port=port,
            pub_port=pub_port if pub_port is not None else (port + 1 if port else 0),
            curve=curve,
            limits=limits,
            counters=counters,
            window=window,
            heartbeat_interval=float(heartbeat_interval),
        )
        self._fleet = FleetState(plan, options)
        self._core = BridgeCore(
            fleet=self._fleet,
            outgoing=self._shell,
            clock=LOOP_CLOCK,
            events=self._events,
            counters=counters,
            window=window,
            settings=CoreSettings(
                auth_token=auth_token,
                epoch=secrets.token_hex(8),
                policy=permissions or AccessPolicy(),
                heartbeat_interval=float(heartbeat_interval),
                heartbeat_timeout=float(heartbeat_timeout),
                limits=limits,
                key_name=(lambda user_id: curve.allowed.get(user_id.encode())) if curve is not None else None,
                lease=float(lease),
                claim_timeout=float(claim_timeout),
            ),
        )
        self._router = self._core.router
        self._router.add_service(STATUS_SERVICE, self._serve_status, action="request")
        self._router.add_service(RESHARD_SERVICE, self._serve_reshard, action="admin")
        self._router.add_service(RESTART_SERVICE, self._serve_restart, action="admin")
        self._restarts = Restarts(
            ask=self._ask_restart,
            holder=self._fleet.placement_holder,
            progress=lambda run: self._events.emit("restart_progress", run.to_json()),
        )
        self._router.add_service(IDENTIFY_SERVICE, self._serve_identify, action="host")
        self._curve_on = curve is not None

    # ------------------------------------------------------------------ lifetime

    async def start(self) -> None:
        """Resolve the shard plan, start the ZAP handler, bind both sockets, begin heartbeats."""
        if self._shell.running:
            raise RuntimeError("this bridge is already started")
        discord = await self._ask_discord()
        if not self._fleet.started:
            assert discord is not None  # _ask_discord raised otherwise
            # Every bucket gets as many shards as any other: round up to max_concurrency.
            concurrency = discord.max_concurrency
            shards = -(-discord.shards // concurrency) * concurrency
            self._fleet.begin(shards)
            log.info(
                'total_shards="auto": Discord recommends %d shards; %d with max_concurrency %d',
                discord.shards,
                shards,
                concurrency,
            )
        self._start_identify_queue(discord)
        self._closed = asyncio.Event()
        self._shell.start(self._core)
        try:
            await self._start_metrics()
        except BaseException:
            self._shell.close_sockets()
            raise
        plan = self._fleet.plan
        log.info(
            "bridge listening on %s (pub %s), CURVE %s, plan %s: %d shards in %d clusters for %d machine chunks",
            self.endpoint,
            self.pub_endpoint,
            "on" if self._curve_on else "off",
            plan.version,
            plan.total_shards,
            plan.total_clusters,
            len(plan.chunks),
        )
        self._events.emit("ready")

    async def _ask_discord(self) -> GatewayBot | None:
        token, api_base = self._discord
        auto = not self._fleet.started
        if not token and not auto:
            return None
        try:
            return await fetch_gateway_bot(token or "", base=api_base)
        except ConfigurationError as exc:
            if auto:
                raise ConfigurationError(f'total_shards="auto": {exc.message}') from None
            log.warning(
                "cannot ask Discord for its IDENTIFY limits (%s); pacing by the bridge's settings",
                exc.message,
            )
            return None

    def _start_identify_queue(self, discord: GatewayBot | None) -> None:
        settings = self._identify_settings
        params = settings.params(discord)
        self._fleet.identify = params
        now = LOOP_CLOCK.monotonic()
        # Machines that paced on their own while no bridge answered may still do so for a
        # heartbeat and a recheck after this one starts: grant nothing before that.
        guard = params.interval + LOCAL_RECHECK + self._heartbeat_interval
        budget = settings.budget(discord, now=now)
        queue = IdentifyQueue(params, budget=budget, now=now, start_guard=guard)
        self._identify = IdentifyService(queue, self._fleet, clock=LOOP_CLOCK, events=self._events)
        log.info(
            "IDENTIFY queue: max_concurrency %d, one per %.3g s per bucket, session budget %s",
            params.max_concurrency,
            params.interval,
            "not counted"
            if budget is None
            else f"{budget.remaining}/{budget.total} (reserve {budget.reserve})",
        )

    async def _serve_identify(self, request: IncomingRequest, client: ClientInfo) -> Any:
        if self._identify is None:
            raise ConfigurationError("the bridge is not started")
        return await self._identify(request, client)

    async def _start_metrics(self) -> None:
        host, port = self._metrics_address
        if port is None:
            return
        from ..metrics import BridgeMetrics  # aiohttp and prometheus_client only for bridges that ask

        metrics = BridgeMetrics(self, host=host, port=port)
        await metrics.start()
        self._metrics = metrics

    async def close(self) -> None:
        """Close the services' owners, tell clients the bridge is going (they re-register with the next one), stop."""
        if not self._shell.running:
            return
        await self._restarts.close()
        if self._metrics is not None:
            await self._metrics.close()
            self._metrics = None
        # Services first: a persisted cache refuses calls from here on and saves what was
        # acknowledged, before any goodbye lets a client believe the bridge is gone.
        for service in self._router.services.values():
            if service.owner is not None:
                try:
                    await service.owner.close()
                except Exception:
                    log.exception("closing the owner of a bridge service failed")
        self._core.close("the bridge is shutting down")
        await self._shell.close()
        await self._events.aclose()
        if self._closed is not None:
            self._closed.set()
        log.info("bridge closed")

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

    # ------------------------------------------------------------------ what it is

    def on(self, name: str, handler: Handler | None = None) -> Any:
        """Register a handler (sync or async) for an event; usable as ``@bridge.on(name)``.

        Events: ``ready()``, ``connect(client, initial_data)``, ``disconnect(client, reason)``,
        ``client_message(message, client)``, ``client_request(request, client)`` (answer with
        ``await request.reply(data)`` or by returning a value), ``error(exception)``,
        ``identify_held(reason)``, ``assignment_unclaimed(machine_id, clusters)`` (a
        machine did not start what it was handed; the chunk went on to the next standby),
        ``restart_progress(record)`` at each step of a :meth:`restart`.
        """
        return self._events.on(name, handler) if handler is not None else self._events.on(name)

    @property
    def endpoint(self) -> str:
        """The ROUTER's address, e.g. ``tcp://127.0.0.1:4444``."""
        return endpoint(self._shell.host, self._shell.port)

    @property
    def pub_endpoint(self) -> str:
        """The PUB socket's address."""
        return endpoint(self._shell.host, self._shell.pub_port)

    @property
    def port(self) -> int:
        """The ROUTER's port (the real one after :meth:`start`, also when 0 was asked for)."""
        return self._shell.port

    @property
    def pub_port(self) -> int:
        """The PUB socket's port."""
        return self._shell.pub_port

    @property
    def metrics(self) -> BridgeMetrics | None:
        """The Prometheus endpoint ``metrics_port`` asked for, while the bridge runs (else ``None``)."""
        return self._metrics

    @property
    def epoch(self) -> str:
        """Random id of this bridge run; clients re-register when it changes."""
        return self._core.epoch

    @property
    def plan(self) -> ShardPlan:
        """The shard plan (available after :meth:`start` when ``total_shards="auto"``)."""
        return self._fleet.plan

    @property
    def clients(self) -> tuple[ClientInfo, ...]:
        """The connected clients, in registration order."""
        return tuple(peer.info for peer in self._fleet.registry)

    @property
    def services(self) -> Mapping[str, Service]:
        """The bridge's services by name (read-only): handler, permission and owner of each."""
        return self._router.services

    def shard_map(self) -> dict[str, object]:
        """Which machine holds which clusters (held, orphaned and free chunks)."""
        return self._fleet.placement.snapshot() if self._fleet.started else {}

    def statistics(self) -> BridgeStatistics:
        """Counters of this bridge since it started."""
        counters = self._core.counters
        return BridgeStatistics(
            clients=len(self._fleet.registry),
            open_requests=len(self._core.open),
            messages_in=counters.messages_in,
            messages_out=counters.messages_out,
            protocol_errors=counters.protocol_errors,
            refused_registrations=counters.refused_registrations,
            refused_keys=self._shell.refused_keys,
            plan_version=self._fleet.plan_version,
            sends=counters.sends,
        )

    # ------------------------------------------------------------------ messages and requests

    async def send(self, data: Any, *, filter: ClientFilter | None = None) -> list[str]:
        """Send a custom message to every client ``filter`` accepts (all without one).

        Delivered peer by peer over the ROUTER, so none is silently lost to a slow
        subscriber; returns the ids of the clients it was handed to.
        """
        self._shell.require_running()
        frames = encode(Send(data=dump(data)))
        check_limits(frames, self._limits)
        return [
            peer.info.id
            for peer in self._fleet.registry.select(filter)
            if self._shell.send_direct(peer.routing_id, frames)
        ]

    async def request(
        self, data: Any, *, client: str | ClientInfo, timeout: float | None = None, service: str | None = None
    ) -> Any:
        """Send a custom request to one client and return its answer.

        Raises :class:`ClientNotFound`, :class:`RequestTimeout`, :class:`ConnectionLost` (the
        client went away), or the client handler's error as :class:`RemoteError`.
        """
        self._shell.require_running()
        client_id = client.id if isinstance(client, ClientInfo) else client
        peer = self._fleet.registry.by_id(client_id)
        if peer is None:
            raise ClientNotFound(f"no connected client {client_id!r}; connected: {self._router.client_ids()}")
        timeout = self._request_timeout if timeout is None else float(timeout)
        open_requests = self._core.open
        request_id = open_requests.next_id()
        frames = encode(
            Request(id=request_id, deadline=time.time() + timeout, data=dump(data), service=service)
        )
        check_limits(frames, self._limits)
        outcome = open_requests.future(
            request_id=request_id,
            timeout=timeout,
            what=f"request to client {client_id!r}",
            peer=peer.routing_id,
        )
        self._shell.send_direct(peer.routing_id, frames)
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
        self._shell.require_running()
        timeout = self._request_timeout if timeout is None else float(timeout)
        msg = eval_request(
            self._core.open.next_id(),
            script,
            timeout=timeout,
            context=context,
            clusters=clusters,
            shards=shards,
            guild_id=guild_id,
        )
        answer: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._router.fan_out(msg, functools.partial(_settle, answer), accept=filter)
        return eval_outcome(await answer, return_exceptions=return_exceptions)

    async def request_to_guild(
        self, data: Any, *, guild_id: int | None = None, timeout: float | None = None
    ) -> Any:
        """Send a custom request to the cluster that owns ``guild_id`` (or ``data["guild_id"]``).

        The bot answers it with a ``@bot.cluster.on_request`` handler. Raises
        :class:`ClientNotFound` or :class:`ConnectionLost` when no running cluster owns the guild.
        """
        self._shell.require_running()
        timeout = self._request_timeout if timeout is None else float(timeout)
        msg = GuildRequest(
            id=self._core.open.next_id(),
            deadline=time.time() + timeout,
            guild_id=guild_of(data, guild_id),
            data=dump(data),
        )
        answer: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._router.route_guild(msg, functools.partial(_settle, answer))
        return result_of(await answer)

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
        self._router.add_service(name, handler, action=action, owner=owner)

    def observe(self, observer: Observer) -> Callable[[], None]:
        """Also call ``observer(kind, outcome, seconds)`` once per request this bridge answers or routes.

        ``kind`` is request, relay, eval, guild_request or ``service:<name>``; ``outcome`` is
        ok, partial (an eval with some failed slots) or the error code (timeout, remote,
        permission_denied...). For metrics. Returns a function that removes this observer.
        """
        return self._core.observers.add(observer)

    # ------------------------------------------------------------------ the fleet

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
        self._shell.require_running()
        plan: ShardPlan = self._core.reshard(
            total_shards,
            shards_per_cluster=shards_per_cluster,
            total_machines=total_machines,
            shard_list=shard_list,
        )
        return plan

    async def status(self, *, timeout: float = 2.0) -> FleetStatus:
        """A snapshot of the fleet: every client, the clusters each machine runs, standbys, free clusters.

        Machines are asked for their clusters' state in parallel; one that does not answer
        within ``timeout`` is listed with an ``error`` and no clusters.
        """
        self._shell.require_running()
        asked = self._fleet.asked_for_status()
        answers = await asyncio.gather(
            *(self.request(None, client=p.info.id, timeout=timeout, service=STATUS_SERVICE) for p in asked),
            return_exceptions=True,
        )
        by_id = dict(zip([p.info.id for p in asked], answers, strict=True))
        status = self._fleet.status(by_id, taken_at=time.time())
        run = self._restarts.run
        return dataclasses.replace(
            status, identify=self.identify_queue(), restart=run.to_json() if run is not None else None
        )

    async def restart(
        self,
        *,
        clusters: Sequence[int] | None = None,
        machines: Sequence[str] | None = None,
        all: bool = False,
        concurrency: int = 1,
        timeout: float = DEFAULT_CLUSTER_TIMEOUT,
    ) -> dict[str, Any]:
        """Give clusters new processes, ``concurrency`` at a time fleet-wide: a code deploy.

        Name the clusters, the machines whose clusters restart, or ``all=True``. Each new
        process reads the bot file afresh, IDENTIFYs in its turn, becomes ready and takes over
        from the old one with each event handled once. Returns the run's record when every
        cluster is done; raises :class:`ZmqcrossError` naming the cluster if one fails (its old
        process serves on and nothing further restarts), or if the run was cancelled.
        ``restart_progress(record)`` fires at each step; :meth:`status` shows the last run.
        A second restart while one runs is refused.
        """
        run = self._begin_restart(clusters, machines, all, concurrency, timeout)
        return (await self._restarts.wait(run)).to_json()

    def cancel_restart(self) -> dict[str, Any] | None:
        """Stop the restart under way after the clusters restarting now; its record (None: no run)."""
        run = self._restarts.cancel()
        return run.to_json() if run is not None else None

    def _begin_restart(
        self,
        clusters: Sequence[int] | None,
        machines: Sequence[str] | None,
        everything: bool,
        concurrency: int,
        timeout: float,
    ) -> RestartRun:
        self._shell.require_running()
        check_pacing(concurrency, timeout)  # before the targets: a bad option is named first
        targets = pick_targets(
            self._fleet.running(), clusters=clusters, machines=machines, everything=everything
        )
        return self._restarts.begin(
            targets, concurrency=concurrency, timeout=float(min(timeout, MAX_TIMEOUT))
        )

    async def _ask_restart(self, machine: str, cluster: int, timeout: float) -> Any:
        return await self.request(
            {"cluster": cluster}, client=machine, timeout=timeout, service=RESTART_CLUSTER_SERVICE
        )

    async def _serve_restart(self, request: IncomingRequest, client: ClientInfo) -> Any:
        options = request.data if isinstance(request.data, dict) else {}
        allowed = {"clusters", "machines", "all", "concurrency", "timeout", "cancel"}
        unknown = sorted(set(options) - allowed)
        if unknown:
            raise ConfigurationError(f"restart got unknown option(s) {unknown}; it takes {sorted(allowed)}")
        if options.get("cancel"):
            log.info("client %r cancels the restart", client.id)
            return {"run": self.cancel_restart()}
        log.info("client %r asks for a restart: %s", client.id, options)
        run = self._begin_restart(
            options.get("clusters"),
            options.get("machines"),
            options.get("all") is True,
            options.get("concurrency", 1),
            options.get("timeout", DEFAULT_CLUSTER_TIMEOUT),
        )
        return {"run": run.to_json()}

    def identify_queue(self) -> dict[str, Any] | None:
        """The IDENTIFY queue now: waiting shards per bucket, grants, holds, the session budget."""
        if self._identify is None:
            return None
        return self._identify.queue.snapshot(now=LOOP_CLOCK.monotonic())

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
