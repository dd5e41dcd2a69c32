"""The public surface changes only on purpose."""

from __future__ import annotations

import inspect

import zmqcross

PUBLIC = [
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


def test_all_is_sorted_and_exact() -> None:
    assert zmqcross.__all__ == sorted(zmqcross.__all__)
    assert sorted(PUBLIC) == zmqcross.__all__
    for name in zmqcross.__all__:
        assert getattr(zmqcross, name) is not None


def test_every_public_name_is_documented() -> None:
    for name in zmqcross.__all__:
        obj = getattr(zmqcross, name)
        if inspect.isclass(obj) or inspect.isfunction(obj):
            assert inspect.getdoc(obj), f"{name} has no docstring"


def test_errors_form_one_tree() -> None:
    for name in zmqcross.__all__:
        obj = getattr(zmqcross, name)
        if inspect.isclass(obj) and issubclass(obj, Exception):
            assert issubclass(obj, zmqcross.ZmqcrossError)
    assert issubclass(zmqcross.RequestTimeout, TimeoutError)
    assert issubclass(zmqcross.ClientNotFound, LookupError)


def test_options_are_keyword_only() -> None:
    for cls in (zmqcross.Bridge, zmqcross.Client):
        params = list(inspect.signature(cls).parameters.values())
        assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in params), cls


def test_py_typed_is_shipped() -> None:
    from importlib.resources import files

    assert files("zmqcross").joinpath("py.typed").is_file()
