"""One cluster's life as its manager tracks it: states, moves, and whether to restart it.

Pure decisions, no processes: the manager (``manager.py``) owns the processes and pipes
and asks :func:`after_exit` what to do when one exits unasked. A cluster is restarted
unless restarting cannot help, or it has needed too many restarts lately:

- a cluster that reports a :class:`~zmqcross.ConfigurationError` before it exits (the bot
  file builds a ``commands.Bot`` instead of an ``AutoShardedBot``, gives the wrong shards,
  or never creates a ``ClusterClient``) fails at once: every restart would make the same
  mistake, and against Discord each would spend a session start of the daily budget;
- any other failure (an import error, a crash in ``setup_hook``, a killed process) is
  restarted up to :class:`RestartPolicy`'s cap, then fails.

Either way what the cluster reported (its traceback's last lines) is kept for status.
"""

from __future__ import annotations

import asyncio
import enum
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from .._transitions import Transitions
from ..errors import ConfigurationError
from ..protocol import ErrorInfo
from ..relay import PipeConn
from ..status import ShardStatus

__all__ = [
    "CLUSTER_TRANSITIONS",
    "DEFAULT_RESTARTS",
    "LAST_ERROR_LINES",
    "ClusterState",
    "GiveUp",
    "Restart",
    "RestartPolicy",
    "after_exit",
    "error_summary",
    "is_fatal",
]

LAST_ERROR_LINES = 12
"""Lines of a failed cluster's traceback kept in its status (the full one goes to the log)."""

MAX_BACKOFF = 5.0
"""Seconds a cluster that keeps failing waits before each restart, at most."""


@dataclass(frozen=True, slots=True)
class RestartPolicy:
    """At most ``max_restarts`` automatic restarts of one cluster within ``interval`` seconds."""

    max_restarts: int = 5
    interval: float = 60.0


DEFAULT_RESTARTS = RestartPolicy()


class ClusterState(enum.Enum):
    """Where one cluster process is; the values are what :class:`ClusterStatus` shows."""

    STARTING = "starting"
    """Its process runs; discord.py is not ready yet."""
    READY = "ready"
    """It heartbeats and serves evals and guild requests."""
    STOPPING = "stopping"
    """Asked to close its Discord connections and exit."""
    STOPPED = "stopped"
    """No process (never started, exited, or stopped); the watchdog may start it again."""
    FAILED = "failed"
    """Not started again until the manager closes: a mistake in the bot file, or the restart cap reached."""


CLUSTER_TRANSITIONS = Transitions(
    "a cluster",
    {
        ClusterState.STOPPED: {
            ClusterState.STARTING,
            ClusterState.FAILED,
            # Stopping and the exit watcher both see the process gone; whichever is second
            # finds the cluster stopped already.
            ClusterState.STOPPED,
        },
        # A process can die at any point; its exit makes the cluster stopped.
        ClusterState.STARTING: {ClusterState.READY, ClusterState.STOPPING, ClusterState.STOPPED},
        ClusterState.READY: {ClusterState.STOPPING, ClusterState.STOPPED},
        ClusterState.STOPPING: {ClusterState.STOPPED},
        ClusterState.FAILED: {ClusterState.STOPPED},  # the manager closing reaps it
    },
)
"""Every move a cluster may make; :meth:`_Cluster.move` raises :class:`IllegalTransition` for any other."""


@dataclass(eq=False)
class _Cluster:
    id: int
    shards: tuple[int, ...]
    process: Any = None
    pipe: PipeConn | None = None  # the machine's end, served by the relay core
    state: ClusterState = ClusterState.STOPPED  # changed only through move()
    started: float = 0.0  # monotonic
    started_at: float | None = None  # wall clock, for status
    last_beat: float = 0.0
    last_beat_at: float | None = None
    guilds: int | None = None
    exit_code: int | None = None
    stopping: bool = False
    restarts: int = 0
    recent: deque[float] = field(default_factory=deque)
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    exited: asyncio.Event = field(default_factory=asyncio.Event)
    report: ErrorInfo | None = None  # what the running process said before it exited, if anything
    killed: str | None = None  # why the watchdog killed the running process
    last_error: str | None = None  # for status: why it last stopped unasked, until it is ready again
    waiting: str | None = None  # what it waits for before it may IDENTIFY, as it last said
    lease_sent: float | None = None  # the lease last passed down its pipe
    held: bool = False  # its handlers wait until the clusters it replaces have retired
    retired: asyncio.Future[list[int]] | None = None  # its answer to a retire step, awaited
    trial: bool = False  # a restart's new process: if it fails, the old one serves on, unrestarted
    shard_health: tuple[ShardStatus, ...] = ()  # as its last heartbeat said
    rss: int | None = None  # resident bytes, as its last heartbeat said
    repairing: bool = False  # restarting because a shard stayed down

    def move(self, new: ClusterState) -> None:
        """Change state; raises :class:`IllegalTransition` for a move the table does not allow."""
        CLUSTER_TRANSITIONS.check(self.state, new)
        self.state = new


def error_summary(info: ErrorInfo) -> str:
    """A reported failure for status: the traceback's last lines, ending with ``Type: message``.

    A mistake in the bot file is its message alone: the message names the fix, and the
    frames would only be zmqcross's own.
    """
    headline = f"{info.type}: {info.message}"
    if not info.traceback or is_fatal(info):
        return headline
    tail = info.traceback.rstrip().splitlines()[-LAST_ERROR_LINES:]
    # A traceback ends with the exception's line (its type perhaps qualified, a.b.Type: ...).
    ends_with_it = bool(tail) and tail[-1].split(":", 1)[0].rsplit(".", 1)[-1] == info.type
    return "\n".join(tail if ends_with_it else [*tail, headline])


def is_fatal(info: ErrorInfo | None) -> bool:
    """Whether a reported failure is one a restart cannot fix (a mistake in the bot file)."""
    return info is not None and info.code == ConfigurationError.code


@dataclass(frozen=True, slots=True)
class Restart:
    """Start the cluster again after ``delay`` seconds."""

    delay: float


@dataclass(frozen=True, slots=True)
class GiveUp:
    """Leave the cluster failed; ``reason`` says why, for the log and status."""

    reason: str


def after_exit(
    c: _Cluster, *, now: float, policy: RestartPolicy, report: ErrorInfo | None
) -> Restart | GiveUp:
    """What to do about cluster ``c`` whose process exited unasked; records a restart in ``c``."""
    if is_fatal(report):
        return GiveUp(f"cluster {c.id} is not restarted: a restart cannot fix a mistake in the bot file")
    while c.recent and now - c.recent[0] > policy.interval:
        c.recent.popleft()
    if len(c.recent) >= policy.max_restarts:
        return GiveUp(
            f"cluster {c.id} needed {len(c.recent)} restarts within {policy.interval:g} s; "
            "not restarting it again (restart cap reached)"
        )
    c.recent.append(now)
    c.restarts += 1
    return Restart(min(0.5 * len(c.recent), MAX_BACKOFF))  # back off when it keeps failing
