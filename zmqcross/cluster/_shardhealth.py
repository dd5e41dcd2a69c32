"""Inside a cluster: each shard's gateway state, from discord.py's shard events. Pure.

A cluster heartbeats ``ready`` once its client is ready, but one of its shards can drop
and never come back (a "zombie shard") while the others serve: a fifth of a bot's guilds
silent while everything looks green. So each shard's state rides on the heartbeat too,
with its latency, how long since it last heard Discord, its disconnects and resumes.

States move by :data:`SHARD_MOVES` on discord.py's events (``on_shard_connect``,
``on_shard_disconnect``, ``on_shard_ready``, ``on_shard_resumed``) and on the IDENTIFY
queue's word (``waiting`` for a slot, ``identifying`` once it has one).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["SHARD_EVENTS", "SHARD_MOVES", "SHARD_STATES", "ShardHealth"]

SHARD_STATES = ("connecting", "waiting", "identifying", "ready", "disconnected")
"""Every state a shard can be in: ``waiting`` for its IDENTIFY slot, ``identifying`` once it
has one, ``connecting`` from its READY until its guilds have streamed in, ``disconnected``
while discord.py reconnects (a RESUME, or a new IDENTIFY that moves it to ``waiting``)."""

SHARD_MOVES: dict[str, str] = {
    "shard_connect": "connecting",  # discord.py: READY came, its guilds are streaming in
    "shard_disconnect": "disconnected",
    "shard_ready": "ready",
    "shard_resumed": "ready",
    "waiting": "waiting",
    "identifying": "identifying",
}
"""The state each event moves a shard to, from any state."""

SHARD_EVENTS = frozenset(event for event in SHARD_MOVES if event.startswith("shard_"))
"""The discord.py dispatches the tracker reads."""


@dataclass(slots=True)
class _Shard:
    state: str = "connecting"
    since: float = 0.0  # monotonic: when it entered its state
    down_since: float = 0.0  # when it last left ``ready`` (or was created)
    queued: float = 0.0  # seconds of this outage spent ``waiting``, up to its last turn
    disconnects: int = 0
    resumes: int = 0

    def down_for(self, now: float) -> float:
        """Seconds out of ``ready``, less the outage's turns waited in the IDENTIFY queue."""
        if self.state == "ready":
            return 0.0
        until = self.since if self.state == "waiting" else now  # queued now: the clock stands
        return until - self.down_since - self.queued


class ShardHealth:
    """The state of each of a cluster's shards (see the module docstring)."""

    def __init__(self, shard_ids: Iterable[int], *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        now = clock()
        self._shards = {sid: _Shard(since=now, down_since=now) for sid in shard_ids}

    def observe(self, event: str, args: tuple[Any, ...]) -> None:
        """A discord.py dispatch; shard events (the shard id first) move their shard."""
        if event not in SHARD_EVENTS or not args:
            return
        self.move(args[0], event)

    def move(self, shard_id: Any, event: str) -> None:
        """Move ``shard_id`` by ``event`` (a key of :data:`SHARD_MOVES`)."""
        shard = self._shards.get(shard_id) if type(shard_id) is int else None
        if shard is None:
            return
        state = SHARD_MOVES[event]
        if event == "shard_disconnect":
            shard.disconnects += 1
        elif event == "shard_resumed":
            shard.resumes += 1
        if state == shard.state:
            return
        now = self._clock()
        if shard.state == "ready":  # an outage starts; the retries within it do not restart it
            shard.down_since, shard.queued = now, 0.0
        elif shard.state == "waiting":
            shard.queued += now - shard.since
        shard.state, shard.since = state, now

    def down_for(self, shard_id: int) -> float:
        """Seconds ``shard_id`` has been down on its own account (0 when ready): out of the
        ready state, not counting the turns it waited for in the fleet's IDENTIFY queue (a
        long queue is not a broken shard, and must not get its cluster restarted)."""
        return self._shards[shard_id].down_for(self._clock())

    def wire(self, latencies: Mapping[int, float], idle: Mapping[int, float | None]) -> list[list[Any]]:
        """The heartbeat's ``shards``: ``[id, state, latency_s, idle_s, disconnects, resumes, down_s]`` each.

        ``latencies`` come from ``bot.latencies`` (infinite or missing: None); ``idle`` is the
        seconds since each shard's connection last received anything.
        """
        now = self._clock()
        rows = []
        for sid, shard in self._shards.items():
            latency = latencies.get(sid)
            rows.append(
                [
                    sid,
                    shard.state,
                    round(latency, 4) if latency is not None and math.isfinite(latency) else None,
                    round(idle[sid], 2) if idle.get(sid) is not None else None,  # type: ignore[arg-type]
                    shard.disconnects,
                    shard.resumes,
                    round(shard.down_for(now), 2),
                ]
            )
        return rows
