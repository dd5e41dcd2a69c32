"""A manager's successions: new cluster processes taking over from old ones, each event once.

Three ways a cluster's process is replaced while the machine runs, all by one handover
(:mod:`zmqcross._handover`): a rolling restart to a new plan (:meth:`Succession.roll`), a
restart of one cluster for new code (:meth:`Succession.restart`), and the repair of a
cluster whose shard stays down (:meth:`Succession.repair`). The new process starts held;
the old one retires once its successors are ready; the held one goes live once its
predecessors retired, skipping what they handled. The notices of a reshard (a cluster
ready, a cluster retired) go to the other machines through the bridge.

Composed into :class:`~zmqcross.cluster.manager.ClusterManager`, whose clusters it starts
and stops through the manager's own lifecycle.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING

from .._handover import HandoverPlan, Ledger, overlaps, pack_fingerprints, unpack_fingerprints
from ..errors import ClientNotFound, ZmqcrossError
from ..planning import ShardData
from ..protocol import Handover
from ..status import ClusterStatus, ShardStatus
from ._lifecycle import ClusterState, GiveUp, _Cluster, after_exit

if TYPE_CHECKING:
    from .manager import ClusterManager

__all__ = ["MAX_EARLY_NOTICES", "RETIRE_TIMEOUT", "Succession"]

log = logging.getLogger("zmqcross.cluster")

_READY = ClusterState.READY

RETIRE_TIMEOUT = 5.0
"""Seconds an old cluster has to answer its retire step (with what it handled)."""
MAX_EARLY_NOTICES = 4096
"""Handover notices kept from other machines before this machine's own roll begins."""


class Succession:
    """The handovers of one :class:`ClusterManager` (see the module docstring)."""

    def __init__(self, manager: ClusterManager) -> None:
        self._m = manager
        self.ledger: Ledger | None = None  # the handover under way
        self.changed = asyncio.Event()
        self.shared = False  # whether the ledger's steps go to the other machines (a reshard)
        self.early: list[Handover] = []  # other machines' notices from before this roll began
        self._one_at_a_time = asyncio.Lock()  # a roll waits for a restart under way, and back

    async def roll(self, data: ShardData, *, timeout: float | None = None) -> None:
        """See :meth:`ClusterManager.roll`."""
        async with self._one_at_a_time:
            await self._roll(data, timeout)

    async def _roll(self, data: ShardData, timeout: float | None) -> None:
        timeout = self._m.spawn_timeout if timeout is None else timeout
        old = dict(self._m._clusters)
        for c in old.values():
            self._tell(c, Handover(step="record", cluster_id=c.id))  # before any successor starts
        new_shards = dict(zip(data.cluster_list, data.shard_list, strict=True))
        plan = data.handover
        if plan is None or plan.from_plan != self._m.plan_version:  # no bridge: this machine's own
            live_after, retire_after = overlaps(
                {c.id: c.shards for c in old.values()}, self._m.total_shards, new_shards, data.total_shards
            )
            plan = HandoverPlan(self._m.plan_version, live_after, retire_after)
        ledger = Ledger(plan, data.plan_version)
        self.ledger, self.changed, self.shared = ledger, asyncio.Event(), True
        for notice in self.early:
            ledger.note(
                notice.step, notice.plan_version, notice.cluster_id, unpack_fingerprints(notice.fingerprints)
            )
        self.early.clear()
        self._m._retiring.update(self._m._clusters)
        self._m._clusters = {
            cid: _Cluster(cid, tuple(s), held=bool(plan.live_after.get(cid))) for cid, s in new_shards.items()
        }
        self._m.total_shards, self._m.total_clusters = data.total_shards, data.total_clusters
        self._m.plan_version, self._m.identify = data.plan_version, data.identify
        self._m._publish_routes()
        log.info("rolling restart to plan %s: clusters %s", data.plan_version, list(data.cluster_list))
        try:
            for cid in sorted(self._m._clusters):
                fresh = self._m._clusters[cid]
                await self._m._start(fresh)
                try:
                    await asyncio.wait_for(fresh.ready.wait(), timeout)
                except TimeoutError:
                    log.warning(
                        "new cluster %d not ready after %g s; the clusters it replaces serve on", cid, timeout
                    )
                    continue
                await self._settle(ledger)  # its readiness is in the ledger (see _from_cluster)
                log.info("rolling restart: cluster %d now runs shards %s", cid, list(fresh.shards))
            end = time.monotonic() + timeout
            while self._m._retiring or any(c.held for c in self._m._clusters.values()):
                left = end - time.monotonic()
                if left <= 0:
                    break
                self.changed.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.changed.wait(), min(left, self._m.heartbeat_interval))
                await self._settle(ledger)
            await self._settle(ledger, force=True)
        except Exception:
            # Whatever went wrong, no cluster may stay held (deaf) or retiring for good.
            log.exception("rolling restart to plan %s failed; ending its handover now", data.plan_version)
            await self._settle(ledger, force=True)
            raise
        finally:
            self.ledger = None
        log.info("rolling restart to plan %s done", data.plan_version)

    async def restart(self, cluster_id: int, *, timeout: float | None = None) -> ClusterStatus:
        """See :meth:`ClusterManager.restart`."""
        timeout = self._m.spawn_timeout if timeout is None else timeout
        old = self._m._clusters.get(cluster_id)
        if old is None:
            raise ClientNotFound(
                f"this machine runs no cluster {cluster_id} (it runs {sorted(self._m._clusters)})"
            )
        if self.ledger is not None or self._one_at_a_time.locked():
            raise ZmqcrossError(
                f"cluster {cluster_id} was not restarted: a handover is under way on this machine"
            )
        if old.state is not _READY:
            raise ZmqcrossError(f"cluster {cluster_id} is {old.state.value}, not ready: not restarted")
        fresh = _Cluster(
            cluster_id, old.shards, held=True, trial=True, restarts=old.restarts, recent=old.recent
        )
        ledger = Ledger(
            HandoverPlan(self._m.plan_version, {cluster_id: (cluster_id,)}, {cluster_id: (cluster_id,)}),
            self._m.plan_version,
        )
        async with self._one_at_a_time:
            return await self._restart(old, fresh, ledger, timeout)

    async def _restart(self, old: _Cluster, fresh: _Cluster, ledger: Ledger, timeout: float) -> ClusterStatus:
        cluster_id = old.id
        self._tell(old, Handover(step="record", cluster_id=cluster_id))
        self.ledger, self.changed, self.shared = ledger, asyncio.Event(), False
        self._m._retiring[cluster_id], self._m._clusters[cluster_id] = old, fresh
        self._m._publish_routes()
        log.info("cluster %d restarting: a new process takes over from pid %s", cluster_id, old.process.pid)
        try:
            await self._m._start(fresh)
            failure = await self._until_ready(fresh, timeout)
            if failure is not None:
                self._m._clusters[cluster_id] = self._m._retiring.pop(cluster_id)
                self._m._publish_routes()
                self._tell(old, Handover(step="keep", cluster_id=cluster_id))
                await self._m._stop_cluster(fresh, 5.0, "its restart failed")
                error = ZmqcrossError(
                    f"cluster {cluster_id}'s new process {failure}; its old process (pid {old.process.pid}) "
                    f"serves on. Last error: {(fresh.last_error or 'none').splitlines()[-1]} "
                    "(the machine's log has the whole of it)"
                )
                log.error("%s", error.message)
                raise error
            fresh.trial = False
            await self._settle(ledger)
        finally:
            self.ledger = None
        log.info("cluster %d restarted: pid %s", cluster_id, fresh.process.pid)
        return self._m._status(fresh)

    async def _until_ready(self, c: _Cluster, timeout: float) -> str | None:
        """Wait until ``c`` is ready (None) or has exited or timed out (what happened)."""
        waits = [asyncio.ensure_future(c.ready.wait()), asyncio.ensure_future(c.exited.wait())]
        try:
            await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for wait in waits:
                wait.cancel()
        if c.ready.is_set():
            return None
        if c.exited.is_set():
            return f"exited with code {c.exit_code} before it was ready"
        return f"was not ready within {timeout:g} s"

    async def _settle(self, ledger: Ledger, *, force: bool = False) -> None:
        # Retire the old clusters whose successors are all ready, then let go live the new
        # ones whose predecessors have all retired. ``force``: the roll waited long enough.
        for cid, old in sorted(self._m._retiring.items()):
            if not force and not ledger.may_retire(cid):
                continue
            if force and ledger.missing_ready(cid):
                log.warning(
                    "old cluster %d retires though new clusters %s are not ready: their guilds wait",
                    cid,
                    ledger.missing_ready(cid),
                )
            handled = await self._retire(old)
            self._m._retiring.pop(cid, None)
            self._m._publish_routes()
            self.note(
                Handover(
                    step="retired",
                    plan_version=ledger.plan.from_plan,
                    cluster_id=cid,
                    fingerprints=pack_fingerprints(handled),
                )
            )
            await self._m._stop_cluster(old, 10.0, "replaced by a rolling restart")
        for c in self._m._clusters.values():
            if not c.held or (not force and (c.state is not _READY or not ledger.may_go_live(c.id))):
                continue
            if force and ledger.missing_retired(c.id):
                log.warning(
                    "cluster %d goes live though old clusters %s never said they retired: "
                    "events they handled may be handled again",
                    c.id,
                    ledger.missing_retired(c.id),
                )
            c.held = False
            self._tell(
                c,
                Handover(
                    step="release", cluster_id=c.id, fingerprints=pack_fingerprints(ledger.handled(c.id))
                ),
            )

    async def _retire(self, c: _Cluster) -> list[int]:
        """Tell an old cluster to stop handling events; the fingerprints of those it handled."""
        if c.pipe is None or c.process is None or not c.process.is_alive():
            return []
        c.retired = asyncio.get_running_loop().create_future()
        if not c.pipe.send(Handover(step="retire", cluster_id=c.id)):
            return []
        try:
            return await asyncio.wait_for(c.retired, RETIRE_TIMEOUT)
        except TimeoutError:
            log.warning("cluster %d did not answer its retire step within %g s", c.id, RETIRE_TIMEOUT)
            return []
        finally:
            c.retired = None

    def _tell(self, c: _Cluster, msg: Handover) -> None:
        if c.pipe is not None:
            c.pipe.send(msg)

    def note(self, msg: Handover) -> None:
        # A step of this machine's: in its own ledger, and to the other machines through the bridge.
        if self.ledger is not None:
            self.ledger.note(
                msg.step, msg.plan_version, msg.cluster_id, unpack_fingerprints(msg.fingerprints)
            )
        if self.shared and self._m.upstream is not None:
            self._m.upstream(msg, lambda outcome: None)

    def notice(self, msg: Handover) -> None:
        """Another machine's cluster is ready or retired (passed on by the bridge)."""
        if msg.step not in ("ready", "retired"):
            log.warning("ignored a handover notice with step %r", msg.step)
            return
        try:
            handled = unpack_fingerprints(msg.fingerprints)
        except ValueError as exc:
            log.warning("ignored a malformed handover notice: %s", exc)
            return
        if self.ledger is None:
            self.early.append(msg)  # its roll may not have begun yet here
            del self.early[:-MAX_EARLY_NOTICES]
        elif self.ledger.note(msg.step, msg.plan_version, msg.cluster_id, handled):
            self.changed.set()

    def repair(self, c: _Cluster, down: list[ShardStatus], now: float) -> None:
        # A shard that stays down (a zombie): restart its cluster through a handover, so the
        # other shards keep serving; it counts against the restart cap like a crash.
        what = ", ".join(f"shard {s.id} {s.state} for {s.down_for:.0f} s" for s in down)
        decision = after_exit(c, now=now, policy=self._m.restarts, report=None)
        if isinstance(decision, GiveUp):
            c.repairing = True  # said once; the shard stays down
            c.last_error = f"{what}; {decision.reason}"
            log.error("cluster %d: %s; %s", c.id, what, decision.reason)
            self._m._events.emit("error", ZmqcrossError(f"cluster {c.id}: {what}; {decision.reason}"))
            return
        log.warning(
            "cluster %d: %s (shard_down_timeout=%g s); restarting the cluster",
            c.id,
            what,
            self._m.shard_down_timeout,
        )
        c.repairing = True
        task = asyncio.get_running_loop().create_task(self._repair_by_restart(c, what))
        self._m._respawns.add(task)
        task.add_done_callback(self._m._respawns.discard)

    async def _repair_by_restart(self, c: _Cluster, what: str) -> None:
        try:
            await self.restart(c.id)
        except ZmqcrossError as exc:
            log.error("cluster %d could not be restarted (%s): %s", c.id, what, exc.message)
        finally:
            c.repairing = False
