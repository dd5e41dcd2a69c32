"""Where a machine's work goes: its clusters as the relay core sees them. Pure.

The manager owns the clusters' states on its event loop; the relay core routes evals
and guild requests on its own thread. They share one immutable :class:`RouteTable`,
which the manager builds anew whenever something that routing reads changes (a cluster
became ready, exited, started to retire; a shard went down or came back) and hands over
by replacing a reference. The core never sees a table half-built, and never reads the
manager's own state.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import ClientNotFound, ConnectionLost, ZmqcrossError
from ..planning import shard_for_guild

__all__ = ["EMPTY_ROUTES", "RouteTable", "Serving", "eval_targets", "guild_target"]


@dataclass(frozen=True, slots=True)
class Serving:
    """The process answering for one cluster: its pipe if it is ready, and its shards that are down."""

    cluster: int
    state: str
    """Its state's value (``"ready"``, ``"starting"``...), for the error when it is not ready."""
    pipe: Any
    """Its pipe (a :class:`~zmqcross.relay.PipeConn`) when ready, else None."""
    down: Mapping[int, tuple[str, float]]
    """Shards not up: ``shard -> (state, seconds down)``, as its last heartbeat said."""

    def shard_down(self, shard: int, what: str) -> ConnectionLost | None:
        """The error for work about ``what`` on ``shard`` if that shard is not up here."""
        found = self.down.get(shard)
        if found is None:
            return None
        state, down_for = found
        return ConnectionLost(
            f"{what} is on shard {shard} of cluster {self.cluster}, which is {state} "
            f"(for {down_for:.0f} s): its events are not arriving; try again once it is back"
        )


@dataclass(frozen=True, slots=True)
class RouteTable:
    """A snapshot of what a machine runs, for routing (see the module docstring)."""

    total_shards: int
    everyone: tuple[int, ...]
    """The clusters an eval naming none goes to (this machine's current plan), in order."""
    mine: frozenset[int]
    """Every cluster id this machine answers for (current and retiring)."""
    serving: Mapping[int, Serving]
    """Cluster id -> the process answering for it."""
    owners: Mapping[int, Serving]
    """Shard -> the process answering for its guilds (only shards this machine runs)."""


EMPTY_ROUTES = RouteTable(total_shards=1, everyone=(), mine=frozenset(), serving={}, owners={})


def _unready(serving: Serving) -> ConnectionLost | None:
    if serving.pipe is None or not serving.pipe.open:
        state = "stopped" if serving.state == "ready" else serving.state
        return ConnectionLost(f"cluster {serving.cluster} is {state}, not ready")
    return None


def eval_targets(
    table: RouteTable, clusters: tuple[int, ...] | None, guild: Any
) -> tuple[list[int], dict[Any, list[int]], list[tuple[int, ZmqcrossError]]]:
    """An eval's clusters here: ``(targets, pipe -> [cluster], failures)``.

    ``clusters`` is the bridge's target list (None: every cluster of the plan here);
    ``guild`` the eval's ``guild_id``: a cluster whose shard of that guild is down fails
    its slot at once rather than answering from a cache that is not being kept.
    """
    mine = table.mine
    targets = sorted(c for c in clusters if c in mine) if clusters is not None else list(table.everyone)
    routes: dict[Any, list[int]] = {}
    failures: list[tuple[int, ZmqcrossError]] = []
    shard = shard_for_guild(guild, table.total_shards) if type(guild) is int else None
    for cid in targets:
        serving = table.serving.get(cid)
        if serving is None:
            failures.append((cid, ConnectionLost(f"cluster {cid} is stopped, not ready")))
            continue
        error = _unready(serving) or (
            serving.shard_down(shard, f"guild {guild}") if shard is not None else None
        )
        if error is not None:
            failures.append((cid, error))
        else:
            routes[serving.pipe] = [cid]
    return targets, routes, failures


def guild_target(table: RouteTable, guild_id: int) -> Serving | ZmqcrossError:
    """The ready process for ``guild_id``'s shard, or the error saying why there is none."""
    shard = shard_for_guild(guild_id, table.total_shards)
    owner = table.owners.get(shard)
    if owner is None:
        return ClientNotFound(f"guild {guild_id} is on shard {shard}, which this machine does not run")
    unready = _unready(owner)
    if unready is not None:
        return ConnectionLost(f"cluster {owner.cluster} (shard {shard}) is {owner.state}, not ready")
    return owner.shard_down(shard, f"guild {guild_id}") or owner
