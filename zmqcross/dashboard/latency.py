"""Latency samples over a sliding window, and their percentiles; pure, no I/O."""

from __future__ import annotations

import math
from collections import deque

__all__ = ["LatencyWindow", "percentile"]


def percentile(samples: list[float], fraction: float) -> float | None:
    """The ``fraction`` (0..1) percentile of ``samples`` by the nearest-rank method; ``None`` if empty.

    Nearest rank returns a value that was actually measured, which is what an operator
    reading "p50 2.1 ms" expects (no interpolation between two calls).
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be between 0 and 1, not {fraction!r}")
    if not samples:
        return None
    ordered = sorted(samples)
    rank = max(math.ceil(fraction * len(ordered)), 1)
    return ordered[rank - 1]


class LatencyWindow:
    """The last ``size`` durations (seconds), with p50/p99 over them in milliseconds."""

    def __init__(self, size: int) -> None:
        if type(size) is not int or size < 1:
            raise ValueError(f"size must be a positive integer, not {size!r}")
        self._samples: deque[float] = deque(maxlen=size)

    @property
    def size(self) -> int:
        """How many samples the window keeps."""
        return self._samples.maxlen or 0

    def __len__(self) -> int:
        return len(self._samples)

    def add(self, seconds: float) -> None:
        """Record one duration; the oldest falls out once the window is full."""
        self._samples.append(float(seconds))

    def ms(self, fraction: float) -> float | None:
        """A percentile of the window in milliseconds (``None`` while empty)."""
        value = percentile(list(self._samples), fraction)
        return None if value is None else value * 1000.0

    @property
    def last_ms(self) -> float | None:
        """The newest sample in milliseconds."""
        return self._samples[-1] * 1000.0 if self._samples else None
