"""Plain, immutable records describing the fleet, as ``Bridge.status()`` returns them.

They travel as JSON (a dashboard asks the bridge, the bridge asks each machine), so each
has ``to_json`` and ``from_json``. :func:`summarize` reduces a :class:`FleetStatus` to the
totals an operator looks at first (:class:`FleetSummary`), for the dashboard and the
Prometheus metrics alike. Pure: no I/O, nothing imported beyond the standard library.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from dataclasses import dataclass
from typing import Any

__all__ = [
    "SERVING",
    "ClusterStatus",
    "FleetStatus",
    "FleetSummary",
    "MachineStatus",
    "ShardStatus",
    "is_machine",
    "summarize",
]


@dataclass(frozen=True, slots=True)
class ShardStatus:
    """One shard as its cluster last reported it (with the cluster's heartbeat).

    ``state`` is one of waiting (for its IDENTIFY slot), identifying, connecting (its guilds
    streaming in), ready, disconnected (discord.py reconnects behind it). ``latency`` is the gateway heartbeat's round trip in seconds
    (None before the first), ``idle`` the seconds since its connection last received
    anything, ``down_for`` the seconds it has been out of the ready state, less the turns it waited
    for in the fleet's IDENTIFY queue (0 when ready);
    ``disconnects`` and ``resumes`` count since its cluster process started.
    """

    id: int
    state: str
    latency: float | None
    idle: float | None
    disconnects: int
    resumes: int
    down_for: float

    @property
    def up(self) -> bool:
        """Whether the shard is connected and ready."""
        return self.state == "ready"

    @classmethod
    def from_row(cls, row: Any) -> ShardStatus:
        """A shard from a heartbeat row ``[id, state, latency, idle, disconnects, resumes, down_for]``."""
        if not isinstance(row, list | tuple) or len(row) != 7:
            raise ValueError(f"a shard row has 7 fields, not {row!r}")
        sid, state, latency, idle, disconnects, resumes, down_for = row
        number = (int, float)
        if (
            type(sid) is not int
            or type(state) is not str
            or not (latency is None or type(latency) in number)
            or not (idle is None or type(idle) in number)
            or type(disconnects) is not int
            or type(resumes) is not int
            or type(down_for) not in number
        ):
            raise ValueError(f"malformed shard row {row!r}")
        return cls(sid, state, latency, idle, disconnects, resumes, float(down_for))

    def to_row(self) -> list[Any]:
        """The compact form, as heartbeats and status records carry it."""
        return [self.id, self.state, self.latency, self.idle, self.disconnects, self.resumes, self.down_for]


@dataclass(frozen=True, slots=True)
class ClusterStatus:
    """One cluster process as its machine sees it.

    ``state`` is one of starting, ready, stopping, stopped, failed, retiring (an old cluster
    still serving during a rolling restart). Times are UNIX seconds; ``uptime`` in seconds.
    ``failed`` means the machine will not start it again: a mistake in the bot file that a
    restart cannot fix, or the restart cap reached. ``last_error`` is why it last stopped
    unasked (the end of its traceback, or its exit code), until it is ready again; None from
    a machine of an older version. ``waiting`` says what a starting cluster waits for
    before it may IDENTIFY (its slot in the fleet's IDENTIFY queue, or why there is none).
    ``live`` is False while a new cluster of a rolling restart or reshard is held: ready
    (it answers evals) but its handlers wait until the clusters it replaces have retired.
    """

    id: int
    shards: tuple[int, ...]
    pid: int | None
    state: str
    guilds: int | None
    restarts: int
    started_at: float | None
    uptime: float | None
    last_heartbeat: float | None
    exit_code: int | None
    last_error: str | None = None
    waiting: str | None = None
    live: bool = True
    shard_health: tuple[ShardStatus, ...] = ()
    rss: int | None = None

    @property
    def ready(self) -> bool:
        """Whether the cluster's discord.py client is ready and it answers evals."""
        return self.state == "ready"

    def to_json(self) -> dict[str, Any]:
        """The record as JSON data (each shard's health as a compact row)."""
        data = dataclasses.asdict(self)
        data["shard_health"] = [s.to_row() for s in self.shard_health]
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ClusterStatus:
        """Rebuild the record from :meth:`to_json` data; ValueError says what is malformed.

        The records come from machines, so each field is checked: one machine's broken
        (or lying) answer must fail alone, never the status of the whole fleet.
        """
        if not isinstance(data, dict):
            raise ValueError(f"a cluster record must be an object, not {type(data).__name__}")
        missing = sorted(_CLUSTER_FIELDS.keys() - data.keys())
        if missing:
            raise ValueError(f"cluster record lacks {missing}")
        # A machine of an older version sends no optional fields: they keep their defaults.
        fields = {**_OPTIONAL_CLUSTER_DEFAULTS, **data}
        for name, kinds in (_CLUSTER_FIELDS | _OPTIONAL_CLUSTER_FIELDS).items():
            value = fields[name]
            if type(value) not in kinds:  # bool is not an int here, nor an int a bool
                raise ValueError(f"cluster record field {name!r} is {value!r}")
        shards = data["shards"]
        if not all(type(shard) is int for shard in shards):
            raise ValueError(f"cluster record field 'shards' is {shards!r}")
        names = _CLUSTER_FIELDS.keys() | _OPTIONAL_CLUSTER_FIELDS.keys()
        health = tuple(ShardStatus.from_row(row) for row in fields["shard_health"])
        return cls(
            **{name: fields[name] for name in names} | {"shards": tuple(shards), "shard_health": health}
        )


_NUMBER = (int, float)
_CLUSTER_FIELDS: dict[str, tuple[type, ...]] = {
    "id": (int,),
    "shards": (list, tuple),
    "pid": (int, type(None)),
    "state": (str,),
    "guilds": (int, type(None)),
    "restarts": (int,),
    "started_at": (*_NUMBER, type(None)),
    "uptime": (*_NUMBER, type(None)),
    "last_heartbeat": (*_NUMBER, type(None)),
    "exit_code": (int, type(None)),
}
"""Each field of a cluster record on the wire, and the types it may have."""

_OPTIONAL_CLUSTER_FIELDS: dict[str, tuple[type, ...]] = {
    "last_error": (str, type(None)),
    "waiting": (str, type(None)),
    "live": (bool,),
    "shard_health": (list, tuple),
    "rss": (int, type(None)),
}
"""Fields added since the first version: a record from an older machine may lack them."""
_OPTIONAL_CLUSTER_DEFAULTS: dict[str, Any] = {
    "last_error": None,
    "waiting": None,
    "live": True,
    "shard_health": (),
    "rss": None,
}


@dataclass(frozen=True, slots=True)
class MachineStatus:
    """A connected client: a machine running clusters, a standby, or a dashboard.

    ``stale`` means it runs another plan than the bridge's (it does not follow plan
    changes); ``error`` says why ``clusters`` is empty when the machine did not answer;
    ``stalled`` why a machine gets no chunk (it was handed one and never started it).
    """

    id: str
    agent: str
    address: str | None
    connected_at: float
    plan_version: str | None
    stale: bool
    standby: bool
    leaving: bool
    clusters: tuple[ClusterStatus, ...]
    error: str | None = None
    stalled: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The record as JSON data."""
        data = dataclasses.asdict(self)
        data["clusters"] = [c.to_json() for c in self.clusters]
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> MachineStatus:
        """Rebuild the record from :meth:`to_json` data."""
        clusters = tuple(ClusterStatus.from_json(c) for c in data["clusters"])
        return cls(**{**data, "clusters": clusters})


@dataclass(frozen=True, slots=True)
class FleetStatus:
    """The whole fleet at one moment: the plan, every client, and clusters nobody runs.

    ``identify`` is the bridge's IDENTIFY queue: per bucket the shards waiting for a slot,
    grants and holds so far, why it holds (``holding``) and Discord's session budget.
    ``restart`` is the restart under way, or the last one (see :meth:`Bridge.restart`).
    """

    plan_version: str
    total_shards: int
    total_clusters: int
    machines: tuple[MachineStatus, ...]
    standbys: tuple[str, ...]
    unassigned: tuple[int, ...]
    taken_at: float
    identify: dict[str, Any] | None = None
    restart: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        """The record as JSON data."""
        data = dataclasses.asdict(self)
        data["machines"] = [m.to_json() for m in self.machines]
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FleetStatus:
        """Rebuild the record from :meth:`to_json` data."""
        return cls(
            plan_version=data["plan_version"],
            total_shards=data["total_shards"],
            total_clusters=data["total_clusters"],
            machines=tuple(MachineStatus.from_json(m) for m in data["machines"]),
            standbys=tuple(data["standbys"]),
            unassigned=tuple(data["unassigned"]),
            taken_at=data["taken_at"],
            identify=data.get("identify"),
            restart=data.get("restart"),
        )

    def cluster_hosts(self) -> dict[int, list[str]]:
        """Which machines run each cluster id (more than one only during a rolling restart)."""
        hosts: dict[int, list[str]] = {}
        for machine in self.machines:
            for cluster in machine.clusters:
                if cluster.state in ("starting", "ready", "retiring"):
                    hosts.setdefault(cluster.id, []).append(machine.id)
        return hosts


SERVING = ("starting", "ready")
"""Cluster states whose shards count as hosted."""


def is_machine(machine: MachineStatus) -> bool:
    """Whether a client runs clusters or waits for them (a machine agent), not a dashboard or service."""
    return (
        machine.agent == "bot"
        or bool(machine.clusters)
        or machine.standby
        or machine.plan_version is not None
    )


@dataclass(frozen=True, slots=True)
class FleetSummary:
    """The totals an operator looks at first, computed from one :class:`FleetStatus`.

    ``clusters`` counts current clusters (a rolling restart's retiring ones are left out so
    nothing counts twice); ``down`` lists the plan's clusters that are not ready on any
    machine, with ``unassigned`` the subset that no machine runs at all.
    """

    machines: int
    standby: int
    stale: int
    unanswered: int
    clusters: int
    ready: int
    states: dict[str, int]
    shards: int
    guilds: int
    restarts: int
    down: tuple[int, ...]
    unassigned: tuple[int, ...]

    def to_json(self) -> dict[str, Any]:
        """The summary as JSON data."""
        return {
            "machines": self.machines,
            "standby": self.standby,
            "stale": self.stale,
            "unanswered": self.unanswered,
            "clusters": self.clusters,
            "ready": self.ready,
            "states": dict(self.states),
            "shards": self.shards,
            "guilds": self.guilds,
            "restarts": self.restarts,
            "down": list(self.down),
            "unassigned": list(self.unassigned),
        }


def summarize(status: FleetStatus) -> FleetSummary:
    """Totals of ``status``: machines, clusters by state, shards hosted, guilds, restarts, what is down."""
    machines = [m for m in status.machines if is_machine(m)]
    current = [c for m in machines for c in m.clusters if c.state != "retiring"]
    every = [c for m in machines for c in m.clusters]
    ready_ids = {c.id for c in every if c.ready}
    return FleetSummary(
        machines=len(machines),
        standby=sum(m.standby for m in machines),
        stale=sum(m.stale for m in machines),
        unanswered=sum(m.error is not None for m in machines),
        clusters=len(current),
        ready=sum(c.ready for c in current),
        states=dict(Counter(c.state for c in every)),
        shards=len({s for c in every if c.state in SERVING for s in c.shards}),
        guilds=sum(c.guilds or 0 for c in current),
        restarts=sum(c.restarts for c in current),
        down=tuple(sorted(set(range(status.total_clusters)) - ready_ids)),
        unassigned=tuple(status.unassigned),
    )
