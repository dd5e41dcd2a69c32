"""Plain, immutable records describing the fleet, as ``Bridge.status()`` returns them.

They travel as JSON (a dashboard asks the bridge, the bridge asks each machine), so each
has ``to_json`` and ``from_json``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

__all__ = ["ClusterStatus", "FleetStatus", "MachineStatus"]


@dataclass(frozen=True, slots=True)
class ClusterStatus:
    """One cluster process as its machine sees it.

    ``state`` is one of starting, ready, stopping, stopped, failed, retiring (an old cluster
    still serving during a rolling restart). Times are UNIX seconds; ``uptime`` in seconds.
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

    @property
    def ready(self) -> bool:
        """Whether the cluster's discord.py client is ready and it answers evals."""
        return self.state == "ready"

    def to_json(self) -> dict[str, Any]:
        """The record as JSON data."""
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ClusterStatus:
        """Rebuild the record from :meth:`to_json` data."""
        return cls(**{**data, "shards": tuple(data["shards"])})


@dataclass(frozen=True, slots=True)
class MachineStatus:
    """A connected client: a machine running clusters, a standby, or a dashboard.

    ``stale`` means it runs another plan than the bridge's (it does not follow plan
    changes); ``error`` says why ``clusters`` is empty when the machine did not answer.
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
    """The whole fleet at one moment: the plan, every client, and clusters nobody runs."""

    plan_version: str
    total_shards: int
    total_clusters: int
    machines: tuple[MachineStatus, ...]
    standbys: tuple[str, ...]
    unassigned: tuple[int, ...]
    taken_at: float

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
        )

    def cluster_hosts(self) -> dict[int, list[str]]:
        """Which machines run each cluster id (more than one only during a rolling restart)."""
        hosts: dict[int, list[str]] = {}
        for machine in self.machines:
            for cluster in machine.clusters:
                if cluster.state in ("starting", "ready", "retiring"):
                    hosts.setdefault(cluster.id, []).append(machine.id)
        return hosts
