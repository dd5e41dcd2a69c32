"""Shard planning: shards -> clusters -> machine chunks, guild -> shard, who holds which chunk.

Pure decisions, no I/O. The bridge builds one :class:`ShardPlan` at start-up and keeps a
:class:`Placement` that answers "which clusters does this machine run?".

Placement rules, and the original's bugs they avoid:

* A chunk is held by at most one connected machine. A machine that disconnects leaves
  its chunk *orphaned*, remembered under its machine id, so it gets the same chunk
  back when it returns (sticky placement).
* A machine asking for work gets, in order: what it already holds, its own orphaned
  chunk, a never-assigned chunk, another machine's orphaned chunk (failover). With
  nothing left it is a standby and gets an empty list, never "nothing".
* ``max_clusters`` splits a chunk rather than refusing the machine (the original
  answers ``{"error": ...}`` when no chunk is small enough).
* A machine that re-registers after a bridge restart *claims* what it runs; the
  placement is rebuilt from those claims instead of being handed out afresh.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field

import orjson

from ._handover import HandoverPlan
from ._identify import IdentifyParams
from .errors import ConfigurationError

__all__ = [
    "MAX_TOTAL_SHARDS",
    "ClusterListParser",
    "Placement",
    "ShardData",
    "ShardPlan",
    "build_plan",
    "chunk",
    "default_cluster_list_parser",
    "shard_for_guild",
]

MAX_TOTAL_SHARDS = 50_000
"""The most shards a plan may have, checked before anything is allocated for them.

Discord puts at most 2,500 guilds on a shard and its largest bots, in some 20 million
guilds, run on the order of 20,000 shards (about 1,000 guilds each, as /gateway/bot
recommends). 50,000 leaves room for growth; a plan that size takes ~0.2 s to build. Without
a cap, ``reshard(total_shards=3_000_000)`` held the bridge's loop for 3 s and added 524 MB.
"""

ClusterListParser = Callable[[list[list[int]], int], Sequence[Sequence[Sequence[int]]]]
"""``(clusters, total_machines) -> machine chunks``: each chunk a list of clusters' shard lists."""


def shard_for_guild(guild_id: int, total_shards: int) -> int:
    """The shard that receives ``guild_id``'s events: ``(guild_id >> 22) % total_shards``."""
    return (int(guild_id) >> 22) % total_shards


def chunk(items: Sequence[int] | Sequence[list[int]], size: int) -> list[list]:  # type: ignore[type-arg]
    """``items`` cut into consecutive lists of ``size`` (the last may be shorter)."""
    return [list(items[i : i + size]) for i in range(0, len(items), size)]


def default_cluster_list_parser(clusters: list[list[int]], total_machines: int) -> list[list[list[int]]]:
    """Split the clusters into ``total_machines`` consecutive chunks of near-equal size."""
    per_machine = -(-len(clusters) // total_machines)
    return chunk(clusters, max(per_machine, 1))


@dataclass(frozen=True, slots=True)
class ShardPlan:
    """Which shards form each cluster, and which clusters form each machine chunk.

    ``version`` is a digest of the plan's content, so a bridge restarted with the same
    options has the same version and machines see that nothing changed.
    """

    total_shards: int
    clusters: tuple[tuple[int, ...], ...]
    chunks: tuple[tuple[int, ...], ...]
    version: str
    _cluster_of_shard: dict[int, int] = field(repr=False, compare=False, hash=False)

    @property
    def total_clusters(self) -> int:
        """How many clusters the plan has."""
        return len(self.clusters)

    def cluster_of_shard(self, shard_id: int) -> int | None:
        """The cluster that runs ``shard_id``, or None if this plan hosts no such shard."""
        return self._cluster_of_shard.get(shard_id)

    def shards_of(self, cluster_ids: Iterable[int]) -> tuple[tuple[int, ...], ...]:
        """The shard lists of ``cluster_ids``, in that order."""
        return tuple(self.clusters[cid] for cid in cluster_ids)


def _positive_int(name: str, value: object) -> int:
    if type(value) is not int or value < 1:
        raise ConfigurationError(f"{name} must be a positive integer, not {value!r}")
    return value


def build_plan(
    total_shards: int,
    *,
    shards_per_cluster: int = 1,
    total_machines: int = 1,
    shard_list: Sequence[int] | None = None,
    parse_cluster_list: ClusterListParser | None = None,
) -> ShardPlan:
    """Cut shards into clusters and clusters into one chunk per machine.

    ``shard_list`` hosts only those shard ids (the original ignores it). ``parse_cluster_list``
    replaces the default even split; its result must use every cluster exactly once.
    """
    _positive_int("total_shards", total_shards)
    _positive_int("shards_per_cluster", shards_per_cluster)
    _positive_int("total_machines", total_machines)
    # Both limits are checked on the numbers alone: nothing is built for a refused plan.
    if total_shards > MAX_TOTAL_SHARDS:
        raise ConfigurationError(
            f"total_shards {total_shards} is over the limit of {MAX_TOTAL_SHARDS}: a plan has at most "
            f"{MAX_TOTAL_SHARDS} shards (zmqcross.planning.MAX_TOTAL_SHARDS)"
        )
    if shard_list is not None and len(shard_list) > MAX_TOTAL_SHARDS:
        raise ConfigurationError(
            f"shard_list has {len(shard_list)} ids; at most {MAX_TOTAL_SHARDS} "
            "(zmqcross.planning.MAX_TOTAL_SHARDS)"
        )
    shards = list(range(total_shards)) if shard_list is None else list(shard_list)
    if not shards:
        raise ConfigurationError("shard_list is empty: the plan would host no shard")
    for shard in shards:
        if type(shard) is not int or not 0 <= shard < total_shards:
            raise ConfigurationError(f"shard_list has {shard!r}; shard ids run from 0 to {total_shards - 1}")
    if len(set(shards)) != len(shards):
        raise ConfigurationError("shard_list names a shard twice")
    clusters = chunk(shards, shards_per_cluster)
    parser = parse_cluster_list or default_cluster_list_parser
    machine_chunks = [[list(c) for c in ch] for ch in parser([list(c) for c in clusters], total_machines)]
    flat = [tuple(c) for ch in machine_chunks for c in ch]
    if sorted(s for c in flat for s in c) != sorted(shards) or any(not c for c in flat):
        raise ConfigurationError(
            "parse_cluster_list must return chunks that use every shard of the plan exactly once, "
            f"in non-empty clusters; it returned {machine_chunks!r}"
        )
    chunks: list[tuple[int, ...]] = []
    next_id = 0
    for ch in machine_chunks:
        chunks.append(tuple(range(next_id, next_id + len(ch))))
        next_id += len(ch)
    chunks = [c for c in chunks if c]
    digest = hashlib.sha256(orjson.dumps([total_shards, flat, chunks])).hexdigest()[:16]
    by_shard = {shard: cid for cid, c in enumerate(flat) for shard in c}
    return ShardPlan(total_shards, tuple(flat), tuple(chunks), digest, by_shard)


@dataclass(frozen=True, slots=True)
class ShardData:
    """A machine's share of the plan, as :meth:`Client.request_shard_data` returns it.

    ``shard_list`` has one list of shard ids per cluster, ``cluster_list`` the global ids of
    those clusters. Both are empty for a standby machine: the plan is fully taken.
    ``identify`` is how the fleet paces IDENTIFYs (the machine's clusters need it to pace
    on their own when the bridge is out of reach). ``handover`` comes with a share of a new
    plan: which old clusters its new ones replace (see :mod:`zmqcross._handover`).
    """

    total_shards: int
    shard_list: tuple[tuple[int, ...], ...]
    cluster_list: tuple[int, ...]
    total_clusters: int
    plan_version: str
    identify: IdentifyParams = field(default_factory=IdentifyParams)
    handover: HandoverPlan | None = None

    @property
    def standby(self) -> bool:
        """True when this machine got no clusters because every chunk is held."""
        return not self.cluster_list

    def to_json(self) -> dict[str, object]:
        """The record as JSON data."""
        return {
            "total_shards": self.total_shards,
            "shard_list": self.shard_list,
            "cluster_list": self.cluster_list,
            "total_clusters": self.total_clusters,
            "plan_version": self.plan_version,
            "identify": self.identify.to_json(),
            "handover": self.handover.to_json() if self.handover is not None else None,
        }

    @classmethod
    def from_json(cls, data: dict) -> ShardData:  # type: ignore[type-arg]
        """Rebuild the record from :meth:`to_json` data."""
        return cls(
            total_shards=int(data["total_shards"]),
            shard_list=tuple(tuple(int(s) for s in c) for c in data["shard_list"]),
            cluster_list=tuple(int(c) for c in data["cluster_list"]),
            total_clusters=int(data["total_clusters"]),
            plan_version=str(data["plan_version"]),
            identify=IdentifyParams.from_json(data.get("identify")),
            handover=HandoverPlan.from_json(data.get("handover")),
        )


class Placement:
    """Which machine holds which clusters of one :class:`ShardPlan`. See the module docstring."""

    def __init__(self, plan: ShardPlan) -> None:
        self.plan = plan
        self._free: list[tuple[int, ...]] = list(plan.chunks)
        self._held: dict[str, tuple[int, ...]] = {}
        self._holder: dict[int, str] = {}  # _held turned around: every eval asks it, per cluster
        self._orphaned: dict[str, tuple[int, ...]] = {}

    def held_by(self, machine_id: str) -> tuple[int, ...]:
        """The clusters ``machine_id`` holds now (empty if none)."""
        return self._held.get(machine_id, ())

    def holder_of(self, cluster_id: int) -> str | None:
        """The connected machine holding ``cluster_id``, if any."""
        return self._holder.get(cluster_id)

    def _hold(self, machine_id: str, chunk_: tuple[int, ...]) -> None:
        self._held[machine_id] = chunk_
        for cid in chunk_:
            self._holder[cid] = machine_id

    def _unhold(self, machine_id: str) -> tuple[int, ...]:
        chunk_ = self._held.pop(machine_id, ())
        for cid in chunk_:
            self._holder.pop(cid, None)
        return chunk_

    def assign(
        self, machine_id: str, *, max_clusters: int | None = None, fenced: Collection[str] = ()
    ) -> tuple[int, ...]:
        """Give ``machine_id`` its clusters (see the module docstring); ``()`` means standby.

        The orphaned chunks of the machines in ``fenced`` go to no other machine: their
        clusters may still run (their lease has not run out).
        """
        if machine_id in self._held:
            return self._held[machine_id]
        if max_clusters is not None:
            _positive_int("max_clusters", max_clusters)
        chunk_ = self._orphaned.pop(machine_id, None)
        if chunk_ is None and self._free:
            chunk_ = self._free.pop(0)
        if chunk_ is None:
            owner = next((m for m in reversed(self._orphaned) if m not in fenced), None)
            if owner is not None:
                chunk_ = self._orphaned.pop(owner)
        if chunk_ is None:
            return ()
        if max_clusters is not None and len(chunk_) > max_clusters:
            chunk_, rest = chunk_[:max_clusters], chunk_[max_clusters:]
            self._free.insert(0, rest)
        self._hold(machine_id, chunk_)
        return chunk_

    def claim(self, machine_id: str, cluster_ids: Sequence[int]) -> str | None:
        """Record that ``machine_id`` already runs ``cluster_ids``; None if accepted, else why not."""
        wanted = tuple(dict.fromkeys(cluster_ids))  # a cluster named twice is held once
        for cid in wanted:
            if not 0 <= cid < self.plan.total_clusters:
                return f"cluster {cid} is not in the plan"
            holder = self.holder_of(cid)
            if holder is not None and holder != machine_id:
                return f"cluster {cid} is held by machine {holder!r}"
        taken = set(wanted)
        previous = self._unhold(machine_id) + self._orphaned.pop(machine_id, ())
        leftover = tuple(cid for cid in previous if cid not in taken)
        if leftover:
            self._free.insert(0, leftover)
        self._free = [c for c in (tuple(x for x in ch if x not in taken) for ch in self._free) if c]
        self._orphaned = {
            mid: rest
            for mid, rest in ((m, tuple(x for x in ch if x not in taken)) for m, ch in self._orphaned.items())
            if rest
        }
        if wanted:
            self._hold(machine_id, wanted)
        return None

    def release(self, machine_id: str) -> tuple[int, ...]:
        """``machine_id`` left: its clusters wait for it (or a standby) as an orphaned chunk."""
        chunk_ = self._unhold(machine_id)
        if chunk_:
            self._orphaned[machine_id] = chunk_
        return chunk_

    def shard_data(self, cluster_ids: Sequence[int]) -> ShardData:
        """The :class:`ShardData` record for a machine running ``cluster_ids``."""
        return ShardData(
            total_shards=self.plan.total_shards,
            shard_list=self.plan.shards_of(cluster_ids),
            cluster_list=tuple(cluster_ids),
            total_clusters=self.plan.total_clusters,
            plan_version=self.plan.version,
        )

    def snapshot(self) -> dict[str, object]:
        """Held, orphaned and free chunks, as plain data for status pages and logs."""
        return {
            "held": {m: list(c) for m, c in self._held.items()},
            "orphaned": {m: list(c) for m, c in self._orphaned.items()},
            "free": [list(c) for c in self._free],
        }
