"""zmqcross: run a discord.py bot's shards across many machines, over ZeroMQ.

A :class:`Bridge` plans the shards and connects every machine; a :class:`Client` is a
machine agent (or a dashboard) talking to it. See README.md for the whole picture.
"""

from ._identify import IdentifyParams
from .bridge import Bridge, BridgeStatistics
from .cache import CacheClient, CachePath, CacheServer, CacheStatistics
from .client import Client, ClientStatistics
from .cluster import ClusterClient, ClusterData, ClusterManager, RestartPolicy, cluster_data
from .errors import (
    AuthenticationError,
    BroadcastEvalError,
    CacheError,
    CacheValueTooLarge,
    ClientNotFound,
    ConfigurationError,
    ConnectionLost,
    MessageTooLarge,
    PermissionDenied,
    ProtocolError,
    RemoteError,
    RequestTimeout,
    ScriptError,
    SerializationError,
    UnknownCachePath,
    ZmqcrossError,
)
from .eventloop import run
from .machine import Machine
from .messages import IncomingMessage, IncomingRequest
from .planning import ShardData, ShardPlan, build_plan, shard_for_guild
from .protocol import DEFAULT_TIMEOUT, Limits
from .registry import ClientInfo
from .security import AccessPolicy, CurveClient, CurveServer, generate_keypair
from .shard import Shard
from .status import ClusterStatus, FleetStatus, MachineStatus

__version__ = "0.1.0"

__all__ = [
    "AccessPolicy",
    "AuthenticationError",
    "Bridge",
    "BridgeStatistics",
    "BroadcastEvalError",
    "CacheClient",
    "CacheError",
    "CachePath",
    "CacheServer",
    "CacheStatistics",
    "CacheValueTooLarge",
    "Client",
    "ClientInfo",
    "ClientNotFound",
    "ClientStatistics",
    "ClusterClient",
    "ClusterData",
    "ClusterManager",
    "ClusterStatus",
    "ConfigurationError",
    "ConnectionLost",
    "CurveClient",
    "CurveServer",
    "DEFAULT_TIMEOUT",
    "FleetStatus",
    "IdentifyParams",
    "IncomingMessage",
    "IncomingRequest",
    "Limits",
    "Machine",
    "MachineStatus",
    "MessageTooLarge",
    "PermissionDenied",
    "ProtocolError",
    "RemoteError",
    "RequestTimeout",
    "RestartPolicy",
    "ScriptError",
    "SerializationError",
    "Shard",
    "ShardData",
    "ShardPlan",
    "UnknownCachePath",
    "ZmqcrossError",
    "build_plan",
    "cluster_data",
    "generate_keypair",
    "run",
    "shard_for_guild",
]
