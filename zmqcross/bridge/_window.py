"""How much each peer has been sent and not yet shown it read: the bridge's per-peer send bound.

libzmq bounds a peer's queue by message count (SNDHWM), not bytes, and a peer's word
about what it read could be a lie. What cannot be forged is order: once the bytes sent
to a peer pass :data:`PROBE_EVERY_BYTES` since its last proof, the bridge sends it a
Ping with a fresh nonce, and its Pong carrying that nonce proves it read everything
sent before the Ping (one connection delivers in order). Bytes sent since the last
proven mark are *unread*. Past :data:`MAX_UNREAD_BYTES` the bridge sends that peer
nothing more (each message dropped with a warning), and a peer that stays over for a
heartbeat timeout is dropped as not reading. Pure: the shell counts, the core decides.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["MAX_UNREAD_BYTES", "PROBE_EVERY_BYTES", "SendWindow"]

PROBE_EVERY_BYTES = 4 * 1024 * 1024
"""Bytes sent to a peer after which the bridge asks it to prove it read them."""

MAX_UNREAD_BYTES = 64 * 1024 * 1024
"""Most bytes a peer may have been sent and not proven read; over it, it is sent nothing."""


@dataclass(slots=True)
class _Peer:
    sent: int = 0  # bytes handed to libzmq for this peer
    proven: int = 0  # of those, the ones it has shown it read
    probe: tuple[float, int] | None = None  # (nonce, sent mark) of the Ping in flight
    over_since: float | None = None  # monotonic time it went over MAX_UNREAD_BYTES


class SendWindow:
    """Per-peer sent and proven-read byte counts, and what to do about them."""

    __slots__ = ("_limit", "_nonce", "_peers", "_probe_every")

    def __init__(self, *, probe_every: int = PROBE_EVERY_BYTES, limit: int = MAX_UNREAD_BYTES) -> None:
        self._peers: dict[bytes, _Peer] = {}
        self._probe_every = probe_every
        self._limit = limit
        self._nonce = 0.0

    def may_send(self, route: bytes, now: float) -> bool:
        """Whether a message may go to ``route`` now (it is within its unread bound)."""
        peer = self._peers.get(route)
        if peer is None or peer.sent - peer.proven <= self._limit:
            return True
        if peer.over_since is None:
            peer.over_since = now
        return False

    def sent(self, route: bytes, nbytes: int) -> float | None:
        """``nbytes`` went to ``route``; the nonce of a probe to send now, or None."""
        peer = self._peers.get(route)
        if peer is None:
            peer = self._peers[route] = _Peer()
        peer.sent += nbytes
        if peer.probe is not None or peer.sent - peer.proven < self._probe_every:
            return None
        self._nonce += 1.0
        peer.probe = (self._nonce, peer.sent)
        return self._nonce

    def proven(self, route: bytes, nonce: float) -> float | None:
        """A Pong echoing ``nonce`` came from ``route``: the nonce of the next probe to send, or None.

        A Pong that answers no probe of ours (late, repeated or made up) proves nothing.
        """
        peer = self._peers.get(route)
        if peer is None or peer.probe is None or peer.probe[0] != nonce:
            return None
        peer.proven = max(peer.proven, peer.probe[1])
        peer.probe = None
        if peer.sent - peer.proven <= self._limit:
            peer.over_since = None
        if peer.sent - peer.proven < self._probe_every:
            return None
        # Much was sent while the probe travelled: ask again at once, or a reading peer
        # left over the bound would never be asked and would be cut off.
        self._nonce += 1.0
        peer.probe = (self._nonce, peer.sent)
        return self._nonce

    def unread(self, route: bytes) -> int:
        """Bytes sent to ``route`` that it has not shown it read."""
        peer = self._peers.get(route)
        return peer.sent - peer.proven if peer is not None else 0

    def stuck(self, now: float, patience: float) -> list[bytes]:
        """Routes that have been over the bound for longer than ``patience`` seconds."""
        return [
            route
            for route, peer in self._peers.items()
            if peer.over_since is not None and now - peer.over_since > patience
        ]

    def forget(self, route: bytes) -> None:
        """``route`` is gone."""
        self._peers.pop(route, None)
