"""ClusterManager: one process per cluster, watched, restarted, and reached through its pipe.

A machine agent creates one manager from its share of the plan, spawns the clusters,
and calls ``client.listen(manager)`` so that evals and guild requests from the bridge
reach the clusters, and requests from the bots reach the bridge.

A cluster is restarted when its process exits unasked, when it misses heartbeats for
``heartbeat_timeout`` seconds (its event loop is stuck), or when it is not ready within
``spawn_timeout`` of starting; at most ``restarts.max_restarts`` times per
``restarts.interval`` seconds, after which it is left failed and ``cluster_failed`` and
``error`` fire. A cluster that reports a mistake in the bot file (no ``ClusterClient``, a
bot that is not an ``AutoShardedClient``, the wrong shards) fails at once, unrestarted.
What a failing cluster reported (its traceback) is logged, and its last lines shown in
its status's ``last_error``.

A cluster's states, every move between them and the restart decision are in
``_lifecycle.py`` (:class:`ClusterState`, :data:`CLUSTER_TRANSITIONS`); statuses show the
states' values.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .._events import EventEmitter, Handler
from .._handover import unpack_fingerprints
from .._identify import IdentifyParams
from ..errors import ConfigurationError, ConnectionLost, ZmqcrossError
from ..planning import ShardData
from ..protocol import (
    DEFAULT_LIMITS,
    ErrorInfo,
    ErrorReply,
    EvalReply,
    EvalRequest,
    Goodbye,
    GuildRequest,
    Handover,
    Heartbeat,
    Lease,
    Limits,
    Message,
    Reply,
    Request,
    Send,
    readdress,
)
from ..relay import ClusterRelay, PipeConn, RouteTable, Serving, Upcalls, shared_core
from ..status import ClusterStatus, ShardStatus
from ._child import FENCED_EXIT, ClusterData
from ._lifecycle import (
    CLUSTER_TRANSITIONS,
    DEFAULT_RESTARTS,
    ClusterState,
    GiveUp,
    RestartPolicy,
    _Cluster,
    after_exit,
    error_summary,
    is_fatal,
)
from ._process import ClusterProcess
from ._succession import Succession

__all__ = [
    "CLUSTER_TRANSITIONS",
    "MANAGER_EVENTS",
    "ClusterManager",
    "ClusterState",
    "ClusterStatus",
    "RestartPolicy",
]

log = logging.getLogger("zmqcross.cluster")

MANAGER_EVENTS = ("cluster_create", "cluster_exit", "cluster_failed", "cluster_ready", "error")
"""Events a :class:`ClusterManager` emits; see :meth:`ClusterManager.on`."""

Upstream = Callable[[Message, Callable[[Message | ZmqcrossError], object]], None]


# Every eval and guild request checks its clusters' state. Looking a member up on its
# Enum class costs ~150 ns on Python 3.11, a module global ~10 ns: the hot checks use this.
_READY = ClusterState.READY

RETIRING = "retiring"
"""The status of an old cluster still serving during a rolling restart (a view, not a state)."""

DEFAULT_SHARD_DOWN_TIMEOUT = 60.0
"""Seconds a shard of a ready cluster may stay down (disconnected, reconnecting) before its
cluster is restarted; a shard waiting for its IDENTIFY slot is not down."""


class ClusterManager:
    """Runs ``bot_file`` once per cluster of this machine's share of the plan.

    ``shard_list`` has one list of shard ids per cluster and ``cluster_list`` their global
    ids, as :meth:`Client.request_shard_data` returns them (see :meth:`from_shard_data`).
    Clusters start ``spawn_delay`` seconds apart (0: all at once); each IDENTIFY waits for its
    turn in the fleet's queue (``identify``: how the bridge paces them; a manager without a
    bridge paces its clusters by the same rule on its own). ``shard_list`` may also be
    a flat list of shard ids, cut into clusters of ``shards_per_cluster``. ``token`` sets
    ``DISCORD_TOKEN`` and ``env`` more variables in the cluster processes.
    """

    def __init__(
        self,
        bot_file: str | os.PathLike[str],
        *,
        total_shards: int,
        shard_list: Sequence[Sequence[int]] | Sequence[int],
        cluster_list: Sequence[int] | None = None,
        total_clusters: int | None = None,
        shards_per_cluster: int | None = None,
        plan_version: str = "",
        token: str | None = None,
        env: Mapping[str, str] | None = None,
        respawn: bool = True,
        restarts: RestartPolicy = DEFAULT_RESTARTS,
        spawn_delay: float = 0.0,
        spawn_timeout: float = 120.0,
        heartbeat_interval: float = 1.0,
        heartbeat_timeout: float = 15.0,
        limits: Limits = DEFAULT_LIMITS,
        identify: IdentifyParams | None = None,
        shard_down_timeout: float = DEFAULT_SHARD_DOWN_TIMEOUT,
    ) -> None:
        path = Path(bot_file)
        if not path.is_file():
            raise ConfigurationError(f"bot file {str(path)!r} does not exist")
        if shard_list and all(isinstance(s, int) for s in shard_list):
            # A flat list of shard ids, as the seed takes it: cut into clusters here.
            flat = [int(s) for s in shard_list]  # type: ignore[arg-type]
            size = shards_per_cluster or -(-len(flat) // (len(cluster_list) if cluster_list else 1))
            shard_list = [flat[i : i + size] for i in range(0, len(flat), size)]
        shards = [tuple(int(s) for s in cluster) for cluster in shard_list]  # type: ignore[union-attr]
        ids = list(cluster_list) if cluster_list is not None else list(range(len(shards)))
        if len(ids) != len(shards):
            raise ConfigurationError(
                f"cluster_list has {len(ids)} ids for {len(shards)} clusters in shard_list"
            )
        if not 0 < heartbeat_interval < heartbeat_timeout:
            raise ConfigurationError("heartbeat_interval must be positive and shorter than heartbeat_timeout")
        self.bot_file = path.resolve()
        self.total_shards = total_shards
        self.total_clusters = total_clusters if total_clusters is not None else len(ids)
        self.plan_version = plan_version
        self.respawn = respawn
        self.restarts = restarts
        self.spawn_delay = spawn_delay
        self.spawn_timeout = spawn_timeout
        self.heartbeat_interval = heartbeat_interval
        self.heartbeat_timeout = heartbeat_timeout
        if not shard_down_timeout > heartbeat_interval:
            raise ConfigurationError("shard_down_timeout must be longer than heartbeat_interval")
        self.shard_down_timeout = shard_down_timeout
        self._limits = limits
        self.identify = identify if identify is not None else IdentifyParams()
        self._env = dict(env or {})
        if token is not None:
            self._env["DISCORD_TOKEN"] = token
        self._clusters = {cid: _Cluster(cid, s) for cid, s in zip(ids, shards, strict=True)}
        self._events = EventEmitter(MANAGER_EVENTS, log)
        self._mp = multiprocessing.get_context("spawn")
        self._running = False
        self._watchdog: asyncio.Task[None] | None = None
        self._respawns: set[asyncio.Task[None]] = set()
        self._retiring: dict[int, _Cluster] = {}  # old clusters still serving during a rolling restart
        self._core = shared_core()
        self._hot: ClusterRelay | None = None  # made on the first start, on the manager's loop
        self.upstream: Upstream | None = None
        """Set by ``Client.listen``: carries the bots' own requests to the bridge."""
        self.lease: Callable[[], float | None] | None = None
        """Set by ``Client.listen``: until when (monotonic) the bridge lets this machine run
        clusters; passed on to them, and they close their sessions when it runs out."""
        self._fenced: set[int] = set()  # clusters that stopped when the lease ran out
        self._succession = Succession(self)  # new processes taking over from old ones

    @classmethod
    def from_shard_data(
        cls, bot_file: str | os.PathLike[str], data: ShardData, **options: Any
    ) -> ClusterManager:
        """A manager for the share a :meth:`Client.request_shard_data` call returned."""
        return cls(
            bot_file,
            total_shards=data.total_shards,
            shard_list=data.shard_list,
            cluster_list=data.cluster_list,
            total_clusters=data.total_clusters,
            plan_version=data.plan_version,
            **{"identify": data.identify, **options},
        )

    def on(self, name: str, handler: Handler | None = None) -> Any:
        """Register a handler: ``cluster_create(id)``, ``cluster_ready(id)``,
        ``cluster_exit(id, exit_code)``, ``cluster_failed(id, error)`` (it will not be started
        again; ``error`` is a :class:`ZmqcrossError` saying why), ``error(exception)``."""
        return self._events.on(name, handler) if handler is not None else self._events.on(name)

    @property
    def shard_data(self) -> ShardData:
        """This machine's share, as the bridge hands it out (told to it on re-registration)."""
        return ShardData(
            total_shards=self.total_shards,
            shard_list=tuple(c.shards for c in self._clusters.values()),
            cluster_list=tuple(self._clusters),
            total_clusters=self.total_clusters,
            plan_version=self.plan_version,
            identify=self.identify,
        )

    @property
    def clusters(self) -> tuple[ClusterStatus, ...]:
        """Every cluster's status, in cluster id order."""
        return tuple(self._status(c) for c in sorted(self._clusters.values(), key=lambda c: c.id))

    def _status(self, c: _Cluster, state: str | None = None) -> ClusterStatus:
        alive = c.process is not None and c.process.is_alive()
        return ClusterStatus(
            id=c.id,
            shards=c.shards,
            pid=c.process.pid if alive else None,
            state=state or c.state.value,
            guilds=c.guilds,
            restarts=c.restarts,
            started_at=c.started_at,
            uptime=time.time() - c.started_at if alive and c.started_at is not None else None,
            last_heartbeat=c.last_beat_at,
            exit_code=c.exit_code,
            last_error=c.last_error,
            waiting=c.waiting if c.state is ClusterState.STARTING else None,
            live=not c.held,
            shard_health=c.shard_health if alive else (),
            rss=c.rss if alive else None,
        )

    def statuses(self) -> list[ClusterStatus]:
        """Every cluster, including old ones still serving during a rolling restart."""
        current = [self._status(c) for c in sorted(self._clusters.values(), key=lambda c: c.id)]
        retiring = [self._status(c, RETIRING) for c in sorted(self._retiring.values(), key=lambda c: c.id)]
        return current + [r for r in retiring if r.pid is not None]

    def in_flight(self) -> int:
        """Requests handed to clusters and not answered yet."""
        return self._hot.in_flight if self._hot is not None else 0

    @property
    def relay(self) -> ClusterRelay:
        """The hot path to the clusters, on the relay core's thread (``Client.listen`` feeds it)."""
        if self._hot is None:
            upcall = Upcalls(asyncio.get_running_loop())
            self._hot = ClusterRelay(
                self._core, lambda conn, msg: upcall(self._from_cluster, conn.owner, msg), limits=self._limits
            )
            self._publish_routes()
        return self._hot

    # ------------------------------------------------------------------ lifetime

    async def spawn(self, *, delay: float | None = None, timeout: float | None = None) -> None:
        """Start every cluster, ``delay`` seconds apart, and wait until each is ready or has exited.

        The clusters' IDENTIFYs wait for their turns in the fleet's queue, so the clusters
        themselves need not wait for each other. A cluster that dies before it is ready
        holds up no other: its restarts are the watchdog's business.
        """
        if self._running:
            raise RuntimeError("this manager has already spawned its clusters")
        self._running = True
        self._watchdog = asyncio.get_running_loop().create_task(self._watch())
        delay = self.spawn_delay if delay is None else delay
        timeout = self.spawn_timeout if timeout is None else timeout
        order = sorted(self._clusters.values(), key=lambda c: c.id)
        for index, cluster in enumerate(order):
            if delay and index:
                await asyncio.sleep(delay)
            await self._start(cluster)
        await asyncio.gather(*(self._first_start(c, timeout) for c in order))

    async def _first_start(self, cluster: _Cluster, timeout: float) -> None:
        ready, exited = cluster.ready, cluster.exited
        waits = [asyncio.ensure_future(ready.wait()), asyncio.ensure_future(exited.wait())]
        try:
            await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for wait in waits:
                wait.cancel()
        if ready.is_set():
            log.info("cluster %d ready (shards %s)", cluster.id, list(cluster.shards))
        elif exited.is_set():
            then = "it failed" if cluster.state is ClusterState.FAILED else "it is being restarted"
            log.warning("cluster %d exited before it was ready (%s)", cluster.id, then)
        else:
            log.warning("cluster %d not ready after %g s; the watchdog will restart it", cluster.id, timeout)

    async def wait_ready(self, timeout: float | None = None) -> None:
        """Wait until every cluster is ready."""
        await asyncio.wait_for(asyncio.gather(*(c.ready.wait() for c in self._clusters.values())), timeout)

    async def close(self, *, timeout: float = 10.0) -> None:
        """Stop every cluster: ask each to close its Discord connections, kill what is left after ``timeout``."""
        self._running = False
        for task in [self._watchdog, *self._respawns]:
            if task is not None:
                task.cancel()
        everything = [*self._clusters.values(), *self._retiring.values()]
        await asyncio.gather(
            *(self._stop_cluster(c, timeout, "the machine is shutting down") for c in everything)
        )
        await self._events.aclose()

    async def _stop_cluster(self, c: _Cluster, timeout: float, reason: str) -> None:
        """Ask one cluster to close discord.py and exit; kill it after ``timeout``."""
        process = c.process
        if process is None:
            return
        if process.is_alive():
            c.stopping = True
            if c.state is not ClusterState.STOPPING:  # a second stop of the same cluster just waits too
                c.move(ClusterState.STOPPING)
                self._publish_routes()
            if c.pipe is None or not c.pipe.send(Goodbye(reason=reason)):
                process.terminate()
            end = time.monotonic() + timeout
            while process.is_alive() and time.monotonic() < end:
                await asyncio.sleep(0.05)
            if process.is_alive():
                log.warning("cluster %d did not stop within %g s; killing it", c.id, timeout)
                process.kill()
        await asyncio.to_thread(process.join, 5)
        self._reap(c)
        c.move(ClusterState.STOPPED)
        self._publish_routes()

    async def roll(self, data: ShardData, *, timeout: float | None = None) -> None:
        """Switch to a new share of a new plan, one cluster at a time, never all down.

        New clusters start one after another; each old cluster keeps serving until every
        new cluster sharing its guilds is ready, then *retires*: it stops handling events,
        says which ones it handled, and closes. A new cluster that shares guilds with old
        ones starts *held* (ready, its handlers waiting) and goes live once they have all
        retired, skipping the events they handled (:mod:`zmqcross._handover`). The old
        clusters may run on other machines: ``data.handover`` (from the bridge) names them,
        and their notices come through :meth:`handover_notice`. What still waits after
        ``timeout`` seconds (a machine gone mid-roll) retires or goes live anyway.
        """
        await self._succession.roll(data, timeout=timeout)

    async def restart(self, cluster_id: int, *, timeout: float | None = None) -> ClusterStatus:
        """Replace one cluster's process with a new one, which reads the bot file afresh.

        The new process starts held, IDENTIFYs in its turn and becomes ready; then the old
        one retires and the new one goes live (each event handled once, as in :meth:`roll`).
        If the new process exits or is not ready within ``timeout`` (``spawn_timeout``), it
        is stopped, the old one serves on, and :class:`ZmqcrossError` says why.
        """
        return await self._succession.restart(cluster_id, timeout=timeout)

    def handover_notice(self, msg: Handover) -> None:
        """Another machine's cluster is ready or retired (passed on by the bridge)."""
        self._succession.notice(msg)

    async def _start(self, c: _Cluster) -> None:
        parent, child = self._mp.Pipe(duplex=True)
        data = ClusterData(
            cluster_id=c.id,
            shard_list=c.shards,
            total_shards=self.total_shards,
            total_clusters=self.total_clusters,
            heartbeat_interval=self.heartbeat_interval,
            env=tuple(self._env.items()),
            identify=self.identify,
            in_fleet=self.upstream is not None,
            held=c.held,
        )
        # Not multiprocessing's spawn: it would re-run the machine's own script in the child.
        process = ClusterProcess(str(self.bot_file), data, child)
        await asyncio.to_thread(process.start)  # spawning execs a new interpreter: keep the loop free
        child.close()
        c.process, c.stopping, c.exit_code, c.guilds = process, False, None, None
        c.report, c.killed = None, None
        c.move(ClusterState.STARTING)
        c.ready, c.exited = asyncio.Event(), asyncio.Event()
        c.started, c.started_at = time.monotonic(), time.time()
        c.last_beat, c.last_beat_at = c.started, None
        relay, upcall = self.relay, Upcalls(asyncio.get_running_loop())
        c.pipe = PipeConn(
            self._core,
            parent,
            on_frames=relay.from_pipe,
            on_closed=lambda conn, exc: upcall(self._pipe_closed, conn, exc),
            name=f"cluster {c.id}",
            limits=self._limits,
        )
        c.pipe.owner = c
        c.pipe.start()
        self._publish_routes()
        c.lease_sent = None
        self._pass_lease(c)
        asyncio.get_running_loop().add_reader(process.sentinel, self._exited, c, process)
        log.info("cluster %d starting (shards %s, pid %d)", c.id, list(c.shards), process.pid)
        self._events.emit("cluster_create", c.id)

    # ------------------------------------------------------------------ watching

    def _exited(self, c: _Cluster, process: Any) -> None:
        loop = asyncio.get_running_loop()
        loop.remove_reader(process.sentinel)
        process.close_sentinel()  # only now: see ClusterProcess.close_sentinel
        task = loop.create_task(self._after_exit(c, process))
        self._respawns.add(task)
        task.add_done_callback(self._respawns.discard)

    async def _after_exit(self, c: _Cluster, process: Any) -> None:
        # The sentinel closes while the process is still tearing down, a moment before
        # waitpid can collect it: join (off the loop) to read the real exit code.
        await asyncio.to_thread(process.join, 5)
        if process is not c.process:
            return
        self._reap(c)
        code = c.exit_code
        gone = ConnectionLost(f"cluster {c.id} exited (code {code}) before answering")
        c.exited.set()
        if c.pipe is not None:
            self._core.submit(self.relay.fail_pipe, c.pipe, gone)
            c.pipe.close()
        wanted = c.stopping
        c.move(ClusterState.STOPPED)
        self._publish_routes()
        c.ready.clear()
        if code == FENCED_EXIT and not wanted:
            c.last_error = "stopped its Discord sessions: this machine's lease from the bridge ran out"
            log.warning("cluster %d %s; it starts again when the bridge renews the lease", c.id, c.last_error)
            self._events.emit("cluster_exit", c.id, code)
            if self._clusters.get(c.id) is c:
                self._fenced.add(c.id)
            return
        if not wanted and c.report is None:
            c.last_error = c.killed or f"exited with code {code}"
        log.log(logging.INFO if wanted else logging.WARNING, "cluster %d exited with code %s", c.id, code)
        self._events.emit("cluster_exit", c.id, code)
        if not wanted and self._running and self.respawn and self._clusters.get(c.id) is c and not c.trial:
            self._schedule_respawn(c)

    def _reap(self, c: _Cluster) -> None:
        if c.process is not None and not c.process.is_alive():
            c.process.join(0)
            c.exit_code = c.process.exitcode

    def _schedule_respawn(self, c: _Cluster) -> None:
        decision = after_exit(c, now=time.monotonic(), policy=self.restarts, report=c.report)
        if isinstance(decision, GiveUp):
            c.move(ClusterState.FAILED)
            self._publish_routes()
            c.last_error = f"{decision.reason}; last error:\n{c.last_error}"
            error = ZmqcrossError(f"{decision.reason}; its last error: {c.last_error.splitlines()[-1]}")
            log.error("%s", error.message)
            self._events.emit("cluster_failed", c.id, error)
            self._events.emit("error", error)
            return
        task = asyncio.get_running_loop().create_task(self._respawn(c, decision.delay))
        self._respawns.add(task)
        task.add_done_callback(self._respawns.discard)

    async def _respawn(self, c: _Cluster, delay: float) -> None:
        await asyncio.sleep(delay)
        if not self._running or c.state is not ClusterState.STOPPED or self._clusters.get(c.id) is not c:
            return
        if not self._leased():
            self._fenced.add(c.id)  # started again once the bridge renews the lease
            return
        await self._start(c)

    def _leased(self) -> bool:
        until = self.lease() if self.lease is not None else None
        return until is None or until > time.monotonic()

    def _pass_lease(self, c: _Cluster) -> None:
        until = self.lease() if self.lease is not None else None
        if (
            until is not None
            and until != c.lease_sent
            and c.pipe is not None
            and c.pipe.send(Lease(until=until))
        ):
            c.lease_sent = until

    def _renew_leases(self) -> None:
        # Every heartbeat interval: pass the lease on, and start what stopped when it ran out.
        for c in [*self._clusters.values(), *self._retiring.values()]:
            self._pass_lease(c)
        if self._fenced and self._running and self.lease is not None and self._leased():
            for cid in sorted(self._fenced):
                stopped = self._clusters.get(cid)
                if stopped is not None and stopped.state is ClusterState.STOPPED:
                    log.info("cluster %d starts again: the bridge renewed this machine's lease", cid)
                    task = asyncio.get_running_loop().create_task(self._start(stopped))
                    self._respawns.add(task)
                    task.add_done_callback(self._respawns.discard)
            self._fenced.clear()

    def _reported(self, c: _Cluster, info: ErrorInfo) -> None:
        # The cluster's last words before it exits: kept until its exit decides what next.
        c.report, c.last_error = info, error_summary(info)
        if is_fatal(info):
            log.error("%s", info.message)  # it names the cluster and the fix
        else:
            log.error("cluster %d failed: %s", c.id, (info.traceback or c.last_error).rstrip())

    def _kill(self, c: _Cluster, why: str) -> None:
        c.killed = f"killed: it {why}"
        log.warning("cluster %d %s; killing it", c.id, why)
        if c.process is not None and c.process.is_alive():
            c.process.kill()

    async def _watch(self) -> None:
        while self._running:
            await asyncio.sleep(self.heartbeat_interval)
            self._renew_leases()
            now = time.monotonic()
            for c in list(self._clusters.values()):
                if c.state is ClusterState.STARTING and now - c.started > self.spawn_timeout:
                    self._kill(c, f"was not ready within spawn_timeout={self.spawn_timeout:g} s")
                elif c.state is _READY and now - c.last_beat > self.heartbeat_timeout:
                    self._kill(
                        c, f"sent no heartbeat for {now - c.last_beat:.1f} s (its event loop is stuck?)"
                    )
                elif c.state is _READY and not c.held and not c.repairing and self._succession.ledger is None:
                    down = [s for s in c.shard_health if s.state != "waiting" and not s.up]
                    if any(s.down_for >= self.shard_down_timeout for s in down):
                        self._succession.repair(c, down, now)

    def _pipe_closed(self, conn: PipeConn, exc: Exception | None) -> None:
        c: _Cluster = conn.owner
        self._publish_routes()
        if self.in_flight():
            task = asyncio.get_running_loop().create_task(self._fail_open(c, conn, c.exited))
            self._respawns.add(task)
            task.add_done_callback(self._respawns.discard)

    async def _fail_open(self, c: _Cluster, conn: PipeConn, exited: asyncio.Event) -> None:
        # The pipe usually closes because the process died; then the exit handler fails
        # the open requests with the exit code. Only a pipe that closes on its own is
        # reported as such. (Joining here too would race the exit handler's waitpid.)
        try:
            await asyncio.wait_for(exited.wait(), 1.0)
        except TimeoutError:
            if c.exited is not exited:  # a new process runs for this cluster now: not ours to fail
                return
            error = ConnectionLost(f"the pipe to cluster {c.id} closed before it answered")
            self._core.submit(self.relay.fail_pipe, conn, error)

    # ------------------------------------------------------------------ messages from clusters

    def _from_cluster(self, c: _Cluster, msg: Message) -> None:
        if isinstance(msg, Heartbeat):
            c.last_beat, c.last_beat_at, c.guilds = time.monotonic(), msg.sent_at, msg.guilds
            c.waiting = msg.waiting if type(msg.waiting) is str else None
            c.rss = msg.rss
            if isinstance(msg.shards, list):
                try:
                    health = tuple(ShardStatus.from_row(row) for row in msg.shards)
                except ValueError as exc:
                    log.debug("cluster %d sent a malformed shard report: %s", c.id, exc)
                else:
                    was_down = {s.id for s in c.shard_health if not s.up}
                    c.shard_health = health
                    if was_down or any(not s.up for s in health):  # routing reads which shards are down
                        self._publish_routes()
            if c.waiting is not None and c.state is ClusterState.STARTING:
                c.started = c.last_beat  # spawn_timeout counts from its IDENTIFY's turn, not its start
            if msg.ready and c.state is ClusterState.STARTING:
                c.move(ClusterState.READY)
                c.last_error = None
                self._publish_routes()
                c.ready.set()
                self._events.emit("cluster_ready", c.id)
                if self._succession.ledger is not None and self._clusters.get(c.id) is c:  # awaited
                    self._succession.note(
                        Handover(step="ready", plan_version=self.plan_version, cluster_id=c.id)
                    )
                    self._succession.changed.set()
        elif isinstance(msg, ErrorReply) and msg.reply_to is None:  # see _child.report_failure
            self._reported(c, msg.error)
        elif isinstance(msg, (EvalReply, Reply, ErrorReply)):  # the relay core took the timely ones
            log.debug("cluster %d answered request %s after it ended", c.id, msg.reply_to)
        elif isinstance(msg, (EvalRequest, GuildRequest, Request, Send)):
            self._upstream(c, msg)
        elif isinstance(msg, Handover) and msg.step == "retired":
            if c.retired is not None and not c.retired.done():
                try:
                    c.retired.set_result(unpack_fingerprints(msg.fingerprints))
                except ValueError:
                    c.retired.set_result([])
        else:
            log.warning("cluster %d sent an unexpected %r message", c.id, msg.type)

    def _upstream(self, c: _Cluster, msg: EvalRequest | GuildRequest | Request | Send) -> None:
        pipe = c.pipe
        if self.upstream is None:
            if not isinstance(msg, Send) and pipe is not None:
                error = ConnectionLost(
                    "this machine is not connected to a bridge (no client.listen(manager))"
                )
                pipe.send(
                    ErrorReply(reply_to=msg.id, error=ErrorInfo.from_exception(error, with_traceback=False))
                )
            return
        if isinstance(msg, Send):
            self.upstream(msg, lambda outcome: None)
            return
        request_id = msg.id
        self.upstream(
            msg, lambda outcome: pipe.send(readdress(outcome, request_id)) if pipe is not None else None
        )

    # ------------------------------------------------------------------ routing (the relay core's table)

    def _publish_routes(self) -> None:
        """Hand the relay core a new table of where work goes (see zmqcross.relay._routes)."""
        if self._hot is not None:
            self._hot.routes = self._route_table()

    def _route_table(self) -> RouteTable:
        entries: dict[int, Serving] = {}  # by id(cluster record)

        def entry(c: _Cluster) -> Serving:
            found = entries.get(id(c))
            if found is None:
                entries[id(c)] = found = self._entry(c)
            return found

        ids = self._clusters.keys() | self._retiring.keys()
        serving = {cid: entry(c) for cid in ids if (c := self._serving(cid)) is not None}
        # A guild's shard is answered by a ready process that runs it (a new cluster before an
        # old one still serving), else by the current cluster, whose error then says why.
        candidates = [self._clusters[cid] for cid in sorted(self._clusters)]
        candidates += [c for _, c in sorted(self._retiring.items()) if c.state is _READY]
        owners: dict[int, Serving] = {}
        for c in sorted(candidates, key=lambda c: c.state is not _READY):  # stable: keeps that order
            for shard in c.shards:
                owners.setdefault(shard, entry(c))
        return RouteTable(
            total_shards=self.total_shards,
            everyone=tuple(sorted(self._clusters)),
            mine=frozenset(serving),
            serving=serving,
            owners=owners,
        )

    @staticmethod
    def _entry(c: _Cluster) -> Serving:
        down = {s.id: (s.state, s.down_for) for s in c.shard_health if not s.up}
        pipe = c.pipe if c.state is _READY else None
        return Serving(cluster=c.id, state=c.state.value, pipe=pipe, down=down)

    def _serving(self, cluster_id: int) -> _Cluster | None:
        """The process answering for ``cluster_id``: its own, or the old one until that is ready."""
        current = self._clusters.get(cluster_id)
        old = self._retiring.get(cluster_id)
        if current is not None and current.state is _READY:
            return current
        if old is not None and old.state is _READY:
            return old
        return current or old

    def send_to_clusters(self, data: bytes) -> int:
        """Hand a custom message (encoded JSON) to every ready cluster's ``message`` handlers."""
        sent = 0
        for cid in sorted(self._clusters):
            c = self._serving(cid)
            if c is not None and c.state is _READY and c.pipe is not None and c.pipe.send(Send(data=data)):
                sent += 1
        return sent
