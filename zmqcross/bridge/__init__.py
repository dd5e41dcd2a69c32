"""The bridge: the fleet's one ROUTER (requests, replies, per-peer sends) and PUB (beacons).

How it is built, top to bottom (arrows point down only):

* :mod:`._bridge`: :class:`Bridge`, the public surface, in one file; it builds the rest.
* :mod:`._shell`: the I/O shell: context, sockets, pumps, the heartbeat timer.
* :mod:`._core`: the socket-free core: decoded messages and a clock in, sends out.
  Its parts: :mod:`._registration` (who may join), :mod:`._routing` (requests, evals,
  guild requests, services), :mod:`._observers` (metrics observers, permission checks).
* :mod:`._fleet`: the plan, its placement and the registry, as one pure object.
"""

from ._bridge import BRIDGE_EVENTS, Bridge, BridgeStatistics
from ._observers import Observer, outcome_of
from ._routing import ClientFilter, Service, ServiceHandler, ServiceOwner

__all__ = [
    "BRIDGE_EVENTS",
    "Bridge",
    "BridgeStatistics",
    "ClientFilter",
    "Observer",
    "Service",
    "ServiceHandler",
    "ServiceOwner",
    "outcome_of",
]
