"""Restarting clusters across the fleet, a few at a time: how a new version of the bot ships.

Each restarted cluster gets a new process on its machine (which reads the bot file afresh),
IDENTIFYs through the fleet's queue, becomes ready, and takes over from the old process
without handling an event twice (:meth:`ClusterManager.restart`). The bridge asks the
machines one cluster at a time (``concurrency`` at a time if asked), so a fleet restart
never takes down more than that many clusters' worth of capacity. The first failure stops
the roll: the failed cluster's old process serves on, nothing else is restarted.

:class:`RestartRun` is the record (pure: the targets, what is done, the state table);
:class:`Restarts` drives one run at a time.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigurationError, ZmqcrossError

__all__ = ["RESTART_TRANSITIONS", "RestartRun", "RestartState", "Restarts", "check_pacing", "pick_targets"]

log = logging.getLogger("zmqcross.bridge")

DEFAULT_CLUSTER_TIMEOUT = 300.0
"""Seconds the bridge waits for one cluster's restart (its machine's ``spawn_timeout`` applies first)."""


class RestartState(enum.Enum):
    """Where a restart run is."""

    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


RESTART_TRANSITIONS: dict[RestartState, frozenset[RestartState]] = {
    RestartState.RUNNING: frozenset({RestartState.DONE, RestartState.FAILED, RestartState.CANCELLED}),
    RestartState.DONE: frozenset(),
    RestartState.FAILED: frozenset(),
    RestartState.CANCELLED: frozenset(),
}
"""Every move a run can make: it ends once."""


@dataclass(slots=True)
class RestartRun:
    """One restart: which clusters, in order, and how far it got."""

    clusters: tuple[int, ...]
    concurrency: int
    started_at: float  # wall clock
    state: RestartState = RestartState.RUNNING
    pending: list[int] = field(default_factory=list)  # not started yet, in order
    done: list[int] = field(default_factory=list)
    current: dict[int, str] = field(default_factory=dict)  # cluster -> the machine restarting it
    error: str | None = None
    cancel_asked: bool = False
    ended_at: float | None = None

    def end(self, state: RestartState, *, error: str | None = None) -> None:
        """Move to a final state (the table allows one move out of running)."""
        if state not in RESTART_TRANSITIONS[self.state]:
            raise RuntimeError(f"a restart cannot go from {self.state.value} to {state.value}")
        self.state, self.error, self.ended_at = state, error, time.time()

    def progress(self) -> str:
        """One line for people: ``restarting 5/16: cluster 4 on machine-2``."""
        total = len(self.clusters)
        if self.state is RestartState.RUNNING:
            doing = ", ".join(f"cluster {c} on {m}" for c, m in sorted(self.current.items()))
            step = len(self.done) + max(len(self.current), 1)
            return f"restarting {min(step, total)}/{total}: {doing or 'next cluster'}"
        if self.state is RestartState.DONE:
            return f"restarted {total} cluster(s) in {(self.ended_at or time.time()) - self.started_at:.1f} s"
        verb = "failed" if self.state is RestartState.FAILED else "cancelled"
        return f"restart {verb} after {len(self.done)}/{total}" + (f": {self.error}" if self.error else "")

    def to_json(self) -> dict[str, Any]:
        """The record as JSON data (in status and the ``restart_progress`` event)."""
        return {
            "state": self.state.value,
            "clusters": list(self.clusters),
            "done": list(self.done),
            "current": [[c, m] for c, m in sorted(self.current.items())],
            "concurrency": self.concurrency,
            "error": self.error,
            "started_at": self.started_at,
            "ended_at": self.ended_at,
            "progress": self.progress(),
        }


def check_pacing(concurrency: object, timeout: object) -> None:
    """ConfigurationError unless ``concurrency`` is a positive integer and ``timeout`` positive seconds."""
    if type(concurrency) is not int or concurrency < 1:
        raise ConfigurationError(f"concurrency must be a positive integer, not {concurrency!r}")
    if not (isinstance(timeout, int | float) and type(timeout) is not bool and timeout > 0):
        raise ConfigurationError(f"timeout must be a positive number of seconds, not {timeout!r}")


def pick_targets(
    holders: Mapping[int, str],
    *,
    clusters: Sequence[int] | None = None,
    machines: Sequence[str] | None = None,
    everything: bool = False,
) -> tuple[int, ...]:
    """The clusters to restart, in id order; ConfigurationError names what cannot be.

    ``holders`` maps each running cluster to its machine. Exactly one of ``clusters``,
    ``machines`` and ``everything`` says which.
    """
    asked = [clusters is not None, machines is not None, everything]
    if sum(asked) != 1:
        raise ConfigurationError("restart takes exactly one of clusters=[...], machines=[...] or all=True")
    if everything:
        chosen = sorted(holders)
    elif clusters is not None:
        if isinstance(clusters, str) or not clusters or not all(type(c) is int for c in clusters):
            raise ConfigurationError(f"clusters must be a non-empty list of cluster ids, not {clusters!r}")
        missing = sorted(set(clusters) - holders.keys())
        if missing:
            raise ConfigurationError(
                f"no machine runs cluster(s) {missing}; running: {sorted(holders) or 'none'}"
            )
        chosen = sorted(set(clusters))
    else:
        assert machines is not None
        if isinstance(machines, str) or not all(type(m) is str for m in machines):
            raise ConfigurationError(f"machines must be a list of machine ids, not {machines!r}")
        known = set(holders.values())
        unknown = sorted(set(machines) - known)
        if not machines or unknown:
            raise ConfigurationError(
                f"machine(s) {unknown or machines} run no clusters; machines with clusters: {sorted(known) or 'none'}"
            )
        chosen = sorted(c for c, m in holders.items() if m in set(machines))
    if not chosen:
        raise ConfigurationError("there is no running cluster to restart")
    return tuple(chosen)


Ask = Callable[[str, int, float], Awaitable[Any]]
"""``ask(machine_id, cluster_id, timeout)``: have that machine restart that cluster."""


class Restarts:
    """Runs one restart at a time; a second is refused while one runs."""

    def __init__(
        self,
        *,
        ask: Ask,
        holder: Callable[[int], str | None],
        progress: Callable[[RestartRun], None],
    ) -> None:
        self._ask = ask
        self._holder = holder
        self._progress = progress
        self.run: RestartRun | None = None  # the current run, or the last one
        self._task: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        """Whether a restart is under way."""
        return self.run is not None and self.run.state is RestartState.RUNNING

    def begin(
        self, targets: Collection[int], *, concurrency: int = 1, timeout: float = DEFAULT_CLUSTER_TIMEOUT
    ) -> RestartRun:
        """Start restarting ``targets`` (see :func:`pick_targets`); the run's record."""
        if self.running:
            assert self.run is not None
            raise ZmqcrossError(
                f"a restart is already running ({self.run.progress()}); wait for it to end, or cancel it "
                "(bridge.cancel_restart(), client.cancel_restart() or zmqcross restart --cancel)"
            )
        check_pacing(concurrency, timeout)
        run = RestartRun(
            clusters=tuple(targets), concurrency=concurrency, started_at=time.time(), pending=list(targets)
        )
        self.run = run
        log.info("restarting clusters %s, %d at a time", list(run.clusters), concurrency)
        firsts = [job for job in (self._take(run) for _ in range(concurrency)) if job is not None]
        self._task = asyncio.get_running_loop().create_task(self._drive(run, firsts, timeout))
        self._progress(run)
        return run

    async def wait(self, run: RestartRun) -> RestartRun:
        """Wait until ``run`` ends; raises ZmqcrossError if it failed or was cancelled."""
        if self._task is not None and self.run is run:
            await asyncio.shield(self._task)
        if run.state is not RestartState.DONE:
            raise ZmqcrossError(run.progress())
        return run

    def cancel(self) -> RestartRun | None:
        """Stop after the clusters restarting now (they finish their handover); the run, if any."""
        if self.running:
            assert self.run is not None
            self.run.cancel_asked = True
            log.info("restart cancel asked: %s", self.run.progress())
        return self.run

    async def close(self) -> None:
        """Stop driving (the bridge closes); what machines are doing, they finish."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _drive(self, run: RestartRun, firsts: list[tuple[int, str]], timeout: float) -> None:
        try:
            await asyncio.gather(*(self._worker(run, first, timeout) for first in firsts))
        except asyncio.CancelledError:
            if run.state is RestartState.RUNNING:
                run.end(RestartState.CANCELLED, error="the bridge closed")
            raise
        if run.state is RestartState.RUNNING:
            run.end(RestartState.CANCELLED if run.pending else RestartState.DONE)
        log.info("%s", run.progress())
        self._progress(run)

    def _take(self, run: RestartRun) -> tuple[int, str] | None:
        """The next cluster to restart and its machine, now marked current; None: stop."""
        if not run.pending or run.state is not RestartState.RUNNING or run.cancel_asked:
            return None
        cluster = run.pending.pop(0)
        machine = self._holder(cluster)
        if machine is None:
            run.end(
                RestartState.FAILED,
                error=f"cluster {cluster} is not running on any machine now; nothing else was restarted",
            )
            return None
        run.current[cluster] = machine
        return cluster, machine

    async def _worker(self, run: RestartRun, first: tuple[int, str], timeout: float) -> None:
        job: tuple[int, str] | None = first
        while job is not None:
            cluster, machine = job
            self._progress(run)
            try:
                await self._ask(machine, cluster, timeout)
            except ZmqcrossError as exc:
                run.current.pop(cluster, None)
                if run.state is RestartState.RUNNING:
                    run.end(
                        RestartState.FAILED,
                        error=f"cluster {cluster} on machine {machine!r}: {exc.message}; "
                        "the roll stopped there (its old process serves on)",
                    )
                return
            run.current.pop(cluster, None)
            run.done.append(cluster)
            job = self._take(run)
