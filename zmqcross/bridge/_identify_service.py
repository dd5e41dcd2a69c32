"""The ``zmqcross.identify`` service: checks who asks for which shard, then asks the queue.

A machine asks on behalf of one of its clusters (``{"shard_id": N}``). The shard must be in
the bridge's plan and run by that machine; anything else is refused with the reason and
costs the queue nothing. The answer is a grant (``at``: the wall-clock time to IDENTIFY;
``late_after``: how late the IDENTIFY may still go) or a hold (``reason``, ``retry_after``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from .._clock import Clock
from .._discord_api import GatewayBot
from .._events import EventEmitter
from .._identify import DISCORD_IDENTIFY_WINDOW, IdentifyParams
from ..errors import ConfigurationError, PermissionDenied
from ..messages import IncomingRequest
from ..registry import ClientInfo
from ._fleet import FleetState
from ._identify import DAY, Grant, IdentifyQueue, SessionBudget

__all__ = ["IdentifyService", "IdentifySettings"]

log = logging.getLogger("zmqcross.bridge")

RESERVE_SHARE = 0.02
"""The default ``session_reserve``: this share of the daily session budget (at least 1)."""


@dataclass(frozen=True, slots=True)
class IdentifySettings:
    """The bridge's IDENTIFY options; Discord's ``/gateway/bot`` answer wins where it has one.

    ``max_concurrency`` None: Discord's value with a token, else 1. ``session_budget``: the
    session starts left today, for a bridge without a token (None: not counted).
    ``session_reserve`` None: 2% of the day's total, at least 1.
    """

    max_concurrency: int | None = None
    window: float = DISCORD_IDENTIFY_WINDOW
    session_budget: int | None = None
    session_reserve: int | None = None

    def __post_init__(self) -> None:
        for name in ("max_concurrency", "session_budget", "session_reserve"):
            value = getattr(self, name)
            minimum = 1 if name == "max_concurrency" else 0
            if value is not None and (type(value) is not int or value < minimum):
                raise ConfigurationError(f"{name} must be an integer >= {minimum} or None, not {value!r}")
        try:
            IdentifyParams(window=self.window)
        except ValueError as exc:
            raise ConfigurationError(str(exc)) from None

    def params(self, discord: GatewayBot | None) -> IdentifyParams:
        """How IDENTIFYs are paced: Discord's max_concurrency if known, else the setting, else 1."""
        concurrency = discord.max_concurrency if discord is not None else (self.max_concurrency or 1)
        if discord is not None and self.max_concurrency not in (None, concurrency):
            log.warning(
                "max_concurrency=%s is set, but Discord says %d for this bot: using Discord's",
                self.max_concurrency,
                concurrency,
            )
        return IdentifyParams(max_concurrency=concurrency, window=float(self.window))

    def budget(self, discord: GatewayBot | None, *, now: float) -> SessionBudget | None:
        """The session budget to count down: Discord's, or ``session_budget``, or none."""
        if discord is not None:
            total, remaining, reset_at = discord.total, discord.remaining, now + discord.reset_after
        elif self.session_budget is not None:
            total, remaining, reset_at = self.session_budget, self.session_budget, now + DAY
        else:
            return None
        reserve = self.session_reserve
        if reserve is None:
            reserve = max(1, round(total * RESERVE_SHARE))
        return SessionBudget(total=total, remaining=remaining, reset_at=reset_at, reserve=reserve)


class IdentifyService:
    """Answers IDENTIFY slot requests from machines; emits ``identify_held`` when the budget guard engages."""

    def __init__(
        self, queue: IdentifyQueue, fleet: FleetState, *, clock: Clock, events: EventEmitter
    ) -> None:
        self.queue = queue
        self._fleet = fleet
        self._clock = clock
        self._events = events

    async def __call__(self, request: IncomingRequest, client: ClientInfo) -> dict[str, Any]:
        shard_id = self._shard_asked(request.data, client)
        was_holding = self.queue.holding
        answer = self.queue.ask(shard_id, now=self._clock.monotonic())
        if not isinstance(answer, Grant):
            if was_holding is None:
                log.error("IDENTIFY queue holds every shard: %s", answer.reason)
                self._events.emit("identify_held", answer.reason)
            return {"granted": False, "reason": answer.reason, "retry_after": answer.retry_after}
        if was_holding is not None:
            log.warning("IDENTIFY queue grants again: the session budget has reset")
        return {
            "granted": True,
            "at": self._clock.time() + answer.wait,
            "wait": answer.wait,
            "bucket": answer.bucket,
            "ahead": answer.ahead,
            "late_after": self.queue.params.late_after,
        }

    def _shard_asked(self, data: Any, client: ClientInfo) -> int:
        shard_id = data.get("shard_id") if isinstance(data, dict) else None
        if type(shard_id) is not int:
            raise ConfigurationError(
                f'an IDENTIFY slot request takes {{"shard_id": <int>}}, not {str(data)[:100]}'
            )
        plan = self._fleet.plan
        if not 0 <= shard_id < plan.total_shards:
            raise ConfigurationError(
                f"shard {shard_id} is not in plan {plan.version} (shards 0 to {plan.total_shards - 1}): "
                "no IDENTIFY slot"
            )
        peer = self._fleet.registry.by_id(client.id)
        runs = {s for shards in self._fleet.plan.shards_of(peer.clusters) for s in shards} if peer else set()
        if shard_id not in runs:
            raise PermissionDenied(
                f"machine {client.id!r} asked for an IDENTIFY slot for shard {shard_id}, which it does not run "
                f"(its shards: {sorted(runs) or 'none'}): refused"
            )
        return shard_id
