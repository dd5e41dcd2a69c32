"""The relay core: a machine's hot path on a synchronous loop of its own thread.

See :mod:`zmqcross.relay._loop` for the loop and how asyncio talks to it,
:mod:`zmqcross.relay._io` for the socket and pipes it serves, :mod:`zmqcross.relay._clusters`
for the eval and guild-request relaying, and :mod:`zmqcross.relay._routes` for the table the
manager hands it.
"""

from ._clusters import ClusterRelay
from ._io import PipeConn, SocketLink
from ._loop import CoreTimer, RelayCore, Upcalls, shared_core
from ._routes import EMPTY_ROUTES, RouteTable, Serving, eval_targets, guild_target

__all__ = [
    "EMPTY_ROUTES",
    "ClusterRelay",
    "CoreTimer",
    "PipeConn",
    "RelayCore",
    "RouteTable",
    "Serving",
    "SocketLink",
    "Upcalls",
    "eval_targets",
    "guild_target",
    "shared_core",
]
