"""Requests sent and not yet answered, each with a deadline on an injected clock. Pure.

Every process that asks something (the bridge, a client, a machine, a cluster) keeps
one :class:`OpenRequests`; answers find their entry by request id. The table reads
time and sets timers only through the :class:`~zmqcross._clock.Clock` it is given, so
the socket-free cores that use it run on a hand-wound clock in tests.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

from ._clock import LOOP_CLOCK, Clock, Timer
from .errors import RequestTimeout, ZmqcrossError
from .protocol import Message

__all__ = ["OpenRequests", "Outcome", "Pending"]


Outcome = Message | ZmqcrossError
"""What an open request ends with: the answering message, or the error that ended it."""


@dataclass(slots=True)
class Pending:
    """One request waiting for its answer."""

    id: int
    deadline: float
    peer: bytes | None
    what: str
    frames: list[bytes] | None
    on_done: Callable[[Outcome], object]
    timer: Timer | None = None
    parked: bool = False


class OpenRequests:
    """Requests sent and not yet answered, each with a timer for its deadline.

    Request ids are unique per sender; the answer's ``reply_to`` finds the entry.
    Everything ends exactly once: answer, timeout, lost peer or close.
    """

    def __init__(self, clock: Clock = LOOP_CLOCK) -> None:
        self._next_id = 0
        self._open: dict[int, Pending] = {}
        self._clock = clock

    def __len__(self) -> int:
        return len(self._open)

    def next_id(self) -> int:
        """A fresh request id."""
        self._next_id += 1
        return self._next_id

    def add(
        self,
        *,
        request_id: int,
        timeout: float,
        what: str,
        on_done: Callable[[Outcome], object],
        peer: bytes | None = None,
        frames: list[bytes] | None = None,
    ) -> Pending:
        """Track a request; ``on_done`` gets its outcome, a :class:`RequestTimeout` after ``timeout``."""
        clock = self._clock
        entry = Pending(request_id, clock.time() + timeout, peer, what, frames, on_done)
        entry.timer = clock.call_later(timeout, self._expire, request_id, timeout)
        self._open[request_id] = entry
        return entry

    def future(
        self,
        *,
        request_id: int,
        timeout: float,
        what: str,
        peer: bytes | None = None,
        frames: list[bytes] | None = None,
    ) -> asyncio.Future[Outcome]:
        """Like :meth:`add`, with the outcome delivered to a future instead of a callback."""
        fut: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()

        def settle(outcome: Outcome) -> None:
            if not fut.done():
                fut.set_result(outcome)

        self.add(request_id=request_id, timeout=timeout, what=what, on_done=settle, peer=peer, frames=frames)
        return fut

    def get(self, request_id: int) -> Pending | None:
        """The open entry for ``request_id``, if any."""
        return self._open.get(request_id)

    def finish(self, request_id: int | None, outcome: Outcome) -> bool:
        """End ``request_id`` with ``outcome``; False if it was not open (late or unknown)."""
        entry = self._open.pop(request_id, None) if request_id is not None else None
        if entry is None:
            return False
        if entry.timer is not None:
            entry.timer.cancel()
        entry.on_done(outcome)
        return True

    def _expire(self, request_id: int, timeout: float) -> None:
        entry = self._open.get(request_id)
        if entry is not None:
            self.finish(request_id, RequestTimeout(f"{entry.what}: no answer within {timeout:.3g} s"))

    def fail_peer(self, peer: bytes, error: ZmqcrossError) -> int:
        """End every request waiting on ``peer`` with ``error``; returns how many."""
        ids = [rid for rid, entry in self._open.items() if entry.peer == peer]
        for rid in ids:
            self.finish(rid, error)
        return len(ids)

    def fail_all(self, error: ZmqcrossError) -> None:
        """End every open request with ``error`` (on close)."""
        for rid in list(self._open):
            self.finish(rid, error)

    def parked(self) -> list[Pending]:
        """Entries the far side refused to run until we register again."""
        return [entry for entry in self._open.values() if entry.parked]
