"""What the bridge's socket-free core sends through, and the counters it keeps.

The core decides; the I/O shell (:mod:`._shell`) implements :class:`Outgoing` over the
ROUTER and PUB sockets. Tests implement it with a list, and read what the core sent.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from ..protocol import Message

__all__ = ["BridgeCounters", "Outgoing"]


class Outgoing(Protocol):
    """The bridge's ways out: to one peer over the ROUTER, or to everyone over the PUB."""

    def send(self, route: bytes, msg: Message) -> None:
        """Send ``msg`` now, or batched with the peer's other messages at the end of this burst."""

    def queue(self, route: bytes, frames: list[bytes]) -> None:
        """Like :meth:`send`, for frames already encoded (one encoding for a whole fan-out)."""

    def publish(self, msg: Message) -> None:
        """Publish to every subscriber; lost without a trace by a slow one (beacons only)."""

    def probe(self, route: bytes, nonce: float) -> None:
        """Send ``route`` a Ping carrying ``nonce`` now, past its send bound (see :mod:`._window`)."""

    def reachable(self, route: bytes) -> bool:
        """Whether ``route``'s connection is still there (a probe sent now did not fail)."""


@dataclass(slots=True)
class BridgeCounters:
    """Messages in and out since start, socket writes (a batch is one), and what was refused."""

    messages_in: int = 0
    messages_out: int = 0
    sends: int = 0
    unread_drops: int = 0  # messages not sent: the peer was over MAX_UNREAD_BYTES
    protocol_errors: int = 0
    refused_registrations: int = 0
