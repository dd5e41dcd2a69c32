"""Starting a cluster process that never runs the machine's own script.

``multiprocessing``'s spawn start method re-imports the parent's ``__main__`` in every
child (as ``__mp_main__``): a machine script without an ``if __name__ == "__main__":``
guard would start a second machine agent in every cluster process, with the machine's
own id. So a cluster is started as ``python -c "...; _main()"`` instead: a fresh
interpreter that imports only zmqcross and then the bot file. It gets its
:class:`~zmqcross.cluster.ClusterData` and the parent's ``sys.path`` pickled on stdin, and
the pipe to its manager as an inherited socket.

:class:`ClusterProcess` offers the part of ``multiprocessing.Process`` the manager uses
(``pid``, ``sentinel``, ``is_alive``, ``join``, ``exitcode``, ``terminate``, ``kill``).
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import threading
from multiprocessing.connection import Connection
from typing import Any

__all__ = ["ClusterProcess"]

_ENTRY = "from zmqcross.cluster._process import _main; _main()"
"""What the new interpreter runs (``-c``: the package is imported once, as itself)."""


class ClusterProcess:
    """One cluster's interpreter: ``bootstrap(bot_file, data, conn)`` runs in it."""

    def __init__(self, bot_file: str, data: Any, conn: Connection) -> None:
        self._payload = pickle.dumps((bot_file, data, list(sys.path)))
        self._conn = conn
        self._popen: subprocess.Popen[bytes] | None = None
        self.sentinel = -1
        self._sentinel_lock = threading.Lock()

    def start(self) -> None:
        """Start the interpreter; blocks while it is created (call it off the event loop)."""
        # The sentinel: a pipe whose write end only the child holds, readable (EOF) once the
        # child has exited, as multiprocessing's own sentinel.
        sentinel_r, sentinel_w = os.pipe()
        conn_fd = self._conn.fileno()
        try:
            popen = subprocess.Popen(
                [sys.executable, "-c", _ENTRY, str(conn_fd), str(sentinel_w)],
                stdin=subprocess.PIPE,
                pass_fds=(conn_fd, sentinel_w),
            )
        except BaseException:
            os.close(sentinel_r)
            raise
        finally:
            os.close(sentinel_w)
        self._popen, self.sentinel = popen, sentinel_r
        assert popen.stdin is not None
        with popen.stdin:
            popen.stdin.write(self._payload)

    @property
    def pid(self) -> int | None:
        return self._popen.pid if self._popen is not None else None

    @property
    def exitcode(self) -> int | None:
        """The exit status once it has exited (negative: the signal that ended it), else None."""
        return self._popen.poll() if self._popen is not None else None

    def is_alive(self) -> bool:
        return self._popen is not None and self._popen.poll() is None

    def join(self, timeout: float | None = None) -> None:
        if self._popen is None:
            return
        try:
            self._popen.wait(timeout)
        except subprocess.TimeoutExpired:
            return

    def close_sentinel(self) -> None:
        """Close the sentinel once its watcher is done with it (the manager, after its exit).

        Only then: closed under a watcher, its number could be taken by a new descriptor
        that the watcher would then stop watching; closed twice, the second close would hit
        whatever took the number since (a cluster's pipe).
        """
        with self._sentinel_lock:
            fd, self.sentinel = self.sentinel, -1
        if fd >= 0:
            os.close(fd)

    def terminate(self) -> None:
        if self.is_alive():
            assert self._popen is not None
            self._popen.terminate()

    def kill(self) -> None:
        if self.is_alive():
            assert self._popen is not None
            self._popen.kill()


def _main() -> None:
    conn_fd, sentinel_fd = int(sys.argv[1]), int(sys.argv[2])
    bot_file, data, parent_path = pickle.load(sys.stdin.buffer)
    sys.stdin.close()
    sys.path[:] = [p for p in parent_path if p] + [p for p in sys.path if p not in parent_path]
    from ._child import bootstrap

    del sentinel_fd  # held open, never used: it closes when this process ends
    bootstrap(bot_file, data, Connection(conn_fd))
