"""A whole machine of the fleet: its agent (a :class:`Client`) and the clusters it runs.

:class:`Machine` asks the bridge for its share, spawns it, and then follows the bridge:
a standby starts clusters when it is handed a lost machine's chunk, a machine with
``rolling_restarts`` replaces its clusters one at a time when the plan changes, and on
SIGTERM/SIGINT it drains: it lets in-flight work finish within a bound, closes each
cluster's Discord connections properly, then tells the bridge it is leaving (a standby
takes over at once, with no shard ever on two machines), and returns.

A cluster that failed for good (a mistake in the bot file, or its restart cap reached)
is shown in status as ``failed`` with its ``last_error``. With ``exit_on_failed_cluster``
the machine then drains and :meth:`serve` raises, so ``zmqcross machine`` exits with
status 1 and a supervisor (systemd's ``Restart=on-failure``) starts it again.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Mapping
from typing import Any

from .client import Client, LinkState
from .cluster.manager import ClusterManager
from .errors import ZmqcrossError
from .planning import ShardData

__all__ = ["Machine"]

log = logging.getLogger("zmqcross.machine")

DRAIN_TIMEOUT = 10.0
"""Seconds a draining machine waits for in-flight work before stopping its clusters anyway."""


class Machine:
    """Runs ``bot_file`` for this machine's share of the plan and keeps following the bridge.

    ``client`` must use ``agent="bot"``; ``manager_options`` go to every :class:`ClusterManager`
    (``spawn_delay``, ``heartbeat_timeout``, ``restarts``...). With ``exit_on_failed_cluster``,
    a cluster that will not be restarted again makes :meth:`serve` drain the machine and raise.
    """

    def __init__(
        self,
        bot_file: str | os.PathLike[str],
        client: Client,
        *,
        manager_options: Mapping[str, Any] | None = None,
        drain_timeout: float = DRAIN_TIMEOUT,
        exit_on_failed_cluster: bool = False,
    ) -> None:
        self.bot_file = bot_file
        self.client = client
        self.manager: ClusterManager | None = None
        self._options = dict(manager_options or {})
        self._drain_timeout = drain_timeout
        # The bridge's word, one at a time: a share to run, or None: stop what runs (refused claim).
        self._changes: asyncio.Queue[tuple[ShardData | None, str]] = asyncio.Queue()
        self._follower: asyncio.Task[None] | None = None
        self._stopped = asyncio.Event()
        self.exit_on_failed_cluster = exit_on_failed_cluster
        self._failure: ZmqcrossError | None = None
        self._failed = asyncio.Event()
        client.on("assignment", lambda data, reason: self._changes.put_nowait((data, reason)))
        client.on("claim_refused", self._claim_refused)

    @property
    def standby(self) -> bool:
        """True while this machine runs no clusters, waiting for a chunk to free up."""
        return self.manager is None

    async def start(self) -> ShardData:
        """Connect (if needed), ask for this machine's share and start its clusters.

        Returns once the first share is spawned (or at once for a standby).
        """
        if self.client.state is LinkState.IDLE:
            await self.client.connect()
        share = await self.client.request_shard_data()
        if share.standby:
            log.info("machine %r is a standby: every chunk of the plan is held", self.client.id)
        else:
            await self._run_share(share)
        self._follower = asyncio.get_running_loop().create_task(self._follow())
        return share

    async def run(self) -> None:
        """:meth:`start`, then :meth:`serve`."""
        await self.start()
        await self.serve()

    async def serve(self) -> None:
        """Serve until SIGTERM or SIGINT, then :meth:`drain`.

        With ``exit_on_failed_cluster``, a cluster failing for good also ends it: the
        machine drains, then this raises :class:`ZmqcrossError` saying which cluster and why.
        """
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        waits = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self._failed.wait())]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for wait in waits:
                wait.cancel()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
            failed = self._failure is not None and not stop.is_set()
            await self.drain("a cluster failed" if failed else "the machine is shutting down")
        if failed and self._failure is not None:
            raise ZmqcrossError(
                f"{self._failure.message}; the machine exits (exit_on_failed_cluster) so that its "
                "supervisor restarts it"
            )

    def _cluster_failed(self, cluster_id: int, error: ZmqcrossError) -> None:
        if self.exit_on_failed_cluster and self._failure is None:
            log.error(
                "machine %r stops: cluster %d failed (exit_on_failed_cluster)", self.client.id, cluster_id
            )
            self._failure = error
            self._failed.set()

    async def drain(self, reason: str = "draining") -> None:
        """Leave the fleet cleanly (see the module docstring); safe to call twice."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        if self._follower is not None:
            self._follower.cancel()
        if self.manager is not None:
            await self._wait_in_flight(self.manager)
            # Closed before the bridge hears we leave: the standby it hands our shards to
            # must not open sessions while ours still run.
            await self.manager.close()
        if self.client.connected:
            await self.client.leave(reason)
        await self.client.close(reason)
        log.info("machine %r drained", self.client.id)

    async def _wait_in_flight(self, manager: ClusterManager) -> None:
        loop = asyncio.get_running_loop()
        end = loop.time() + self._drain_timeout
        while manager.in_flight() and loop.time() < end:
            await asyncio.sleep(0.05)
        if manager.in_flight():
            log.warning(
                "%d requests still in flight after %g s; stopping anyway",
                manager.in_flight(),
                self._drain_timeout,
            )

    async def _run_share(self, share: ShardData) -> None:
        manager = ClusterManager.from_shard_data(self.bot_file, share, **self._options)
        manager.on("cluster_failed", self._cluster_failed)
        self.manager = manager
        self.client.listen(manager)
        await manager.spawn()

    def _claim_refused(self, reason: str) -> None:
        # At once, not in turn: no lease passes to the clusters from here, so none restarts.
        if self.manager is not None:
            self.client.unlisten()
        self._changes.put_nowait((None, reason))

    async def _stand_down(self, reason: str) -> None:
        # The bridge gave this machine's clusters to another machine while it was cut off:
        # two sessions of one shard must not live on, so these stop now, before anything else.
        manager, self.manager = self.manager, None
        if manager is None:
            return
        log.warning(
            "machine %r stops its clusters %s: %s",
            self.client.id,
            list(manager.shard_data.cluster_list),
            reason,
        )
        self.client.unlisten()
        await manager.close()
        self.client.update_hosting(None)
        share = await self.client.request_shard_data()
        if share.standby:
            log.info("machine %r is a standby now", self.client.id)
        else:
            await self._run_share(share)

    async def _follow(self) -> None:
        # One change at a time: a reshard arriving mid-roll waits for the roll to finish.
        while True:
            share, reason = await self._changes.get()
            try:
                await self._apply(share, reason)
            except Exception:
                log.exception("machine %r could not apply the bridge's assignment", self.client.id)

    async def _apply(self, share: ShardData | None, reason: str) -> None:
        manager = self.manager
        if share is None:
            await self._stand_down(reason)
            return
        if manager is None:
            if share.standby:
                return
            log.info(
                "machine %r takes over clusters %s (%s)", self.client.id, list(share.cluster_list), reason
            )
            await self._run_share(share)
            return
        current = manager.shard_data
        if (current.plan_version, current.cluster_list) == (share.plan_version, share.cluster_list):
            return
        if not self.client.rolling_restarts:
            log.warning(
                "machine %r keeps running plan %s (rolling_restarts is off); the bridge's plan is %s",
                self.client.id,
                current.plan_version,
                share.plan_version,
            )
            return
        self.client.update_hosting(share)
        await manager.roll(share)
        if share.standby:  # the new plan has no place for this machine: its clusters retired
            self.client.unlisten()
            self.manager = None
            await manager.close()
            log.info("machine %r is a standby now (%s)", self.client.id, reason)
            return
        self.client.update_hosting(manager.shard_data)
