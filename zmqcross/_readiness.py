"""Which clusters of a fleet are not ready, and why: the decision behind ``Shard.wait_ready``.

Pure: it reads one :class:`~zmqcross.FleetStatus` and says, for each cluster asked about
that no machine reports ready, what the machines do say (starting there, failed there,
run by nobody). The waiting, the polling and the clock are the caller's.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from .errors import ConfigurationError
from .status import ClusterStatus, FleetStatus

__all__ = ["READY_POLL_INTERVAL", "describe_unready", "unready", "wanted"]

READY_POLL_INTERVAL = 0.5
"""Seconds between two fleet status queries while waiting for clusters to be ready.

Each query makes the bridge ask every machine; every cluster of a fleet may be
waiting at once at start-up, so this stays well above a status round trip."""


def wanted(status: FleetStatus, clusters: Sequence[int] | None) -> list[int]:
    """The cluster ids to wait for: ``clusters``, or every cluster of the plan for None.

    A cluster outside the plan can never become ready: :class:`ConfigurationError` at once,
    rather than a wait that can only time out.
    """
    if clusters is None:
        return list(range(status.total_clusters))
    ids = sorted(set(clusters))
    for cluster_id in ids:
        if type(cluster_id) is not int:
            raise ConfigurationError(f"cluster ids are integers, not {cluster_id!r}")
    outside = [c for c in ids if not 0 <= c < status.total_clusters]
    if outside:
        raise ConfigurationError(
            f"cluster {outside[0]} is not in the fleet's plan, which has clusters "
            f"0-{status.total_clusters - 1} (plan {status.plan_version})"
        )
    return ids


def unready(status: FleetStatus, clusters: Iterable[int]) -> dict[int, str]:
    """Each of ``clusters`` that no machine reports ready, with why, in cluster id order.

    The reason names every machine that lists the cluster and its state there
    ("starting on machine-1"); a cluster no machine lists is "not running on any machine",
    with the machines that did not answer the status query when some did not.
    """
    where: dict[int, list[str]] = {}
    ready: set[int] = set()
    for machine in status.machines:
        for cluster in machine.clusters:
            if cluster.ready:
                ready.add(cluster.id)
            where.setdefault(cluster.id, []).append(_state_on(machine.id, cluster))
    silent = [m.id for m in status.machines if m.error is not None]
    reasons: dict[int, str] = {}
    for cluster_id in sorted(set(clusters)):
        if cluster_id in ready:
            continue
        if cluster_id in where:
            reasons[cluster_id] = "is " + " and ".join(where[cluster_id])
        else:
            reason = "is not running on any machine"
            if cluster_id in status.unassigned:
                reason += " (no machine holds its share of the plan: start one, or a standby)"
            if silent:
                reason += f" (no status from {', '.join(repr(m) for m in silent)})"
            reasons[cluster_id] = reason
    return reasons


def _state_on(machine_id: str, cluster: ClusterStatus) -> str:
    text = f"{cluster.state} on {machine_id!r}"
    if cluster.state == "failed":
        text += f" (exit code {cluster.exit_code}, {cluster.restarts} restarts)"
    return text


def describe_unready(reasons: dict[int, str], *, waited: float) -> str:
    """The message of the timeout: which clusters are not ready after ``waited`` seconds, and why."""
    ids = ", ".join(str(c) for c in reasons)
    noun = "cluster" if len(reasons) == 1 else "clusters"
    why = "; ".join(f"cluster {c} {reason}" for c, reason in reasons.items())
    return f"{noun} {ids} not ready after {waited:g} s: {why}"
