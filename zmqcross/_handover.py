"""Handing shards from old clusters to new ones so that each gateway event is handled once.

During a rolling restart or a reshard, an old cluster and its successor both hold Discord
sessions for a while, and Discord sends every event to both. The rule that keeps each event
to one handler (pure decisions here; the cluster side is :mod:`zmqcross.cluster._handover`):

* A new cluster that shares guilds with old clusters still running starts *held*: its
  sessions connect and its cache fills, but its handlers get nothing yet.
* An old cluster *retires* once every new cluster sharing its guilds is ready: it stops
  handing events to its handlers, reports the fingerprints of those it handled since the
  handover began, then closes its sessions.
* A held cluster goes *live* once every old cluster sharing its guilds has retired: it
  runs the events it held back, except those the old clusters reported, then serves.

Which clusters share guilds: a guild's shard is ``(guild_id >> 22) % total_shards``, so
shard ``a`` of an old plan of ``n`` shards and shard ``b`` of a new plan of ``m`` shards
share guilds exactly when ``a % gcd(n, m) == b % gcd(n, m)`` (Chinese remainders).
"""

from __future__ import annotations

import array
import hashlib
import math
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

__all__ = ["HandoverPlan", "Ledger", "fingerprint", "overlaps", "pack_fingerprints", "unpack_fingerprints"]

ShardMap = Mapping[int, Sequence[int]]
"""Cluster id -> the shard ids it runs."""


def overlaps(
    old: ShardMap, old_total: int, new: ShardMap, new_total: int
) -> tuple[dict[int, tuple[int, ...]], dict[int, tuple[int, ...]]]:
    """Which clusters share guilds: ``(live_after, retire_after)``.

    ``live_after[new_id]``: the old clusters a new cluster waits for before it goes live;
    ``retire_after[old_id]``: the new clusters that must be ready before an old one retires.
    """
    g = math.gcd(old_total, new_total)
    by_residue: dict[int, set[int]] = {}
    for cid, shards in old.items():
        for shard in shards:
            by_residue.setdefault(shard % g, set()).add(cid)
    live_after: dict[int, tuple[int, ...]] = {}
    retire_after: dict[int, set[int]] = {cid: set() for cid in old}
    for cid, shards in new.items():
        olds: set[int] = set()
        for shard in shards:
            olds |= by_residue.get(shard % g, set())
        live_after[cid] = tuple(sorted(olds))
        for other in olds:
            retire_after[other].add(cid)
    return live_after, {cid: tuple(sorted(news)) for cid, news in retire_after.items()}


@dataclass(frozen=True, slots=True)
class HandoverPlan:
    """One machine's part of a handover from plan ``from_plan`` (see the module docstring).

    ``live_after`` has an entry for each of the machine's new clusters, ``retire_after`` for
    each of its old ones; the clusters they name may run on any machine.
    """

    from_plan: str
    live_after: dict[int, tuple[int, ...]] = field(default_factory=dict)
    retire_after: dict[int, tuple[int, ...]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The plan as JSON data (cluster ids as lists of pairs: JSON keys are strings)."""
        return {
            "from_plan": self.from_plan,
            "live_after": [[cid, list(olds)] for cid, olds in self.live_after.items()],
            "retire_after": [[cid, list(news)] for cid, news in self.retire_after.items()],
        }

    @classmethod
    def from_json(cls, data: Any) -> HandoverPlan | None:
        """The plan in ``data`` (None for None); ValueError if it is not one."""
        if data is None:
            return None
        if not isinstance(data, dict) or not isinstance(data.get("from_plan"), str):
            raise ValueError("a handover plan is an object with a 'from_plan' string")
        return cls(
            from_plan=data["from_plan"],
            live_after=_pairs(data.get("live_after", []), "live_after"),
            retire_after=_pairs(data.get("retire_after", []), "retire_after"),
        )


def _pairs(value: Any, name: str) -> dict[int, tuple[int, ...]]:
    out: dict[int, tuple[int, ...]] = {}
    if not isinstance(value, list):
        raise ValueError(f"a handover plan's {name!r} is a list of [cluster id, [cluster ids]] pairs")
    for pair in value:
        if (
            not isinstance(pair, list)
            or len(pair) != 2
            or type(pair[0]) is not int
            or not isinstance(pair[1], list)
            or not all(type(c) is int for c in pair[1])
        ):
            raise ValueError(f"a handover plan's {name!r} is a list of [cluster id, [cluster ids]] pairs")
        out[pair[0]] = tuple(pair[1])
    return out


class Ledger:
    """A machine's record of one handover: which new clusters are ready, which old ones retired.

    Fed by its own clusters and by the other machines' notices (through the bridge); says
    which of this machine's old clusters may retire and which held ones may go live.
    """

    def __init__(self, plan: HandoverPlan, plan_version: str) -> None:
        self.plan = plan
        self.plan_version = plan_version  # the new plan
        self.ready: set[int] = set()
        self.retired: dict[int, list[int]] = {}  # old cluster -> fingerprints it handled

    def note(self, step: str, plan_version: str, cluster_id: int, fingerprints: list[int]) -> bool:
        """Record a notice; False if it is not about this handover."""
        if step == "ready" and plan_version == self.plan_version:
            self.ready.add(cluster_id)
            return True
        if step == "retired" and plan_version == self.plan.from_plan:
            self.retired.setdefault(cluster_id, fingerprints)
            return True
        return False

    def may_retire(self, old_id: int) -> bool:
        """Whether every new cluster sharing guilds with ``old_id`` is ready."""
        return all(cid in self.ready for cid in self.plan.retire_after.get(old_id, ()))

    def may_go_live(self, new_id: int) -> bool:
        """Whether every old cluster sharing guilds with ``new_id`` has retired."""
        return all(cid in self.retired for cid in self.plan.live_after.get(new_id, ()))

    def handled(self, new_id: int) -> list[int]:
        """The fingerprints of the events ``new_id``'s old clusters handled: it skips those."""
        out: list[int] = []
        for cid in self.plan.live_after.get(new_id, ()):
            out += self.retired.get(cid, [])
        return out

    def missing_ready(self, old_id: int) -> list[int]:
        """The new clusters ``old_id`` still waits for."""
        return [cid for cid in self.plan.retire_after.get(old_id, ()) if cid not in self.ready]

    def missing_retired(self, new_id: int) -> list[int]:
        """The old clusters ``new_id`` still waits for."""
        return [cid for cid in self.plan.live_after.get(new_id, ()) if cid not in self.retired]


# --------------------------------------------------------------------------- fingerprints

_MASK = (1 << 63) - 1


def fingerprint(event: str, data: Any) -> int:
    """A 63-bit digest of one gateway dispatch: the same in every session that receives it.

    The payload (``d``) of an event is the same in each session Discord sends it to; its
    sequence number is not, and is not part of it. Collisions between different events
    are about one in 2**63.
    """
    try:
        body = orjson.dumps(data, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS)
    except orjson.JSONEncodeError:
        body = repr(data).encode()
    digest = hashlib.blake2b(body, digest_size=8, person=event.encode()[:16]).digest()
    return int.from_bytes(digest, "little") & _MASK


def pack_fingerprints(fingerprints: Iterable[int]) -> bytes:
    """Fingerprints as a body frame: little-endian 64-bit integers."""
    packed = array.array("q", fingerprints)
    if sys.byteorder != "little":
        packed.byteswap()
    return packed.tobytes()


def unpack_fingerprints(frame: bytes) -> list[int]:
    """The fingerprints in a frame made by :func:`pack_fingerprints`; ValueError if it cannot be one."""
    if len(frame) % 8:
        raise ValueError(f"a fingerprint frame holds 8-byte integers; {len(frame)} bytes is not that")
    packed = array.array("q")
    packed.frombytes(frame)
    if sys.byteorder != "little":
        packed.byteswap()
    return packed.tolist()
