"""CPU accounting from /proc: per process, for the whole host, and per call by process kind."""

from __future__ import annotations

import os
from pathlib import Path


def cpu_seconds(pid: int | str) -> float:
    """User + system CPU seconds of ``pid`` so far (clock-tick resolution)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def host_cpu_seconds() -> float:
    """Busy CPU seconds of the whole host so far (all but idle and iowait)."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    busy = sum(int(v) for i, v in enumerate(fields) if i not in (3, 4))
    return busy / os.sysconf("SC_CLK_TCK")


def thread_cpu_ns(pid: int) -> int:
    """Nanoseconds on CPU of every thread of ``pid`` (libzmq's I/O threads included), from schedstat."""
    total = 0
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0
    for tid in tids:
        try:
            total += int(Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            pass  # the thread ended meanwhile
    return total


class CpuMeter:
    """CPU per call of one case, by process kind (``{"bridge": [pid], "machines": [...], ...}``).

    Clock ticks (10 ms) are too coarse for a 2 ms call, so this reads schedstat's nanoseconds.
    """

    def __init__(self, kinds: dict[str, list[int]]) -> None:
        self._kinds = kinds
        self._start = self._read()

    def _read(self) -> dict[str, int]:
        return {kind: sum(thread_cpu_ns(pid) for pid in pids) for kind, pids in self._kinds.items()}

    def per_call(self, calls: int) -> dict[str, float]:
        """Microseconds of CPU per call for each kind since the meter was made, and their total."""
        end = self._read()
        out = {kind: round((end[kind] - self._start[kind]) / 1000 / max(calls, 1), 1) for kind in end}
        out["total"] = round(sum(out.values()), 1)
        return out
