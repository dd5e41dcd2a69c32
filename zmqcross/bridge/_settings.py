"""The settings the bridge's core decides with, fixed when the bridge is built."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from ..protocol import Limits
from ..security import AccessPolicy

__all__ = [
    "DEFAULT_CLAIM_TIMEOUT",
    "DEFAULT_LEASE",
    "MAX_LEASE",
    "MAX_OPEN_PER_PEER",
    "MAX_TIMEOUT",
    "CoreSettings",
    "Origin",
]

DEFAULT_LEASE = 10.0
"""Seconds a machine runs its clusters after last hearing the bridge: a bridge restart within
about ``lease - heartbeat_interval`` restarts nothing; a lost machine's chunk moves after it."""
DEFAULT_CLAIM_TIMEOUT = 30.0
"""Seconds a machine that ran nothing has to claim a chunk it was handed before it moves on."""
MAX_LEASE = 600.0
"""The longest lease accepted (a lost machine's shards would be down that long)."""

MAX_TIMEOUT = 600.0
"""Longest a request may stay open at the bridge, whatever deadline its sender wrote.

A peer's deadline is its own word; without a cap, requests that never expire pile up
(issue 14: 300,000 open requests held 380 MB). Ten minutes covers the slowest honest
broadcast eval; ``Bridge(request_timeout=...)`` must not exceed it."""

MAX_OPEN_PER_PEER = 2048
"""Most requests, evals and guild requests one peer may have open at the bridge at once.

The benchmark keeps 32 in flight; a machine relaying for all of its clusters stays far
below. A peer over it is answered with an error for each extra request, not queued."""


class Origin(Protocol):
    """What the connection a message came on says about its sender (libzmq's view of it)."""

    def user_id(self) -> str | None:
        """The CURVE key (z85) that ZAP admitted; None without CURVE."""

    def address(self) -> str | None:
        """The peer's IP address, when libzmq knows it."""


@dataclass(frozen=True, slots=True)
class CoreSettings:
    """Token, policy, timings and limits; ``key_name`` maps an admitted CURVE key to its name.

    ``lease``: seconds a machine may run its clusters after the bridge last heard it (each
    answered heartbeat renews it); a machine lost without a goodbye keeps its chunk until
    its lease has surely run out (``lease + lease_margin`` after the last grant).

    ``claim_timeout``: seconds a machine that ran nothing has, once handed a chunk, to
    claim it (say it runs it); then the chunk goes to the next standby.

    ``key_name`` is None when CURVE is off: then no message is checked against a key.
    """

    auth_token: str
    epoch: str
    policy: AccessPolicy
    heartbeat_interval: float
    heartbeat_timeout: float
    limits: Limits
    key_name: Callable[[str], str | None] | None = None
    lease: float = DEFAULT_LEASE
    claim_timeout: float = DEFAULT_CLAIM_TIMEOUT

    @property
    def lease_margin(self) -> float:
        """Seconds added to a lost machine's lease before its chunk moves: clock rates and closing."""
        return max(0.5, 0.1 * self.lease)

    @property
    def curve(self) -> bool:
        """Whether peers are identified by CURVE keys."""
        return self.key_name is not None
