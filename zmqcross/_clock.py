"""Time, as the socket-free cores see it: wall time, monotonic time and timers.

The cores (the bridge's, the open-request table) never read ``time`` or the event loop
themselves; they are handed a :class:`Clock`. Processes hand them :class:`LoopClock`;
tests hand them a clock they advance by hand, so a 30-second deadline takes no time.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, Protocol

__all__ = ["LOOP_CLOCK", "Clock", "LoopClock", "Timer"]


class Timer(Protocol):
    """A scheduled call that can be called off."""

    def cancel(self) -> None: ...


class Clock(Protocol):
    """Wall time (deadlines on the wire), monotonic time (liveness) and timers."""

    def time(self) -> float: ...

    def monotonic(self) -> float: ...

    def call_later(self, delay: float, callback: Callable[..., object], *args: Any) -> Timer: ...


class LoopClock:
    """The real clock: :mod:`time`, and timers on the running event loop."""

    __slots__ = ()

    def time(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    def call_later(self, delay: float, callback: Callable[..., object], *args: Any) -> Timer:
        return asyncio.get_running_loop().call_later(delay, callback, *args)


LOOP_CLOCK = LoopClock()
"""The one real clock every process uses."""
