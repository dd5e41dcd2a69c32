"""The web dashboard: the fleet on one live page, and its JSON.

:class:`Dashboard` serves it for a connected ``dashboard`` :class:`~zmqcross.Client`;
``zmqcross dashboard`` and ``bots/dashboard.py`` run it as a process.
"""

from .app import DEFAULT_INTERVAL, DEFAULT_WINDOW, Dashboard, LookupBuilder, guild_lookup
from .latency import LatencyWindow, percentile

__all__ = [
    "DEFAULT_INTERVAL",
    "DEFAULT_WINDOW",
    "Dashboard",
    "LatencyWindow",
    "LookupBuilder",
    "guild_lookup",
    "percentile",
]
