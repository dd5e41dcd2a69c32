"""Connections that never register: which to close, and when. Pure.

A ROUTER cannot close one of its connections, and a peer that connects and never
registers would hold its connection (and libzmq's buffers for it) for as long as it
likes. The shell learns of each accepted connection (its file descriptor, from the
socket monitor), tells this table when a registered peer is heard on one, and after
:data:`UNREGISTERED_GRACE` shuts down the connections nobody registered on; libzmq
then tears them down itself.
"""

from __future__ import annotations

__all__ = ["UNREGISTERED_GRACE", "IdleConnections"]

UNREGISTERED_GRACE = 10.0
"""Seconds a new connection has to carry a registered peer's traffic before it is closed."""


class IdleConnections:
    """Accepted connections not yet seen carrying a registered peer, by descriptor."""

    __slots__ = ("_pending",)

    def __init__(self) -> None:
        self._pending: dict[int, float] = {}

    def __bool__(self) -> bool:
        return bool(self._pending)

    def accepted(self, fd: int, now: float) -> None:
        """A connection was accepted on ``fd``."""
        self._pending[fd] = now

    def closed(self, fd: int) -> None:
        """The connection on ``fd`` is gone."""
        self._pending.pop(fd, None)

    def heard(self, fd: int) -> None:
        """A registered peer's message came on ``fd``: it is in use."""
        self._pending.pop(fd, None)

    def expired(self, now: float, grace: float) -> list[int]:
        """Connections older than ``grace`` that never carried a registered peer; forgotten here."""
        late = [fd for fd, since in self._pending.items() if now - since > grace]
        for fd in late:
            del self._pending[fd]
        return late
