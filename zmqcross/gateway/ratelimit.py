"""Discord's REST rate limits, as the offline Discord applies them. Pure: takes the time, returns verdicts.

Discord limits each route per "major parameter" (channel, guild, webhook) in buckets it names
with an opaque hash (``X-RateLimit-Bucket``), and every bot to 50 requests per second overall
(the global limit; interaction endpoints are exempt). Each answer carries the bucket's
``X-RateLimit-Limit/Remaining/Reset/Reset-After``; a request past the limit gets 429 with
``retry_after`` in the body. discord.py reads those headers, sleeps pre-emptively when a bucket
is empty, and trusts a 429 only when it carries a ``Via`` header (else it assumes a Cloudflare
ban), so the server sends one.

Windows here are fixed (they start at a bucket's first request), which is how Discord's
buckets behave as seen from a client.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Final

__all__ = [
    "GLOBAL_LIMIT",
    "MAX_BUCKETS",
    "RateLimiter",
    "RouteLimit",
    "Verdict",
    "limit_for",
]

GLOBAL_LIMIT: Final = 50
"""Requests per second a bot may make across all routes (interaction endpoints excepted)."""
MAX_BUCKETS: Final = 10_000
"""Buckets remembered; expired ones are dropped first when this many exist."""


@dataclass(frozen=True, slots=True)
class RouteLimit:
    """``limit`` requests per ``period`` seconds, per major parameter."""

    limit: int
    period: float


# Per-route limits as Discord answers them to bots (observed headers; Discord documents that
# they exist, not their values). Routes not listed get DEFAULT_ROUTE_LIMIT.
DEFAULT_ROUTE_LIMIT: Final = RouteLimit(50, 1.0)
_ROUTE_LIMITS: Final = {
    ("POST", "/channels/{channel_id}/messages"): RouteLimit(5, 5.0),
    ("PATCH", "/channels/{channel_id}/messages/{message_id}"): RouteLimit(5, 5.0),
    ("DELETE", "/channels/{channel_id}/messages/{message_id}"): RouteLimit(5, 1.0),
    ("POST", "/webhooks/{application_id}/{token}"): RouteLimit(5, 2.0),
}


def limit_for(method: str, route: str) -> RouteLimit:
    """The limit of ``route`` (a template relative to ``/api/v10``) for ``method``."""
    return _ROUTE_LIMITS.get((method, route), DEFAULT_ROUTE_LIMIT)


def bucket_hash(method: str, route: str) -> str:
    """An opaque, stable bucket name for a route, like Discord's ``X-RateLimit-Bucket``."""
    return hashlib.sha1(f"{method} {route}".encode(), usedforsecurity=False).hexdigest()[:32]


@dataclass(frozen=True, slots=True)
class Verdict:
    """What to answer one request with: its bucket's state, and ``retry_after`` when limited."""

    bucket: str
    limit: int
    remaining: int
    reset_at: float
    reset_after: float
    retry_after: float | None = None
    is_global: bool = False

    def headers(self) -> dict[str, str]:
        """The rate-limit headers Discord sends with every answer of a limited route."""
        headers = {
            "X-RateLimit-Bucket": self.bucket,
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": str(self.remaining),
            "X-RateLimit-Reset": f"{self.reset_at:.3f}",
            "X-RateLimit-Reset-After": f"{self.reset_after:.3f}",
        }
        if self.retry_after is not None:
            headers["Retry-After"] = str(math.ceil(self.retry_after))
            headers["X-RateLimit-Scope"] = "global" if self.is_global else "user"
            headers["Via"] = "1.1 google"  # discord.py treats a 429 without Via as a Cloudflare ban
            if self.is_global:
                headers["X-RateLimit-Global"] = "true"
        return headers


class RateLimiter:
    """Fixed-window counters per bucket and one global window; :meth:`take` decides a request."""

    def __init__(self) -> None:
        self._windows: dict[str, tuple[float, int]] = {}  # key -> (window start, requests in it)
        self._global: tuple[float, int] = (-math.inf, 0)

    def take(
        self, method: str, route: str, major: str, now: float, *, counts_globally: bool = True
    ) -> Verdict:
        """Count one request to ``route`` (template) for major parameter ``major`` at ``now`` (Unix s)."""
        rule = limit_for(method, route)
        bucket = bucket_hash(method, route)
        key = f"{bucket}:{major}"
        start, used = self._windows.get(key, (-math.inf, 0))
        if now - start >= rule.period:
            start, used = now, 0
        reset_at = start + rule.period
        if used >= rule.limit:
            wait = reset_at - now
            return Verdict(bucket, rule.limit, 0, reset_at, wait, retry_after=wait)
        if counts_globally:
            global_start, global_used = self._global
            if now - global_start >= 1.0:
                global_start, global_used = now, 0
            if global_used >= GLOBAL_LIMIT:
                wait = global_start + 1.0 - now
                return Verdict(
                    bucket,
                    rule.limit,
                    rule.limit - used,
                    reset_at,
                    reset_at - now,
                    retry_after=wait,
                    is_global=True,
                )
            self._global = (global_start, global_used + 1)
        if key not in self._windows and len(self._windows) >= MAX_BUCKETS:
            self._prune(now)
        self._windows[key] = (start, used + 1)
        return Verdict(bucket, rule.limit, rule.limit - used - 1, reset_at, reset_at - now)

    def _prune(self, now: float) -> None:
        # Every window is at most a minute long: anything older has expired.
        expired = [k for k, (start, _) in self._windows.items() if now - start >= 60.0]
        for key in expired or list(self._windows)[: len(self._windows) // 2]:
            del self._windows[key]
