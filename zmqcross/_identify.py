"""Discord's IDENTIFY pacing, shared by the bridge's queue and a machine's local fallback (pure).

Discord accepts at most ``max_concurrency`` IDENTIFYs per ``window`` (5 s) across the whole
bot, one per rate-limit bucket ``shard_id % max_concurrency``. The fleet spaces the
IDENTIFYs of one bucket by an *interval*: the window plus a margin. A grant names a
wall-clock time, and a cluster that cannot send its IDENTIFY within half the margin of that
time asks again instead of sending late (a late IDENTIFY would crowd the next one); the
other half is for the IDENTIFY's travel to Discord. So two IDENTIFYs of one bucket reach
Discord at least a window apart.

When the bridge cannot be reached, machines pace locally without talking to each other by
time-division (:func:`local_slot`): the wall clock is cut into cells of one interval, and in
bucket ``b`` the shard with index ``k = shard_id // max_concurrency`` may only use the cells
``c`` with ``c % n == k``, where ``n`` is the number of shards in the bucket. No two shards
share a cell, whichever machine runs them (machine clocks agree to well under ``margin``
with NTP). A full cold start paced this way takes one cycle of ``n`` cells, the same floor
as the bridge's queue.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Final

__all__ = [
    "DISCORD_IDENTIFY_WINDOW",
    "IDENTIFY_SERVICE",
    "LOCAL_RECHECK",
    "IdentifyParams",
    "bucket_of",
    "local_slot",
]

IDENTIFY_SERVICE: Final = "zmqcross.identify"
"""The bridge service a cluster asks (through its machine) for an IDENTIFY slot."""
DISCORD_IDENTIFY_WINDOW: Final = 5.0
"""Seconds between two IDENTIFYs of one rate-limit bucket, on Discord."""
MIN_MARGIN: Final = 0.05
"""Seconds added to every window at least: room for a grant's travel and a timer's lateness."""
MAX_MARGIN: Final = 0.25
"""Seconds added to every window at most (Discord's 5 s window gets this)."""
LOCAL_RECHECK: Final = 1.0
"""Seconds between asks to the bridge while a cluster waits for a local cell."""


def bucket_of(shard_id: int, max_concurrency: int) -> int:
    """The rate-limit bucket of ``shard_id``: ``shard_id % max_concurrency``."""
    return shard_id % max_concurrency


@dataclass(frozen=True, slots=True)
class IdentifyParams:
    """How IDENTIFYs are spaced: ``max_concurrency`` buckets, one IDENTIFY per ``window`` each."""

    max_concurrency: int = 1
    window: float = DISCORD_IDENTIFY_WINDOW

    def __post_init__(self) -> None:
        if type(self.max_concurrency) is not int or self.max_concurrency < 1:
            raise ValueError(f"max_concurrency must be a positive integer, not {self.max_concurrency!r}")
        if not isinstance(self.window, (int, float)) or not 0 < self.window <= 3600:
            raise ValueError(f"identify_window must be between 0 and 3600 seconds, not {self.window!r}")

    @property
    def margin(self) -> float:
        """Seconds added to the window between two grants (a fifth of it, within bounds)."""
        return min(MAX_MARGIN, max(MIN_MARGIN, 0.2 * self.window))

    @property
    def late_after(self) -> float:
        """Seconds a granted IDENTIFY may still be sent after its time: half the margin."""
        return self.margin / 2

    @property
    def interval(self) -> float:
        """Seconds between two grants of one bucket: the window plus the margin."""
        return self.window + self.margin

    def bucket_size(self, bucket: int, total_shards: int) -> int:
        """How many of ``total_shards`` shards fall in ``bucket``."""
        return max(0, math.ceil((total_shards - bucket) / self.max_concurrency))

    def to_json(self) -> dict[str, Any]:
        """The record as JSON data (how machines learn it with their shard data)."""
        return {"max_concurrency": self.max_concurrency, "window": self.window}

    @classmethod
    def from_json(cls, data: Any) -> IdentifyParams:
        """Rebuild the record; Discord's defaults (the strictest) for anything missing or invalid."""
        if not isinstance(data, dict):
            return cls()
        try:
            return cls(
                max_concurrency=data.get("max_concurrency", 1),
                window=float(data.get("window", DISCORD_IDENTIFY_WINDOW)),
            )
        except (TypeError, ValueError):
            return cls()


def local_slot(shard_id: int, total_shards: int, params: IdentifyParams, *, earliest: float) -> float:
    """The first wall-clock time at or after ``earliest`` when ``shard_id`` may IDENTIFY on its own.

    Time-division (see the module docstring): the start of the first cell ``c`` with
    ``c % n == k``, ``k`` being the shard's index in its bucket and ``n`` the bucket's size.
    """
    if not 0 <= shard_id < total_shards:
        raise ValueError(f"shard {shard_id} is not one of {total_shards} shards")
    interval = params.interval
    bucket = bucket_of(shard_id, params.max_concurrency)
    cells = params.bucket_size(bucket, total_shards)
    index = shard_id // params.max_concurrency
    cell = math.ceil(earliest / interval)
    cell += (index - cell) % cells
    return cell * interval
