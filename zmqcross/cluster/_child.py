"""Inside a cluster process: the bootstrap that runs the bot file, and :class:`ClusterClient`.

The manager starts each cluster in a fresh interpreter (:mod:`._process`, which never runs the
machine's own script); :func:`bootstrap` records the
cluster's data and pipe, points discord.py at the offline gateway when
``ZMQCROSS_DISCORD_API`` is set (or at a REST proxy or another gateway, see
:func:`_point_discord_py`), then runs the user's bot file as ``__main__``. Every IDENTIFY
waits for its turn in the fleet's queue (:mod:`zmqcross.cluster._pacing`). The bot
wires itself up with ``bot.cluster = ClusterClient(bot)``, before it connects (at module
level, in an async main, or in ``setup_hook``).

Mistakes in that wiring stop the cluster at once with the fix in the message, and the
manager does not restart it (a restart would make the same mistake): a bot that is not
an ``AutoShardedClient`` or has the wrong shards (checked by :class:`ClusterClient`), and
a bot that connects to Discord, or a bot file that ends, without creating a
``ClusterClient``. Whatever makes the bot file fail (an import error, a crash in
``setup_hook``) is sent to the manager before the process exits (:func:`report_failure`),
so the machine's log and status show it.

All pipe work happens on the bot's own event loop, including the heartbeats: a bot
whose loop is stuck stops heartbeating, and its manager restarts it.
"""

from __future__ import annotations

import asyncio
import builtins
import dataclasses
import functools
import logging
import math
import os
import runpy
import socket
import sys
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any

from .._evaluation import compile_script, load_function, start_script
from .._events import EventEmitter, Handler
from .._fanout import error_frame
from .._handover import pack_fingerprints, unpack_fingerprints
from .._identify import IdentifyParams
from .._relaying import EvalRoute, eval_route
from .._requests import OpenRequests
from ..errors import ConfigurationError, ConnectionLost, MessageTooLarge, RequestTimeout, ZmqcrossError
from ..messages import IncomingMessage, IncomingRequest, serve_request
from ..protocol import (
    DEFAULT_LIMITS,
    ErrorInfo,
    ErrorReply,
    EvalReply,
    Goodbye,
    GuildRequest,
    Handover,
    Heartbeat,
    Lease,
    Message,
    Reply,
    Request,
    Send,
    dump,
    encode,
    result_of,
)
from ._handover import EventGate, GateState, install
from ._pacing import IdentifyTurns
from ._pipe import PipeEnd, open_pipe, pack
from ._shardhealth import ShardHealth

if TYPE_CHECKING:
    import discord

# discord.py is imported only inside cluster processes (and by serialize.py, used only
# there): a bridge or machine agent importing zmqcross does not pay for it.

__all__ = [
    "CLUSTER_PROCESS_ENV",
    "ClusterClient",
    "ClusterData",
    "bootstrap",
    "cluster_data",
    "report_failure",
]

log = logging.getLogger("zmqcross.cluster")

CLUSTER_PROCESS_ENV = "ZMQCROSS_CLUSTER_PROCESS"
"""Set (to the cluster id) in every cluster process: a machine agent refuses to start there."""

FENCED_EXIT = 75
"""A cluster's exit status when it stopped because its machine's lease ran out (EX_TEMPFAIL):
its manager starts it again once the bridge renews the lease, not before."""

SHUTDOWN_GRACE = 10.0
"""Seconds a cluster waits for discord.py to close its connections before it exits anyway."""

EXIT_GRACE = 3.0
"""Seconds a cluster waits, after closing discord.py, for bot.run() to return before it exits anyway."""

MAX_REPORTED_TRACEBACK = 16_000
"""Characters of a failing cluster's traceback sent to its manager (the end is kept)."""
REPORT_TIMEOUT = 2.0
"""Seconds a failing cluster waits to hand its report to a manager that does not read."""

_THE_FIX = (
    "commands.AutoShardedBot(..., shard_ids=list(data.shard_list), shard_count=data.total_shards) "
    "(or discord.AutoShardedClient with the same arguments), where data = zmqcross.cluster_data()"
)


def resident_bytes() -> int | None:
    """This process's resident memory in bytes (Linux's /proc; None elsewhere)."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


@dataclass(frozen=True, slots=True)
class ClusterData:
    """What a cluster process is: its id, its shards, the fleet's size. See :func:`cluster_data`.

    Pass ``shard_ids=data.shard_list, shard_count=data.total_shards`` to
    ``discord.AutoShardedClient``. ``offline`` is True when the cluster talks to the
    offline gateway (``ZMQCROSS_DISCORD_API`` is set).
    """

    cluster_id: int
    shard_list: tuple[int, ...]
    total_shards: int
    total_clusters: int
    heartbeat_interval: float = 1.0
    offline: bool = False
    env: tuple[tuple[str, str], ...] = ()
    identify: IdentifyParams = field(default_factory=IdentifyParams)
    in_fleet: bool = False
    held: bool = False  # starts with its handlers held back (it replaces running clusters)

    @property
    def first_shard_id(self) -> int:
        """The lowest shard id this cluster runs."""
        return min(self.shard_list)

    @property
    def last_shard_id(self) -> int:
        """The highest shard id this cluster runs."""
        return max(self.shard_list)


@dataclass(slots=True)
class _Current:
    data: ClusterData
    conn: Connection | None  # None once a ClusterClient took it
    report_fd: int | None = None  # the pipe's socket, kept for report_failure after the loop is gone
    fenced: bool = False  # it stopped because the lease ran out: exit with FENCED_EXIT


_CURRENT: _Current | None = None


def cluster_data() -> ClusterData:
    """This cluster's :class:`ClusterData`; raises outside a cluster process."""
    if _CURRENT is None:
        raise ConfigurationError(
            "not in a cluster process: cluster_data() and ClusterClient work in bot files started by a ClusterManager"
        )
    return _CURRENT.data


def bootstrap(bot_file: str, data: ClusterData, conn: Connection) -> None:
    """Entry point of a cluster process (run by ``multiprocessing`` with the spawn method)."""
    global _CURRENT
    os.environ.update(dict(data.env))
    os.environ[CLUSTER_PROCESS_ENV] = str(data.cluster_id)
    logging.basicConfig(
        level=os.environ.get("ZMQCROSS_LOG_LEVEL", "INFO"), format="%(asctime)s %(name)s: %(message)s"
    )
    if _point_discord_py():
        data = ClusterData(**{**_as_dict(data), "offline": True})
    _CURRENT = current = _Current(data, conn, report_fd=os.dup(conn.fileno()))
    _require_cluster_client()
    sys.argv = [bot_file]
    sys.path.insert(0, os.path.dirname(os.path.abspath(bot_file)))
    try:
        runpy.run_path(bot_file, run_name="__main__")
    except Exception as exc:
        if not report_failure(exc):
            raise  # the manager is gone: multiprocessing prints the traceback instead
        sys.exit(1)  # the manager logs the traceback it was sent
    if current.fenced:
        sys.exit(FENCED_EXIT)
    if current.conn is not None:
        error = ConfigurationError(
            f"cluster {data.cluster_id}: the bot file {os.path.basename(bot_file)} finished without "
            "creating a ClusterClient (and without running the bot?). Add bot.cluster = "
            f"zmqcross.ClusterClient(bot), then bot.run(...), with the bot built as {_THE_FIX}"
        )
        if not report_failure(error):
            log.error("%s", error.message)
        sys.exit(1)


def report_failure(exc: BaseException) -> bool:
    """Tell the manager why this cluster is about to exit; False if it could not be told.

    Sent as an :class:`ErrorReply` with no ``reply_to`` straight to the pipe's socket:
    by now discord.py's event loop (and the pipe's transport on it) may be closed.
    """
    if _CURRENT is None or _CURRENT.report_fd is None:
        return False
    fd, _CURRENT.report_fd = _CURRENT.report_fd, None
    info = ErrorInfo.from_exception(exc)
    if info.traceback and len(info.traceback) > MAX_REPORTED_TRACEBACK:
        info = dataclasses.replace(info, traceback="...\n" + info.traceback[-MAX_REPORTED_TRACEBACK:])
    try:
        with socket.socket(fileno=fd) as sock:
            sock.settimeout(REPORT_TIMEOUT)
            sock.sendall(b"".join(pack(encode(ErrorReply(error=info)))))
    except OSError:
        return False
    return True


def _require_cluster_client() -> None:
    # discord.py connects through Client.connect, or AutoShardedClient.connect (which does
    # not call the former). Refusing there happens before any IDENTIFY: a bot without a
    # ClusterClient spends no session start and holds no guild another cluster holds.
    import discord

    for cls in (discord.Client, discord.AutoShardedClient):
        cls.connect = _checked(cls.connect)  # type: ignore[method-assign]


def _checked(
    connect: Callable[..., Coroutine[Any, Any, None]],
) -> Callable[..., Coroutine[Any, Any, None]]:
    @functools.wraps(connect)
    async def checked(self: discord.Client, *args: Any, **kwargs: Any) -> None:
        if _CURRENT is not None and _CURRENT.conn is not None:
            raise ConfigurationError(
                f"cluster {_CURRENT.data.cluster_id}: the bot was about to connect to Discord without "
                "creating a ClusterClient, so its machine could neither see nor reach it. Add "
                "bot.cluster = zmqcross.ClusterClient(bot) before bot.run(...), with the bot built as "
                + _THE_FIX
            )
        await connect(self, *args, **kwargs)

    return checked


def _as_dict(data: ClusterData) -> dict[str, Any]:
    return {name: getattr(data, name) for name in ClusterData.__slots__}


def _point_discord_py() -> bool:
    """Point discord.py where the environment says; True when that is the offline gateway.

    Three independent settings: ``ZMQCROSS_DISCORD_API`` is the offline gateway (its REST
    base, and its gateway on the same host and port); ``ZMQCROSS_DISCORD_REST`` only moves
    the REST base (a proxy in front of Discord); ``ZMQCROSS_DISCORD_GATEWAY`` only moves the
    gateway. None of them changes IDENTIFY pacing.
    """
    api = os.environ.get("ZMQCROSS_DISCORD_API") or None
    rest = os.environ.get("ZMQCROSS_DISCORD_REST") or api
    gateway = os.environ.get("ZMQCROSS_DISCORD_GATEWAY") or None
    if rest is None and gateway is None:
        return False
    from ..gateway.discordpy import gateway_url_for, point_discord_py

    if gateway is None and api is not None:
        gateway = gateway_url_for(api)
    point_discord_py(rest=rest, gateway=gateway)
    log.info("discord.py: REST %s, gateway %s", rest or "Discord's", gateway or "Discord's")
    return api is not None


def _warn_if_hooked(bot: discord.Client) -> None:
    import discord

    own = type(bot).before_identify_hook
    if (
        own is not discord.Client.before_identify_hook
        and own is not discord.AutoShardedClient.before_identify_hook
    ):
        log.warning(
            "%s.before_identify_hook is replaced by the fleet's IDENTIFY queue (it paces every "
            "cluster of every machine); set ZMQCROSS_IDENTIFY_QUEUE=off to keep your own",
            type(bot).__name__,
        )


def _check_sharding(bot: discord.Client, data: ClusterData) -> None:
    """Raise :class:`ConfigurationError`, naming the fix, unless ``bot`` runs exactly this cluster's shards."""
    import discord

    where = f"cluster {data.cluster_id} runs shards {list(data.shard_list)} of {data.total_shards}"
    if not isinstance(bot, discord.AutoShardedClient):
        raise ConfigurationError(
            f"cluster {data.cluster_id}: ClusterClient needs an AutoShardedClient, not a "
            f"{type(bot).__name__}: discord.py would run one unsharded session in every cluster, each "
            f"holding every guild and answering every event. Use {_THE_FIX}"
        )
    if bot.shard_ids is None:
        raise ConfigurationError(
            f"cluster {data.cluster_id}: the bot has no shard_ids, so discord.py would run every shard "
            f"in every cluster; {where}. Use {_THE_FIX}"
        )
    if sorted(bot.shard_ids) != sorted(data.shard_list) or bot.shard_count != data.total_shards:
        raise ConfigurationError(
            f"cluster {data.cluster_id}: the bot has shard_ids={list(bot.shard_ids)}, "
            f"shard_count={bot.shard_count}, but {where}. Use {_THE_FIX}"
        )


class ClusterClient:
    """Joins a discord.py bot to its cluster manager: ``bot.cluster = ClusterClient(bot)``.

    ``bot`` must be a ``discord.AutoShardedClient`` (or ``commands.AutoShardedBot``) built with
    ``shard_ids=list(data.shard_list), shard_count=data.total_shards`` from
    :func:`cluster_data`; anything else raises :class:`~zmqcross.ConfigurationError` naming
    the fix, and the manager does not restart the cluster.

    It reports heartbeats and readiness over the pipe, runs broadcast evals, and hands
    requests routed to this cluster (``request_to_guild``) to handlers registered with
    :meth:`on_request`. The pipe starts when the bot logs in (or at once when created on
    a running loop).
    """

    def __init__(self, bot: discord.Client) -> None:
        import discord

        from .._serialize import dump_result

        if _CURRENT is None or _CURRENT.conn is None:
            cluster_data()  # raises the explanation
            raise ConfigurationError("a ClusterClient already took this cluster's pipe")
        _check_sharding(bot, _CURRENT.data)
        self.bot = bot
        self.data = _CURRENT.data
        self._conn: Connection | None = _CURRENT.conn
        _CURRENT.conn = None
        self._events = EventEmitter(("error", "message", "request"), log)
        self._open = OpenRequests()
        self._pipe: PipeEnd | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._namespace = {"__builtins__": builtins, "bot": bot, "discord": discord, "asyncio": asyncio}
        self._dump_result = dump_result
        self._waiting: str | None = None
        self._turns: set[asyncio.Future[None]] = set()  # IDENTIFYs waiting for their turn
        self._closing = False
        self._lease_until: float | None = None  # monotonic; None: no lease (no bridge)
        self.identify_turns = IdentifyTurns(
            cluster_id=self.data.cluster_id,
            total_shards=self.data.total_shards,
            params=self.data.identify,
            ask=self._ask_service,
            report=self._report_waiting,
            in_fleet=self.data.in_fleet,
        )
        if os.environ.get("ZMQCROSS_IDENTIFY_QUEUE", "on").lower() != "off":
            _warn_if_hooked(bot)
            bot.before_identify_hook = self._before_identify  # type: ignore[method-assign]
        self.shard_health = ShardHealth(self.data.shard_list)
        self._gate = EventGate(held=self.data.held)
        self._dispatch = install(
            bot, self._gate, overflowed=self._announce_live, observe=self.shard_health.observe
        )
        self._announced = False
        self._login = bot.login
        bot.login = self._login_then_serve  # type: ignore[method-assign]
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return
        self._spawn(self._start())

    @property
    def id(self) -> int:
        """This cluster's id."""
        return self.data.cluster_id

    @property
    def shard_list(self) -> tuple[int, ...]:
        """The shard ids this cluster runs."""
        return self.data.shard_list

    @property
    def live(self) -> bool:
        """Whether the bot's handlers get its gateway events.

        False while this cluster is held back during a rolling restart or reshard: its
        sessions are up and its cache current, but the cluster it replaces still handles
        those guilds' events. It turns True (and ``on_cluster_live`` fires) once that one
        has stopped; the events held meanwhile then run, each once.
        """
        return self._gate.state is GateState.LIVE

    def on(self, name: str, handler: Handler | None = None) -> Any:
        """Register a handler: ``request(request)`` (answer by returning or ``request.reply``),
        ``message(message)``, ``error(exception)``."""
        return self._events.on(name, handler) if handler is not None else self._events.on(name)

    def on_request(self, handler: Handler) -> Handler:
        """Decorator: handle requests routed to this cluster (``request_to_guild``)."""
        return self._events.on("request", handler)

    # ------------------------------------------------------------------ start-up

    async def _login_then_serve(self, token: str) -> None:
        await self._start()
        await self._login(token)

    async def _start(self) -> None:
        if self._conn is None:
            return
        conn, self._conn = self._conn, None
        self._pipe = await open_pipe(
            conn, PipeEnd(self._on_message, self._on_pipe_closed, name=f"cluster {self.id}", peek=self._peek)
        )
        self._spawn(self._heartbeat())
        self._spawn(self._report_ready())

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _heartbeat(self) -> None:
        while self._pipe is not None and self._pipe.open:
            self._beat()
            await asyncio.sleep(self.data.heartbeat_interval)

    def _beat(self) -> None:
        if self._pipe is not None:
            self._pipe.send(
                Heartbeat(
                    sent_at=time.time(),
                    ready=self.bot.is_ready(),
                    guilds=len(self.bot.guilds),
                    waiting=self._waiting,
                    shards=self._shard_rows(),
                    rss=resident_bytes(),
                )
            )

    def _shard_rows(self) -> list[list[Any]]:
        # Latency from discord.py's gateway heartbeats; idle from when each connection last
        # received anything (its keep-alive's clock; None before it has one).
        bot: Any = self.bot
        latencies: dict[int, float] = {}
        idle: dict[int, float | None] = {}
        now = time.perf_counter()
        for sid in self.data.shard_list:
            try:
                ws = bot._get_websocket(shard_id=sid)
            except (AttributeError, KeyError):
                continue
            latencies[sid] = getattr(ws, "latency", math.inf)
            last = getattr(getattr(ws, "_keep_alive", None), "_last_recv", None)
            idle[sid] = now - last if isinstance(last, float) else None
        return self.shard_health.wire(latencies, idle)

    # ------------------------------------------------------------------ IDENTIFY pacing

    async def _before_identify(self, shard_id: int | None, *, initial: bool = False) -> None:
        # discord.py's hook: called before every IDENTIFY of every shard, initial or not.
        sid = shard_id if shard_id is not None else self.data.first_shard_id
        self.shard_health.move(sid, "waiting")
        turn = asyncio.ensure_future(self.identify_turns.wait_turn(sid))
        self._turns.add(turn)
        try:
            await turn
            self.shard_health.move(sid, "identifying")
        except asyncio.CancelledError:
            if self._closing:
                # Stopped while waiting: discord.py would retry the connection forever
                # (launch_shard does), so the process ends here, its connections closed.
                raise SystemExit(FENCED_EXIT if _CURRENT is not None and _CURRENT.fenced else 0) from None
            raise
        finally:
            self._turns.discard(turn)

    def _report_waiting(self, waiting: str | None) -> None:
        if waiting != self._waiting:
            self._waiting = waiting
            self._beat()  # the machine's status (and spawn timer) learn it now

    async def _ask_service(self, service: str, data: Any, timeout: float) -> Any:
        request_id = self.next_id()
        msg = Request(id=request_id, deadline=time.time() + timeout, data=dump(data), service=service)
        return result_of(await self.call(msg, request_id, timeout, f"{service} service call"))

    async def _report_ready(self) -> None:
        await self.bot.wait_until_ready()
        log.info(
            "cluster %d ready: shards %s, %d guilds", self.id, list(self.shard_list), len(self.bot.guilds)
        )
        self._beat()  # tell the manager now, not at the next interval
        self._announce_live()

    def _announce_live(self) -> None:
        # on_cluster_live: once per process, when it is both ready and live.
        if self._announced or not self.live or not self.bot.is_ready():
            return
        self._announced = True
        log.info("cluster %d is live: its handlers get its shards' events", self.id)
        self._dispatch("cluster_live")

    def _handover(self, msg: Handover) -> None:
        if msg.step == "record":
            self._gate.record()
        elif msg.step == "keep":
            self._gate.keep()
        elif msg.step == "retire":
            handled = self._gate.retire()
            log.info(
                "cluster %d retired: its successor handles its events (%d handled since it was told)",
                self.id,
                len(handled),
            )
            self._reply(Handover(step="retired", cluster_id=self.id, fingerprints=pack_fingerprints(handled)))
        elif msg.step == "release":
            calls = self._gate.release(unpack_fingerprints(msg.fingerprints))
            for name, args, kwargs in calls:
                self._dispatch(name, *args, **kwargs)
            self._announce_live()
        else:
            log.warning("cluster %d ignored a handover step %r", self.id, msg.step)

    # ------------------------------------------------------------------ from the manager

    def _on_message(self, msg: Message) -> None:
        if isinstance(msg, (GuildRequest, Request)):
            self._serve(msg)
        elif isinstance(msg, Send):
            self._events.emit("message", IncomingMessage(msg.data))
        elif isinstance(msg, (Reply, ErrorReply, EvalReply)):
            self._open.finish(msg.reply_to, msg)
        elif isinstance(msg, Goodbye):
            log.info("cluster %d stopping: %s", self.id, msg.reason)
            self._spawn(self._shutdown())
        elif isinstance(msg, Handover):
            self._handover(msg)
        elif isinstance(msg, Lease):
            if self._lease_until is None:
                self._spawn(self._keep_lease())
            self._lease_until = msg.until
        else:
            log.warning("cluster %d ignored a %r pipe message", self.id, msg.type)

    def _reply(self, msg: Message) -> None:
        if self._pipe is not None:
            self._pipe.send(msg)

    def _peek(self, header: dict[str, Any], frames: list[bytes]) -> bool:
        # Evals are run from their header (zmqcross._relaying): the hottest message here.
        if header.get("type") != "eval":
            return False
        self._eval(eval_route(header, frames))
        return True

    def _eval(self, route: EvalRoute) -> None:
        fields = route.header
        try:
            script = fields.get("script")
            if script is not None:
                namespace = {**self._namespace, "context": fields.get("context")}
                result = start_script(compile_script(script), namespace)
            else:
                namespace = dict(self._namespace)
                fn = load_function(fields.get("function") or "", fields.get("function_name"), namespace)
                result = fn(self.bot, fields.get("context"))
        except Exception as exc:
            self._eval_answer(route.id, exc)
            return
        if asyncio.iscoroutine(result) or isinstance(result, asyncio.Future):
            self._spawn(self._eval_later(route, result))
        else:
            self._eval_answer(route.id, result, ok=True)

    async def _eval_later(self, route: EvalRoute, awaitable: Any) -> None:
        try:
            value = await asyncio.wait_for(awaitable, max(route.deadline - time.time(), 0.001))
        except TimeoutError:
            self._eval_answer(
                route.id, RequestTimeout(f"cluster {self.id}: the script was still running at its deadline")
            )
        except Exception as exc:
            self._eval_answer(route.id, exc)
        else:
            self._eval_answer(route.id, value, ok=True)

    def _eval_answer(self, request_id: int, value: Any, *, ok: bool = False) -> None:
        frame: bytes
        if ok:
            try:
                frame = self._dump_result(value)  # encoded here, once; relays forward these bytes
                if len(frame) > DEFAULT_LIMITS.max_frame_bytes:  # refused on the way: say so, not time out
                    raise MessageTooLarge(
                        f"cluster {self.id}'s result is {len(frame)} bytes of JSON; the limit is "
                        f"{DEFAULT_LIMITS.max_frame_bytes} (max_frame_bytes): return less, or narrow the eval"
                    )
            except ZmqcrossError as exc:
                frame, ok = error_frame(exc), False
        else:
            frame = error_frame(value)
        if self._pipe is not None:
            self._pipe.send_answer(request_id, ok, frame)

    def _serve(self, msg: GuildRequest | Request) -> None:
        request = IncomingRequest(msg.data, request_id=msg.id, deadline=msg.deadline, respond=self._reply)
        serve_request(
            request,
            self._events.handlers("request"),
            (request,),
            self._events,
            "request",
            missing=f"cluster {self.id} has no request handler; add one with @bot.cluster.on_request",
        )

    def _on_pipe_closed(self, exc: Exception | None) -> None:
        self._pipe = None
        self._open.fail_all(ConnectionLost(f"cluster {self.id} lost its manager"))
        log.error("cluster %d: the pipe to its manager closed; shutting down", self.id)
        self._spawn(self._shutdown())

    async def _keep_lease(self) -> None:
        # The machine passes the bridge's lease down every heartbeat; if it stops coming
        # (the agent is frozen or cut off from the bridge), the bridge will give these shards
        # to another machine once the lease is over: their sessions must be closed by then.
        while not self._closing:
            left = (self._lease_until or 0.0) - time.monotonic()
            if left > 0:
                await asyncio.sleep(min(left, 0.25))
                continue
            log.error(
                "cluster %d: its machine's lease from the bridge ran out; closing its Discord sessions "
                "(the bridge may give shards %s to another machine now)",
                self.id,
                list(self.shard_list),
            )
            if _CURRENT is not None:
                _CURRENT.fenced = True
            await self._shutdown()
            return

    async def _shutdown(self) -> None:
        # Close Discord's connections properly (no zombie sessions), then let bot.run() return.
        self._closing = True
        try:
            await asyncio.wait_for(self.bot.close(), SHUTDOWN_GRACE)
        except Exception:
            log.exception("cluster %d: closing discord.py failed; exiting anyway", self.id)
            os._exit(1)
        for turn in list(self._turns):
            turn.cancel()  # a shard still waiting to IDENTIFY ends the process (see _before_identify)
        # bot.run() returns once discord.py has closed, except while a shard's first connection
        # is being retried (launch_shard loops every 5 s, closed or not): a cluster whose machine
        # is gone would live on for good. Its sessions are closed by now, so it ends anyway.
        code = FENCED_EXIT if _CURRENT is not None and _CURRENT.fenced else 0
        asyncio.get_running_loop().call_later(EXIT_GRACE, os._exit, code)

    # ------------------------------------------------------------------ upstream (Shard API)

    async def call(self, msg: Message, request_id: int, timeout: float, what: str) -> Message | ZmqcrossError:
        """Send a request up the pipe (to the machine and on to the bridge) and wait for its answer."""
        if self._pipe is None:
            raise ConnectionLost(f"cluster {self.id} is not connected to its manager (is the bot logged in?)")
        outcome = self._open.future(request_id=request_id, timeout=timeout, what=what)
        self._pipe.send(msg)
        return await outcome

    def next_id(self) -> int:
        """A fresh id for a request sent up the pipe."""
        return self._open.next_id()

    async def send(self, msg: Send) -> None:
        """Send a one-way message up the pipe."""
        if self._pipe is None or not self._pipe.send(msg):
            raise ConnectionLost(f"cluster {self.id} is not connected to its manager")
