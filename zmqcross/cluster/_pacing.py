"""A cluster's turn to IDENTIFY: asked of the bridge's queue, or paced locally without it.

:class:`IdentifyTurns` is what :class:`~zmqcross.ClusterClient` installs as discord.py's
``before_identify_hook``: discord.py calls it after the gateway's HELLO and before each
IDENTIFY (initial or not; RESUMEs do not IDENTIFY), so a shard waits with its connection
open and heartbeating.

Each turn asks the bridge, through the machine, for a slot (:mod:`zmqcross._identify`). If
the bridge cannot be reached, the cluster paces itself by time-division instead, never not
at all: first it waits out everything the lost bridge may still have granted (one full
cycle of its bucket), then it takes its own cell. While it waits for a local cell it keeps
asking the bridge, and takes the bridge's answer instead once there is one.

discord.py reads nothing from a shard's connection while the hook waits; after 60 s without
a read it closes the connection and connects again (no IDENTIFY is sent, so no session
start is spent), and the new connection waits for the same slot.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final

from .._identify import IDENTIFY_SERVICE, LOCAL_RECHECK, IdentifyParams, bucket_of, local_slot
from ..errors import ClientNotFound, ConnectionLost, RequestTimeout

__all__ = ["ASK_TIMEOUT", "IdentifyTurns"]

log = logging.getLogger("zmqcross.cluster")

ASK_TIMEOUT: Final = 5.0
"""Seconds a cluster waits for the bridge's answer before it paces on its own."""

Ask = Callable[[str, Any, float], Awaitable[Any]]
"""Call a bridge service: ``(service, data, timeout)`` -> its answer (raises its error)."""
Report = Callable[[str | None], None]
"""Tell the machine what the cluster waits for (None: nothing, it identifies now)."""

_UNREACHABLE = (ConnectionLost, RequestTimeout, ClientNotFound)


class IdentifyTurns:
    """Waits for each IDENTIFY's turn; ``in_fleet`` False (no bridge) paces locally from the start."""

    def __init__(
        self,
        *,
        cluster_id: int,
        total_shards: int,
        params: IdentifyParams,
        ask: Ask,
        report: Report,
        in_fleet: bool,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._cluster_id = cluster_id
        self._total = total_shards
        self._params = params
        self._ask = ask
        self._report = report
        self._in_fleet = in_fleet
        self._clock = clock
        self._lost_at: float | None = None  # when the bridge was first found out of reach
        self.local_turns = 0  # turns taken without the bridge

    async def wait_turn(self, shard_id: int) -> None:
        """Return when ``shard_id`` may send its IDENTIFY."""
        answer = await self._answer(shard_id)
        while True:
            if not answer.get("granted"):
                self._report(f"no IDENTIFY slot for shard {shard_id}: {answer['reason']}")
                await asyncio.sleep(float(answer["retry_after"]))
                answer = await self._answer(shard_id)
                continue
            at, late_after = float(answer["at"]), float(answer["late_after"])
            self._report(self._describe(shard_id, answer, at - self._clock()))
            if answer.get("local") and self._in_fleet:
                back = await self._wait_for_cell(shard_id, at)
                if back is not None:  # the bridge answers again: its slot, not the cell
                    answer = back
                    continue
            else:
                await asyncio.sleep(max(0.0, at - self._clock()))
            late = self._clock() - at
            if late > late_after:
                # Sent now, this IDENTIFY would crowd the bucket's next one: take a new slot.
                log.warning(
                    "cluster %d: shard %d missed its IDENTIFY slot by %.3f s; asking for another",
                    self._cluster_id,
                    shard_id,
                    late,
                )
                answer = await self._answer(shard_id)
                continue
            if answer.get("local"):
                self.local_turns += 1
            self._report(None)
            return

    async def _wait_for_cell(self, shard_id: int, at: float) -> dict[str, Any] | None:
        # Until the local cell, ask the bridge every LOCAL_RECHECK seconds; None: the cell came.
        while (left := at - self._clock()) > 0:
            step = min(left, LOCAL_RECHECK)
            started = self._clock()
            try:
                return await asyncio.wait_for(self._ask_bridge(shard_id), step)
            except (TimeoutError, *_UNREACHABLE):
                await asyncio.sleep(max(0.0, step - (self._clock() - started)))
        return None

    async def _answer(self, shard_id: int) -> dict[str, Any]:
        if not self._in_fleet:
            return self._local(shard_id, "no bridge")
        try:
            return await self._ask_bridge(shard_id)
        except _UNREACHABLE as exc:
            return self._local(shard_id, exc.message)

    async def _ask_bridge(self, shard_id: int) -> dict[str, Any]:
        # Once the bridge is known to be out of reach, a quick ask is enough to see it is back.
        timeout = ASK_TIMEOUT if self._lost_at is None else LOCAL_RECHECK
        answer = await self._ask(IDENTIFY_SERVICE, {"shard_id": shard_id}, timeout)
        if not isinstance(answer, dict) or "granted" not in answer:
            raise TypeError(f"the bridge's IDENTIFY queue answered {str(answer)[:100]}")
        if self._lost_at is not None:
            log.info("cluster %d: the bridge's IDENTIFY queue answers again", self._cluster_id)
            self._lost_at = None
        return answer

    def _local(self, shard_id: int, why: str) -> dict[str, Any]:
        now = self._clock()
        earliest = now
        if self._in_fleet:
            if self._lost_at is None:
                self._lost_at = now
                log.warning(
                    "cluster %d: the bridge's IDENTIFY queue is out of reach (%s); pacing locally",
                    self._cluster_id,
                    why,
                )
            # Whatever the lost bridge granted lies within one cycle of the bucket.
            bucket = bucket_of(shard_id, self._params.max_concurrency)
            cycle = self._params.bucket_size(bucket, self._total) * self._params.interval
            earliest = max(now, self._lost_at + cycle)
        at = local_slot(shard_id, self._total, self._params, earliest=earliest)
        return {
            "granted": True,
            "local": True,
            "at": at,
            "late_after": self._params.late_after,
            "reason": why,
        }

    @staticmethod
    def _describe(shard_id: int, answer: dict[str, Any], wait: float) -> str:
        if answer.get("local"):
            return (
                f"IDENTIFY of shard {shard_id} paced locally ({answer['reason']}): "
                f"its turn in {max(0.0, wait):.1f} s"
            )
        return (
            f"IDENTIFY of shard {shard_id} queued at the bridge: bucket {answer['bucket']}, "
            f"{answer['ahead']} ahead, turn in {max(0.0, wait):.1f} s"
        )
