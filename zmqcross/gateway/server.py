"""The offline Discord: an aiohttp server speaking enough REST and Gateway v10 for discord.py.

An unmodified ``discord.AutoShardedClient`` (after :func:`point_discord_py_at`) logs in
with any token, identifies its shards, receives READY and one GUILD_CREATE per synthetic
guild of each shard (see :mod:`.guilds`), and can be forced to RESUME. A bot's commands run
too: REST routes in :mod:`.rest`, test endpoints (``/_offline/dispatch``, ``/_offline/messages``)
in :mod:`.offline`. This module is the I/O boundary of the gateway: decisions about payloads
live in :mod:`.wire`, :mod:`.guilds`, :mod:`.people`, :mod:`.messages` and :mod:`.interactions`.

Sessions follow Discord's rules closely enough for discord.py's reconnect logic: a
connection the server drops (or that just vanishes) leaves a resumable session that
buffers the last :data:`~.wire.MAX_REPLAY_EVENTS` dispatches; a client that closes with 1000 or
1001 ends its session, as Discord does.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import math
import time
import uuid
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final, Self

import orjson
import yarl
from aiohttp import WSMsgType, web

from . import guilds as world
from . import people
from .interactions import Commands, Interactions
from .limits import BUDGET_EXHAUSTED, DISCORD_IDENTIFY_WINDOW, SESSION_RESET_AFTER, IdentifyLimits
from .messages import Channels, Snowflakes
from .offline import OfflineApi
from .rest import RestApi, json_response
from .wire import (
    DEFAULT_HEARTBEAT_INTERVAL,
    MAX_CLIENT_PAYLOAD_BYTES,
    CloseCode,
    FrameEncoder,
    Op,
    Session,
    check_identify,
    check_resume,
    encoder_for,
    for_intents,
    payload,
)

__all__ = ["GatewayServer", "GatewayStatistics"]

log = logging.getLogger("zmqcross.gateway")

API_PREFIX: Final = "/api/v10"
MAX_GUILDS_PER_SHARD: Final = 2500
"""Discord closes an IDENTIFY with 4011 (sharding required) when one shard would hold more."""
MAX_SESSIONS: Final = 1024
"""Sessions kept for RESUME; the oldest is forgotten first."""

REFUSED_STALL = 1.0
"""Seconds a refused shard's IDENTIFY or RESUME hangs before it is closed (see ``refuse_shard``)."""
CLOSE_TIMEOUT: Final = 2.0
"""Seconds to wait for a client's close frame, and for handlers when the server stops."""

# A client closing with these ends its session (Discord's rule); any other end keeps it resumable.
_SESSION_ENDING_CLOSES: Final = frozenset({1000, 1001})
_UNAUTHENTICATED_ROUTES: Final = frozenset({f"{API_PREFIX}/gateway"})


@dataclass(frozen=True, slots=True)
class GatewayStatistics:
    """Counters of a :class:`GatewayServer` since it started (an immutable snapshot).

    ``plain/zlib/zstd_connections`` split ``connections_total`` by the transport actually
    used (a zstd-stream request without ``zstandard`` installed counts as plain);
    ``dispatches`` counts op 0 messages sent (READY, GUILD_CREATE, RESUMED, pushed events).
    """

    connections_open: int
    connections_total: int
    plain_connections: int
    zlib_connections: int
    zstd_connections: int
    identifies: int
    resumes: int
    invalid_sessions: int
    heartbeats: int
    dispatches: int
    rest_requests: int


class _Connection:
    """One gateway WebSocket. A lock keeps "number, compress, send" atomic: the zlib stream
    must be sent in the order it was compressed, and ``s`` must rise on every connection."""

    __slots__ = ("closed_by_server", "counters", "encoder", "lock", "session", "since", "ws")

    def __init__(
        self, ws: web.WebSocketResponse, encoder: FrameEncoder, counters: collections.Counter[str]
    ) -> None:
        self.ws = ws
        self.counters = counters
        self.encoder = encoder
        self.lock = asyncio.Lock()
        self.session: Session | None = None
        self.since = 0.0  # wall-clock time the session was attached (IDENTIFY or RESUME)
        self.closed_by_server = False

    async def send(self, message: bytes) -> None:
        async with self.lock:
            await self._send(message)

    async def send_dispatch(self, event: str, data: Any, *, keep: bool = True) -> None:
        assert self.session is not None
        async with self.lock:
            await self._send(self.session.dispatch(event, data, keep=keep))
            self.counters["dispatches"] += 1

    async def _send(self, message: bytes) -> None:
        opcode = WSMsgType.BINARY if self.encoder.binary else WSMsgType.TEXT
        await self.ws.send_frame(self.encoder.encode(message), opcode)

    async def close(self, code: int) -> None:
        self.closed_by_server = True
        await self.ws.close(code=code)


class GatewayServer:
    """A local Discord REST + Gateway v10 server holding ``guilds`` synthetic guilds.

    Use ``async with GatewayServer(guilds=40) as server:`` (or :meth:`start` / :meth:`close`),
    then point discord.py at :attr:`api_base` and :attr:`gateway_url`.

    ``token`` None accepts any token; otherwise REST answers 401 and IDENTIFY/RESUME close
    with 4004 for any other. ``recommended_shards`` is the ``shards`` of ``/gateway/bot``
    (default one per 1,000 guilds).

    Discord's identify limits (see :mod:`.limits`) are enforced as Discord does by default:
    ``max_concurrency`` N (default 1, Discord's for most bots; None: no limit) buckets
    IDENTIFYs by ``shard_id % N`` and refuses (op 9, d=false) a second one in a bucket within
    ``identify_window`` seconds (default 5); ``session_budget`` N refuses (close 4004, live
    sessions terminated) an IDENTIFY arriving after N were seen in ``session_reset_after``
    seconds (default None: no budget; ``/gateway/bot`` then reports 1000).
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        guilds: int = 100,
        token: str | None = None,
        recommended_shards: int | None = None,
        max_concurrency: int | None = 1,
        identify_window: float = DISCORD_IDENTIFY_WINDOW,
        session_budget: int | None = None,
        session_reset_after: float = SESSION_RESET_AFTER,
        heartbeat_interval: float = DEFAULT_HEARTBEAT_INTERVAL,
    ) -> None:
        if guilds < 0:
            raise ValueError(f"guilds must be >= 0, got {guilds}")
        if recommended_shards is not None and recommended_shards < 1:
            raise ValueError(f"recommended_shards must be >= 1, got {recommended_shards}")
        self._host = host
        self._port = port
        self._guild_count = guilds
        self._token = token
        self._recommended_shards = recommended_shards or max(1, math.ceil(guilds / 1000))
        self._limits = IdentifyLimits(
            max_concurrency=max_concurrency,
            identify_window=identify_window,
            session_budget=session_budget,
            reset_after=session_reset_after,
            now=time.monotonic(),
        )
        self._heartbeat_interval = heartbeat_interval
        self._refused: set[int] = set()  # shards whose IDENTIFY and RESUME are closed (refuse_shard)
        self._runner: web.AppRunner | None = None
        self._bound_port: int | None = None
        self._connections: set[_Connection] = set()
        self._sessions: dict[str, Session] = {}
        self._live: dict[str, _Connection] = {}  # session id -> the connection it runs on
        self._counters: collections.Counter[str] = collections.Counter()
        self._background: set[asyncio.Task[None]] = set()
        clock = time.time
        snowflakes = Snowflakes(clock)
        self._channels = Channels(guilds, snowflakes, clock)
        commands = Commands(snowflakes)
        interactions = Interactions(self._channels, commands, snowflakes, clock)
        self._rest = RestApi(
            channels=self._channels,
            commands=commands,
            interactions=interactions,
            events=self,
            guild_count=guilds,
            prefix=API_PREFIX,
            clock=clock,
        )
        self._offline = OfflineApi(
            shards=self,
            gateway=self,
            channels=self._channels,
            interactions=interactions,
            guild_count=guilds,
            clock=clock,
        )

    # --- lifetime ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Bind and start serving; :attr:`port` is known afterwards (``port=0`` picks a free one)."""
        if self._runner is not None:
            raise RuntimeError("GatewayServer is already started")
        app = web.Application(middlewares=[self._rest_middleware])
        app.router.add_get(f"{API_PREFIX}/users/@me", self._users_me)
        app.router.add_get(f"{API_PREFIX}/oauth2/applications/@me", self._application)
        app.router.add_get(f"{API_PREFIX}/gateway", self._gateway_info)
        app.router.add_get(f"{API_PREFIX}/gateway/bot", self._gateway_bot)
        self._rest.add_routes(app.router)
        self._offline.add_routes(app.router)
        app.router.add_get("/", self._websocket)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=CLOSE_TIMEOUT)
        await runner.setup()
        site = web.TCPSite(runner, self._host, self._port)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self._bound_port = int(runner.addresses[0][1])
        log.info("offline Discord on %s with %d guilds", self.api_base, self._guild_count)

    async def close(self) -> None:
        """Close every gateway connection (code 1001) and stop serving. Idempotent."""
        runner, self._runner = self._runner, None
        if runner is None:
            return
        connections = list(self._connections)
        await asyncio.gather(*(c.close(1001) for c in connections), return_exceptions=True)
        await runner.cleanup()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    # --- public surface ---------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The TCP port served (after :meth:`start`)."""
        if self._bound_port is None:
            raise RuntimeError("GatewayServer is not started")
        return self._bound_port

    @property
    def api_base(self) -> str:
        """REST base URL, e.g. ``http://127.0.0.1:8123/api/v10`` (discord.py's ``Route.BASE``)."""
        return str(yarl.URL.build(scheme="http", host=self._host, port=self.port, path=API_PREFIX))

    @property
    def gateway_url(self) -> str:
        """Gateway URL, e.g. ``ws://127.0.0.1:8123/`` (discord.py's ``DEFAULT_GATEWAY``)."""
        return str(yarl.URL.build(scheme="ws", host=self._host, port=self.port, path="/"))

    @property
    def guild_count(self) -> int:
        """How many synthetic guilds the server holds (indices ``0..guild_count-1``)."""
        return self._guild_count

    def statistics(self) -> GatewayStatistics:
        """An immutable snapshot of the server's counters."""
        c = self._counters
        return GatewayStatistics(
            connections_open=len(self._connections),
            connections_total=c["connections"],
            plain_connections=c["plain"],
            zlib_connections=c["zlib-stream"],
            zstd_connections=c["zstd-stream"],
            identifies=c["identifies"],
            resumes=c["resumes"],
            invalid_sessions=c["invalid_sessions"],
            heartbeats=c["heartbeats"],
            dispatches=c["dispatches"],
            rest_requests=c["rest_requests"],
        )

    async def dispatch(self, shard_id: int, event: str, data: Any) -> int:
        """Send dispatch ``event`` with ``data`` to every session of shard ``shard_id``.

        Sessions waiting for a RESUME keep it and get it replayed. Returns how many live
        connections it was sent to.
        """
        sent = 0
        for session in [s for s in self._sessions.values() if s.shard_id == shard_id]:
            sent += await self._deliver(session, event, data)
        return sent

    async def _deliver(self, session: Session, event: str, data: Any) -> bool:
        """Send ``event`` on ``session``'s live connection (True), or keep it for its RESUME."""
        connection = self._live.get(session.session_id)
        if connection is None:
            session.dispatch(event, data)  # kept for the RESUME
            return False
        try:
            await connection.send_dispatch(event, data)
        except ConnectionError:
            return False
        return True

    def live_shards(self, guild_id: int) -> list[tuple[int, int]]:
        """``(shard_id, shard_count)`` of each live session holding ``guild_id`` (Discord's
        routing: shard ``(guild_id >> 22) % shard_count``)."""
        return [shard for shard in self.connected_shards() if world.shard_of(guild_id, shard[1]) == shard[0]]

    def identifies(self) -> list[dict[str, Any]]:
        """Every IDENTIFY seen, oldest first: ``time`` (wall clock), ``shard`` ``[id, count]``,
        ``bucket`` (None without ``max_concurrency``), ``accepted``, ``reason`` (None,
        ``"rate_limited"``, ``"session_start_limit"``) and, once accepted, ``session_id``."""
        return self._limits.records()

    def live_sessions(self) -> list[dict[str, Any]]:
        """The live gateway sessions, by shard: ``session_id``, ``shard`` ``[id, count]``, ``since``."""
        sessions = [
            {
                "session_id": c.session.session_id,
                "shard": [c.session.shard_id, c.session.shard_count],
                "since": c.since,
            }
            for c in self._live.values()
            if c.session is not None
        ]
        return sorted(sessions, key=lambda s: (s["shard"][0], s["since"]))

    async def invalidate(self, shard_id: int) -> int:
        """End every live session of shard ``shard_id`` as Discord does: op 9 with ``d`` false.

        The client must IDENTIFY again (a new session, counted against the limits). Returns how
        many sessions were ended.
        """
        ended = 0
        for connection in [
            c for c in self._live.values() if c.session is not None and c.session.shard_id == shard_id
        ]:
            session = connection.session
            assert session is not None
            self._sessions.pop(session.session_id, None)
            self._live.pop(session.session_id, None)
            connection.session = None
            self._counters["invalid_sessions"] += 1
            with contextlib.suppress(ConnectionError):
                await connection.send(payload(Op.INVALID_SESSION, False))
                ended += 1
        return ended

    def connected_shards(self) -> list[tuple[int, int]]:
        """``(shard_id, shard_count)`` of each live session."""
        return [
            (c.session.shard_id, c.session.shard_count) for c in self._live.values() if c.session is not None
        ]

    async def dispatch_guild(self, guild_id: int, event: str, data: Any) -> int:
        """Send ``event`` about ``guild_id`` to the sessions of the shard that holds it, as each
        session's intents let it see it (see :func:`~.wire.for_intents`).

        Sessions waiting for a RESUME keep it. Returns how many live connections got it.
        """
        sent = 0
        bot_id = str(world.BOT_USER_ID)
        holders = [
            s for s in self._sessions.values() if world.shard_of(guild_id, s.shard_count) == s.shard_id
        ]
        for session in holders:
            seen = for_intents(event, data, session.intents, bot_id=bot_id)
            if seen is not None:
                sent += await self._deliver(session, event, seen)
        return sent

    async def disconnect_shard(self, shard_id: int, *, code: int = CloseCode.UNKNOWN_ERROR) -> int:
        """Close the live connections of shard ``shard_id`` with ``code``; their sessions stay
        resumable, so discord.py RESUMEs (with 4000). Returns how many were closed."""
        targets = [c for c in self._connections if c.session is not None and c.session.shard_id == shard_id]
        await asyncio.gather(*(c.close(code) for c in targets), return_exceptions=True)
        return len(targets)

    # --- REST --------------------------------------------------------------------------------

    @web.middleware
    async def _rest_middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path.startswith(API_PREFIX):
            self._counters["rest_requests"] += 1
            if (
                self._token is not None
                and request.path not in _UNAUTHENTICATED_ROUTES
                and not self._rest.is_token_free(request.path)
                and request.headers.get("Authorization") != f"Bot {self._token}"
            ):
                return json_response({"message": "401: Unauthorized", "code": 0}, status=401)
        try:
            response: web.StreamResponse = await handler(request)
        except web.HTTPException as exc:
            # Discord-shaped errors, so discord.py raises NotFound etc. instead of choking on text.
            log.warning(
                "offline Discord has no %s %s: answering %d", request.method, request.path, exc.status
            )
            return json_response({"message": f"{exc.status}: {exc.reason}", "code": 0}, status=exc.status)
        return response

    async def _users_me(self, request: web.Request) -> web.Response:
        return json_response(world.bot_user())

    async def _application(self, request: web.Request) -> web.Response:
        return json_response(world.application())

    async def _gateway_info(self, request: web.Request) -> web.Response:
        return json_response({"url": self.gateway_url})

    async def _gateway_bot(self, request: web.Request) -> web.Response:
        limit = self._limits.session_start_limit(now=time.monotonic())
        return json_response(
            {"url": self.gateway_url, "shards": self._recommended_shards, "session_start_limit": limit}
        )

    # --- Gateway -----------------------------------------------------------------------------

    async def _websocket(self, request: web.Request) -> web.StreamResponse:
        compress = request.query.get("compress")
        try:
            encoder = encoder_for(compress)
        except ValueError as exc:
            return json_response({"message": str(exc), "code": 50035}, status=400)
        if request.query.get("encoding", "json") != "json":
            return json_response({"message": "only encoding=json is offered", "code": 50035}, status=400)
        ws = web.WebSocketResponse(max_msg_size=MAX_CLIENT_PAYLOAD_BYTES, timeout=CLOSE_TIMEOUT)
        await ws.prepare(request)
        connection = _Connection(ws, encoder, self._counters)
        self._connections.add(connection)
        self._counters["connections"] += 1
        self._counters[compress if encoder.binary and compress else "plain"] += 1
        try:
            hello = {"heartbeat_interval": round(self._heartbeat_interval * 1000)}
            await connection.send(payload(Op.HELLO, hello))
            async for message in ws:
                if message.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
                    break
                verdict = await self._handle(connection, message.data)
                if verdict is not None:
                    log.info("closing gateway connection with %d (%s)", verdict, verdict.name)
                    await connection.close(verdict)
                    break
        except ConnectionError:
            pass  # the client went away mid-send; its session stays resumable
        finally:
            self._connections.discard(connection)
            self._detach(connection)
        return ws

    def _detach(self, connection: _Connection) -> None:
        session = connection.session
        if session is None or self._live.get(session.session_id) is not connection:
            return
        del self._live[session.session_id]
        if not connection.closed_by_server and connection.ws.close_code in _SESSION_ENDING_CLOSES:
            self._sessions.pop(session.session_id, None)

    async def _handle(self, connection: _Connection, raw: str | bytes) -> CloseCode | None:
        """Act on one client message; a close code means "close the connection with it"."""
        try:
            message = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return CloseCode.DECODE_ERROR
        if not isinstance(message, dict):
            return CloseCode.DECODE_ERROR
        op, data = message.get("op"), message.get("d")
        if op == Op.HEARTBEAT:
            self._counters["heartbeats"] += 1
            await connection.send(payload(Op.HEARTBEAT_ACK))
            return None
        if op in (Op.IDENTIFY, Op.RESUME) and connection.session is not None:
            return CloseCode.ALREADY_AUTHENTICATED
        if op == Op.IDENTIFY:
            return await self._identify(connection, data)
        if op == Op.RESUME:
            return await self._resume(connection, data)
        if connection.session is None:
            return CloseCode.NOT_AUTHENTICATED
        if op == Op.REQUEST_GUILD_MEMBERS:
            await self._members_chunks(connection, connection.session, data)
            return None
        if op in (Op.PRESENCE_UPDATE, Op.VOICE_STATE_UPDATE):
            return None  # accepted and ignored: nobody else is in the synthetic guilds
        return CloseCode.UNKNOWN_OPCODE

    def refuse_shard(self, shard_id: int, refuse: bool = True) -> None:
        """While refused, every IDENTIFY and RESUME of shard ``shard_id`` stalls for
        :data:`REFUSED_STALL` seconds, then is closed with 4000 (a gateway node in trouble):
        discord.py keeps trying (it retries a close at once: the stall keeps that loop slow),
        the shard stays down."""
        if refuse:
            self._refused.add(shard_id)
        else:
            self._refused.discard(shard_id)

    async def _identify(self, connection: _Connection, data: Any) -> CloseCode | None:
        verdict = check_identify(data, token=self._token)
        if isinstance(verdict, CloseCode):
            return verdict
        if verdict.shard_id in self._refused:
            log.info(
                "IDENTIFY of shard %d refused: the shard is refused (/_offline/refuse)", verdict.shard_id
            )
            await asyncio.sleep(REFUSED_STALL)
            return CloseCode.UNKNOWN_ERROR
        indices = world.shard_guild_indices(verdict.shard_id, verdict.shard_count, self._guild_count)
        if len(indices) > MAX_GUILDS_PER_SHARD:
            return CloseCode.SHARDING_REQUIRED
        # Judged and attached without an await in between: simultaneous IDENTIFYs cannot both
        # take a bucket. Refusals imitate Discord; the docs' words are in .limits.
        judged = self._limits.judge(
            verdict.shard_id, verdict.shard_count, now=time.monotonic(), at=time.time()
        )
        if judged.refused == BUDGET_EXHAUSTED:
            log.warning("IDENTIFY of shard %d refused: session-start budget exhausted", verdict.shard_id)
            self._terminate_all_sessions(connection)
            return CloseCode.AUTHENTICATION_FAILED
        if judged.refused is not None:
            log.warning(
                "IDENTIFY of shard %d refused: bucket %s identified less than %.3g s ago",
                verdict.shard_id,
                judged.bucket,
                self._limits.identify_window,
            )
            self._counters["invalid_sessions"] += 1
            await connection.send(payload(Op.INVALID_SESSION, False))
            return None
        session = Session(uuid.uuid4().hex, verdict)
        self._limits.note_session(session.session_id)
        self._remember(session)
        self._live[session.session_id], connection.session = connection, session
        connection.since = time.time()
        self._counters["identifies"] += 1
        ready = world.ready(
            session_id=session.session_id,
            shard_id=verdict.shard_id,
            shard_count=verdict.shard_count,
            guild_count=self._guild_count,
            resume_gateway_url=self.gateway_url,
        )
        await connection.send_dispatch("READY", ready, keep=False)
        for index in indices:
            # Built, sent and dropped one at a time: keeping 20,000 payloads alive costs
            # ~70 MB and makes the garbage collector triple the build time.
            await connection.send_dispatch("GUILD_CREATE", world.synthetic_guild(index))
        log.debug(
            "shard %d/%d identified: %d guilds sent", verdict.shard_id, verdict.shard_count, len(indices)
        )
        return None

    def _terminate_all_sessions(self, refused: _Connection) -> None:
        """Discord's answer to an exhausted session budget: every active session ends (the token is
        reset, so they close with 4004 and cannot resume). ``refused`` is closed by its handler."""
        self._sessions.clear()
        for connection in [c for c in self._connections if c is not refused and c.session is not None]:
            connection.session = None
            task = asyncio.create_task(connection.close(CloseCode.AUTHENTICATION_FAILED))
            self._background.add(task)
            task.add_done_callback(self._background.discard)
        self._live.clear()

    def _remember(self, session: Session) -> None:
        while len(self._sessions) >= MAX_SESSIONS:
            forgotten = next(iter(self._sessions))
            del self._sessions[forgotten]
            self._live.pop(forgotten, None)
        self._sessions[session.session_id] = session

    async def _resume(self, connection: _Connection, data: Any) -> CloseCode | None:
        verdict = check_resume(data, token=self._token)
        if isinstance(verdict, CloseCode):
            return verdict
        session = self._sessions.get(verdict.session_id)
        if session is not None and session.shard_id in self._refused:
            log.info("RESUME of shard %d refused: the shard is refused (/_offline/refuse)", session.shard_id)
            await asyncio.sleep(REFUSED_STALL)
            return CloseCode.UNKNOWN_ERROR
        missed = None if session is None else session.missed_since(verdict.sequence)
        if session is None or missed is None:
            self._counters["invalid_sessions"] += 1
            await connection.send(payload(Op.INVALID_SESSION, False))
            return None
        previous = self._live.get(session.session_id)
        self._live[session.session_id], connection.session = connection, session
        connection.since = time.time()
        if previous is not None:
            previous.session = None  # a session lives on one connection; the old one is stale
            # Closed in the background: waiting for its close frame would stall this resume.
            task = asyncio.create_task(previous.close(CloseCode.SESSION_TIMED_OUT))
            self._background.add(task)
            task.add_done_callback(self._background.discard)
        self._counters["resumes"] += 1
        for message in missed:
            await connection.send(message)
        await connection.send_dispatch("RESUMED", {"_trace": ["zmqcross-offline-gateway"]})
        return None

    async def _members_chunks(self, connection: _Connection, session: Session, data: Any) -> None:
        """Answer REQUEST_GUILD_MEMBERS for the guilds of this shard with their members (:mod:`.people`)."""
        if not isinstance(data, dict):
            return
        requested = data.get("guild_id")
        wanted: list[Any] = requested if isinstance(requested, list) else [requested]
        raw_ids = data.get("user_ids")
        if raw_ids is not None and not isinstance(raw_ids, list):
            raw_ids = [raw_ids]
        user_ids = None if raw_ids is None else [int(u) for u in raw_ids if str(u).isdigit()]
        query = data.get("query") if isinstance(data.get("query"), str) else ""
        raw_limit = data.get("limit")
        limit = raw_limit if isinstance(raw_limit, int) else 0
        for guild in wanted:
            index = world.guild_index(guild, self._guild_count)
            if (
                index is None
                or world.shard_of(world.guild_id(index), session.shard_count) != session.shard_id
            ):
                continue
            chunks = people.member_chunks(
                index, query=query, limit=limit, user_ids=user_ids, nonce=data.get("nonce")
            )
            for chunk in chunks:
                await connection.send_dispatch("GUILD_MEMBERS_CHUNK", chunk)
