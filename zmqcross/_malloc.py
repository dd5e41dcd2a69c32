"""One malloc arena for a zmqcross process, on glibc.

glibc gives each thread that allocates an arena of its own (up to eight per core), and
memory freed in an arena is kept for that arena's later use. A machine moves big eval
results on its relay thread while ZeroMQ's I/O thread encrypts and sends them, and the
process's event loop reads the rest: three arenas, each holding its own high-water mark
of big payloads. Measured after the benchmark's heavy evals (20,000 guilds, results of
27 and 74 MB): machines 69-71 MB resident with an arena per thread, 52-55 MB with one;
the bridge 72 MB against 65. These processes run Python under one lock, so the arena
lock a shared arena adds is rarely contended.

A user who has set ``MALLOC_ARENA_MAX`` has chosen; that choice stands. Elsewhere than
glibc nothing is done.
"""

from __future__ import annotations

import os
import threading

__all__ = ["share_one_arena"]

_M_ARENA_MAX = -8  # mallopt's parameter number, from glibc's malloc.h

_lock = threading.Lock()
_capped: bool | None = None


def share_one_arena() -> bool:
    """Cap this process's malloc arenas at one, before more threads start; True if capped.

    Idempotent and never raises: False on a libc other than glibc, when
    ``MALLOC_ARENA_MAX`` is set, or if glibc refuses. Threads that already have an arena
    keep it; every thread after this shares what exists.
    """
    global _capped
    with _lock:
        if _capped is None:
            _capped = _cap()
        return _capped


def _cap() -> bool:
    if "MALLOC_ARENA_MAX" in os.environ or not _is_glibc():
        return False
    try:
        import ctypes  # only here: about 0.3 MB, and only on glibc

        return bool(ctypes.CDLL(None).mallopt(_M_ARENA_MAX, 1))
    except (OSError, AttributeError):
        return False


def _is_glibc() -> bool:
    try:
        return os.confstr("CS_GNU_LIBC_VERSION") is not None
    except (AttributeError, ValueError, OSError):  # no confstr, or the name is unknown here
        return False
