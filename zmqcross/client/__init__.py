"""A client of the bridge: :class:`Client`, its statistics, and the link's states.

The public surface of a client is :class:`Client` in :mod:`._client`; its parts are internal:
the link's life (:mod:`._link`) and a machine's relaying (:mod:`._relay`).
"""

from ._client import CLIENT_EVENTS, Client, ClientStatistics, default_machine_id

__all__ = ["CLIENT_EVENTS", "Client", "ClientStatistics", "default_machine_id"]
