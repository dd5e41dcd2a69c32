"""The offline Discord: a local REST + Gateway v10 server with deterministic synthetic guilds.

An unmodified discord.py client pointed at it (:func:`point_discord_py_at`) logs in, reaches
``on_ready`` and holds every guild of its shards, with roles and channels. This package is a
separate layer: it imports nothing else from zmqcross, and only :mod:`.discordpy` knows
discord.py's internals.
"""

from .discordpy import point_discord_py_at
from .guilds import guild_id, shard_guild_indices, shard_of, synthetic_guild
from .server import GatewayServer, GatewayStatistics

__all__ = [
    "GatewayServer",
    "GatewayStatistics",
    "guild_id",
    "point_discord_py_at",
    "shard_guild_indices",
    "shard_of",
    "synthetic_guild",
]
