"""The bridge's fleet-wide IDENTIFY queue (pure: clocks are passed in, nothing is sent).

Each rate-limit bucket hands out slots first come first served, one per interval
(:class:`~zmqcross._identify.IdentifyParams`). A grant is a reservation: the cluster is told
when to IDENTIFY and the queue keeps no request open. Asking again for a shard whose slot
is still ahead returns the same slot, so a flood of asks costs the queue nothing; asking
after the slot passed is a new IDENTIFY (a re-identify) and gets the next free slot.

Each grant spends one session start of Discord's daily budget. When the budget left would
fall below the reserve, the queue holds every ask (:class:`Hold`, with the reason and when
to ask again) until the budget resets.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Any, Final

from .._identify import IdentifyParams, bucket_of

__all__ = ["DAY", "Grant", "Hold", "IdentifyQueue", "SessionBudget"]

DAY: Final = 86_400.0
"""Seconds between two resets of Discord's session budget."""
MAX_HOLD_RETRY: Final = 30.0
"""Seconds at most a held cluster waits before it asks again."""
FORGET_ABOVE: Final = 4096
"""Reservations kept before passed ones are dropped on a grant (else on a snapshot)."""


@dataclass(frozen=True, slots=True)
class Grant:
    """IDENTIFY in ``wait`` seconds (``ahead`` grants of the bucket go before this one)."""

    shard_id: int
    bucket: int
    wait: float
    ahead: int


@dataclass(frozen=True, slots=True)
class Hold:
    """No slot now: ``reason`` says why; ask again in ``retry_after`` seconds."""

    reason: str
    retry_after: float


@dataclass(slots=True)
class SessionBudget:
    """Discord's ``session_start_limit`` as the bridge counts it down; ``reset_at`` on the queue's clock."""

    total: int
    remaining: int
    reset_at: float
    reserve: int

    def roll(self, now: float) -> None:
        """A new day: the whole budget is back."""
        while now >= self.reset_at:
            self.reset_at += DAY
            self.remaining = self.total


class IdentifyQueue:
    """Per-bucket slots for the fleet's IDENTIFYs, and the session budget they spend."""

    def __init__(
        self, params: IdentifyParams, *, budget: SessionBudget | None, now: float, start_guard: float = 0.0
    ) -> None:
        self.params = params
        self.budget = budget
        # A bridge that just started may follow a dead one whose machines pace on their own
        # until they hear it: no bucket is granted before start_guard has passed.
        self._free_at = dict.fromkeys(range(params.max_concurrency), now + start_guard)
        self._slots: dict[int, float] = {}  # shard -> its reserved slot time
        # Per bucket, the slot times granted and not yet passed, in order (they are handed out
        # in order): how many go before a slot is a bisection, not a scan of every shard.
        self._pending: dict[int, list[float]] = {b: [] for b in range(params.max_concurrency)}
        self._forget_above = FORGET_ABOVE
        self.granted = 0
        self.held = 0
        self.waited = 0.0  # seconds of wait handed out, summed over grants
        self.holding: str | None = None

    def ask(self, shard_id: int, *, now: float) -> Grant | Hold:
        """A slot for ``shard_id`` (already checked to be in the plan and run by the asker)."""
        interval = self.params.interval
        bucket = bucket_of(shard_id, self.params.max_concurrency)
        pending = self._pending[bucket]
        del pending[: bisect.bisect_left(pending, now)]
        slot = self._slots.get(shard_id)
        if slot is not None and slot > now:
            return Grant(shard_id, bucket, slot - now, bisect.bisect_left(pending, slot))
        hold = self._hold(now)
        self.holding = hold.reason if hold is not None else None
        if hold is not None:
            self.held += 1
            return hold
        slot = max(now, self._free_at[bucket])
        self._free_at[bucket] = slot + interval
        self._slots[shard_id] = slot
        pending.append(slot)
        self.granted += 1
        self.waited += slot - now
        if self.budget is not None:
            self.budget.remaining -= 1
        if len(self._slots) > self._forget_above:
            self.forget(now)
        return Grant(shard_id, bucket, slot - now, len(pending) - 1)

    def _hold(self, now: float) -> Hold | None:
        budget = self.budget
        if budget is None:
            return None
        budget.roll(now)
        if budget.remaining - 1 >= budget.reserve:
            return None
        reset_in = max(0.0, budget.reset_at - now)
        return Hold(
            f"Discord's session budget is down to {budget.remaining} of {budget.total} session starts "
            f"and the bridge keeps {budget.reserve} in reserve (session_reserve): no IDENTIFY until it "
            f"resets in {_duration(reset_in)}",
            min(MAX_HOLD_RETRY, max(1.0, reset_in)),
        )

    def forget(self, now: float) -> None:
        """Drop the reservations that have passed."""
        for shard_id in [s for s, t in self._slots.items() if t <= now]:
            del self._slots[shard_id]
        self._forget_above = max(FORGET_ABOVE, 2 * len(self._slots))  # amortized: O(1) per grant

    def snapshot(self, *, now: float) -> dict[str, Any]:
        """The queue as status shows it: per bucket what waits and when it is free, and the budget."""
        self.forget(now)
        mc = self.params.max_concurrency
        waiting: dict[int, list[int]] = {}
        for shard_id, slot in sorted(self._slots.items(), key=lambda item: item[1]):
            if slot > now:
                waiting.setdefault(shard_id % mc, []).append(shard_id)
        budget = self.budget
        if budget is not None:
            budget.roll(now)
        return {
            "max_concurrency": mc,
            "window": self.params.window,
            "interval": self.params.interval,
            "waiting": sum(len(shards) for shards in waiting.values()),
            "buckets": [
                {"bucket": b, "waiting": waiting[b], "free_in": round(max(0.0, self._free_at[b] - now), 3)}
                for b in sorted(waiting)
            ],
            "granted": self.granted,
            "held": self.held,
            "waited": round(self.waited, 3),
            "holding": self.holding,
            "budget": None
            if budget is None
            else {
                "total": budget.total,
                "remaining": budget.remaining,
                "reserve": budget.reserve,
                "reset_in": round(max(0.0, budget.reset_at - now), 1),
            },
        }


def _duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"
