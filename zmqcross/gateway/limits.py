"""Discord's IDENTIFY limits, as the offline gateway enforces them (pure: no I/O, clocks passed in).

Discord lets a bot start at most ``max_concurrency`` sessions per 5 seconds, one per rate-limit
bucket ``shard_id % max_concurrency``, and at most ``session_start_limit.total`` sessions per
reset period (a day). Discord's docs (discord/discord-api-docs, docs/events/gateway.mdx,
"Identifying" and "Rate Limiting"):

- "Apps are limited by maximum concurrency (``max_concurrency`` in the session start limit
  object) when identifying. If your app exceeds this limit, Discord will respond with a Invalid
  Session (opcode 9) event." The session was never created, so ``d`` (resumable) is false:
  :data:`RATE_LIMITED` means "answer op 9 with d=false and keep the connection".
- "Clients are limited to 1000 IDENTIFY calls to the websocket in a 24-hour period. This limit
  is global and across all shards, but does not include RESUME calls. Upon hitting this limit,
  all active sessions for the app will be terminated, the bot token will be reset, and the
  owner will receive an email notification." :data:`BUDGET_EXHAUSTED` means: close this
  connection with 4004 (its token is no longer valid) and terminate every live session.

The identify limit is ON by default, as on Discord (the gateway's ``max_concurrency=1``, a 5 s
window; ``max_concurrency=None`` turns it off); the session budget is off unless asked for
(``session_budget=None``). Fleets pass because the bridge's queue paces every IDENTIFY
(:mod:`zmqcross.bridge._identify`).
"""

from __future__ import annotations

import collections
from dataclasses import dataclass
from typing import Any, Final

__all__ = [
    "BUDGET_EXHAUSTED",
    "DISCORD_IDENTIFY_WINDOW",
    "RATE_LIMITED",
    "SESSION_RESET_AFTER",
    "SESSION_START_TOTAL",
    "IdentifyLimits",
    "Verdict",
]

DISCORD_IDENTIFY_WINDOW: Final = 5.0
"""Seconds a bucket stays taken after an accepted IDENTIFY, on Discord."""
SESSION_START_TOTAL: Final = 1000
"""``session_start_limit.total`` reported without a budget, as for an unverified bot."""
SESSION_RESET_AFTER: Final = 86_400.0
"""Seconds from the gateway's start until the session budget resets (Discord: a day)."""
MAX_IDENTIFY_RECORDS: Final = 10_000
"""IDENTIFYs kept for ``/_offline/identifies``; the oldest is forgotten first."""

RATE_LIMITED: Final = "rate_limited"
"""Refusal reason: the shard's bucket already had an IDENTIFY accepted within the window."""
BUDGET_EXHAUSTED: Final = "session_start_limit"
"""Refusal reason: the session-start budget was at 0 when the IDENTIFY arrived."""


@dataclass(frozen=True, slots=True)
class Verdict:
    """What to do with one IDENTIFY: ``refused`` is None (accept) or a refusal reason."""

    refused: str | None
    bucket: int | None


class IdentifyLimits:
    """Per-bucket identify windows and the session-start budget, with a record of every IDENTIFY.

    ``now`` arguments are seconds on a monotonic clock; ``at`` is wall-clock time for records.
    """

    def __init__(
        self,
        *,
        max_concurrency: int | None,
        identify_window: float,
        session_budget: int | None,
        reset_after: float,
        now: float,
    ) -> None:
        if max_concurrency is not None and max_concurrency < 1:
            raise ValueError(f"max_concurrency must be >= 1 or None, got {max_concurrency}")
        if identify_window < 0:
            raise ValueError(f"identify_window must be >= 0, got {identify_window}")
        if session_budget is not None and session_budget < 0:
            raise ValueError(f"session_budget must be >= 0 or None, got {session_budget}")
        if reset_after <= 0:
            raise ValueError(f"reset_after must be > 0, got {reset_after}")
        self.max_concurrency = max_concurrency
        self.identify_window = identify_window
        self.session_budget = session_budget
        self._reset_period = reset_after
        self._reset_at = now + reset_after
        self._started = 0  # IDENTIFYs seen in this reset period, accepted or not
        self._bucket_taken_at: dict[int, float] = {}
        self._records: collections.deque[dict[str, Any]] = collections.deque(maxlen=MAX_IDENTIFY_RECORDS)

    def judge(self, shard_id: int, shard_count: int, *, now: float, at: float) -> Verdict:
        """Count one IDENTIFY of shard ``[shard_id, shard_count]``, record it and judge it."""
        self._roll(now)
        exhausted = self.session_budget is not None and self._started >= self.session_budget
        self._started += 1  # every IDENTIFY counts, accepted or not
        bucket = None if self.max_concurrency is None else shard_id % self.max_concurrency
        refused: str | None = None
        if exhausted:
            refused = BUDGET_EXHAUSTED
        elif bucket is not None:
            taken_at = self._bucket_taken_at.get(bucket)
            if taken_at is not None and now - taken_at < self.identify_window:
                refused = RATE_LIMITED
            else:
                self._bucket_taken_at[bucket] = now
        self._records.append(
            {
                "time": at,
                "shard": [shard_id, shard_count],
                "bucket": bucket,
                "accepted": refused is None,
                "reason": refused,
            }
        )
        return Verdict(refused, bucket)

    def note_session(self, session_id: str) -> None:
        """Attach the session id an accepted IDENTIFY got to its record."""
        self._records[-1]["session_id"] = session_id

    def records(self) -> list[dict[str, Any]]:
        """Every IDENTIFY seen (the last :data:`MAX_IDENTIFY_RECORDS`), oldest first."""
        return [dict(record) for record in self._records]

    def session_start_limit(self, *, now: float) -> dict[str, int]:
        """``/gateway/bot``'s ``session_start_limit``: total, remaining, reset_after (ms), max_concurrency."""
        self._roll(now)
        total = SESSION_START_TOTAL if self.session_budget is None else self.session_budget
        return {
            "total": total,
            "remaining": max(0, total - self._started),
            "reset_after": max(0, round((self._reset_at - now) * 1000)),
            # Reported as Discord's default when not enforced: nothing reads it offline yet.
            "max_concurrency": self.max_concurrency or 1,
        }

    def _roll(self, now: float) -> None:
        while now >= self._reset_at:
            self._reset_at += self._reset_period
            self._started = 0
