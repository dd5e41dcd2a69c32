"""A client of the bridge: :class:`Client`, its statistics, and the link's states.

The public surface of a client is :class:`Client` in :mod:`._client`; its parts are internal:
its sockets (:mod:`._channel`), the link's life and states (:mod:`._link`) and a machine's
relaying to its clusters (:mod:`._relay`).
"""

from ._client import CLIENT_EVENTS, Client, ClientStatistics, default_machine_id
from ._link import HANDSHAKE_FAILURES, LINK_TRANSITIONS, LinkState

__all__ = [
    "CLIENT_EVENTS",
    "HANDSHAKE_FAILURES",
    "LINK_TRANSITIONS",
    "Client",
    "ClientStatistics",
    "LinkState",
    "default_machine_id",
]
