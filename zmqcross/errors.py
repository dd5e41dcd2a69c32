"""Every exception zmqcross raises, in one hierarchy.

::

    ZmqcrossError                      catch this for "anything zmqcross"
    ├── ConfigurationError (ValueError) bad options, bad key files, bad shard plan
    ├── SerializationError (TypeError)  a value that cannot travel as JSON
    ├── ProtocolError                   malformed frames, unknown kinds, broken limits
    │   └── MessageTooLarge             a frame or message over its named limit
    ├── AuthenticationError             wrong auth token, key not allowed, CURVE mismatch
    ├── PermissionDenied                the peer may not do this (eval, request, cache)
    ├── ClientNotFound (LookupError)    no connected client matches a target
    ├── ConnectionLost                  not connected, closed, or the peer went away
    ├── RequestTimeout (TimeoutError)   no answer before the deadline
    ├── RemoteError                     the far side raised; carries its traceback
    ├── ScriptError                     an eval script or function cannot be shipped or compiled
    ├── BroadcastEvalError              some clusters of a broadcast eval failed; has every outcome
    └── CacheError                      a cache operation was refused
        ├── UnknownCachePath (LookupError)  no such cache path on the bridge
        └── CacheValueTooLarge          a value over the cache's size limit

Errors also travel: a failure on one process is sent to the caller as
``{type, message, traceback}`` plus a short ``code`` naming the class above, and
raised there as that class. ``remote_type`` and ``remote_traceback`` keep what the
far side said, so a caller sees where it really failed.
"""

from __future__ import annotations

__all__ = [
    "AuthenticationError",
    "BroadcastEvalError",
    "CacheError",
    "CacheValueTooLarge",
    "ClientNotFound",
    "ConfigurationError",
    "ConnectionLost",
    "MessageTooLarge",
    "PermissionDenied",
    "ProtocolError",
    "RemoteError",
    "RequestTimeout",
    "ScriptError",
    "SerializationError",
    "UnknownCachePath",
    "ZmqcrossError",
    "error_code",
    "error_from_wire",
]


class ZmqcrossError(Exception):
    """Base class of every zmqcross error.

    ``remote_type`` and ``remote_traceback`` are set when the error happened in
    another process and was carried here; they are ``None`` for local errors.
    """

    code = "error"

    def __init__(
        self,
        message: str,
        *,
        remote_type: str | None = None,
        remote_traceback: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.remote_type = remote_type
        self.remote_traceback = remote_traceback

    def __str__(self) -> str:
        if self.remote_traceback:
            return f"{self.message}\n\nRemote traceback:\n{self.remote_traceback.rstrip()}"
        return self.message


class ConfigurationError(ZmqcrossError, ValueError):
    """An option, key file or shard plan is invalid; raised before anything starts."""

    code = "configuration"


class SerializationError(ZmqcrossError, TypeError):
    """A value could not be encoded as JSON (or decoded from it)."""

    code = "serialization"


class ProtocolError(ZmqcrossError):
    """A message broke the wire protocol: bad frames, bad JSON, unknown kind, bad fields.

    ``request_id`` is the id of the offending request when the header was readable
    enough to find one, so the receiver can still answer it with this error.
    """

    code = "protocol"

    def __init__(self, message: str, *, request_id: int | None = None, **kwargs: str | None) -> None:
        super().__init__(message, **kwargs)
        self.request_id = request_id


class MessageTooLarge(ProtocolError):
    """A frame or a whole message is over one of the protocol's named limits."""

    code = "too_large"


class AuthenticationError(ZmqcrossError):
    """The bridge refused this peer: wrong auth token, unknown CURVE key, CURVE mismatch."""

    code = "authentication"


class PermissionDenied(ZmqcrossError):
    """The peer is authenticated but may not perform this action."""

    code = "permission_denied"


class ClientNotFound(ZmqcrossError, LookupError):
    """No connected client matches the requested target."""

    code = "not_found"


class ConnectionLost(ZmqcrossError):
    """Not connected, already closed, or the peer went away while a request was open."""

    code = "connection_lost"


class RequestTimeout(ZmqcrossError, TimeoutError):
    """No answer arrived before the request's deadline."""

    code = "timeout"


class RemoteError(ZmqcrossError):
    """Code on the far side raised; ``remote_type`` and ``remote_traceback`` say what and where."""

    code = "remote"


class ScriptError(ZmqcrossError):
    """An eval script does not compile, or a function cannot be shipped to the clusters."""

    code = "script"


class BroadcastEvalError(ZmqcrossError):
    """At least one targeted cluster raised, timed out or was down.

    ``results`` has one entry per targeted cluster in cluster id order: the value, or
    the exception for that slot. ``errors`` maps each failed cluster id to its exception.
    """

    code = "broadcast_eval"

    def __init__(
        self, message: str, *, results: list[object], errors: dict[int, ZmqcrossError], clusters: list[int]
    ) -> None:
        super().__init__(message)
        self.results = results
        self.errors = errors
        self.clusters = clusters


class CacheError(ZmqcrossError):
    """A cache operation was refused (bad key or value type, or a limit); nothing was changed."""

    code = "cache"


class UnknownCachePath(CacheError, LookupError):
    """The cache has no path of this name (paths are declared on the bridge's CacheServer)."""

    code = "cache_unknown_path"


class CacheValueTooLarge(CacheError):
    """The encoded value is over the cache's ``max_value_bytes`` limit."""

    code = "cache_too_large"


_BY_CODE: dict[str, type[ZmqcrossError]] = {
    cls.code: cls
    for cls in (
        ZmqcrossError,
        ConfigurationError,
        SerializationError,
        ProtocolError,
        MessageTooLarge,
        AuthenticationError,
        PermissionDenied,
        ClientNotFound,
        ConnectionLost,
        RequestTimeout,
        RemoteError,
        ScriptError,
        BroadcastEvalError,
        CacheError,
        UnknownCachePath,
        CacheValueTooLarge,
    )
}


def error_code(exc: BaseException) -> str:
    """The wire code for ``exc``: its class's code, or ``"remote"`` for foreign exceptions."""
    if isinstance(exc, ZmqcrossError):
        return exc.code
    return RemoteError.code


def error_from_wire(code: str, type_name: str, message: str, traceback: str | None) -> ZmqcrossError:
    """Rebuild the error a peer sent as ``{code, type, message, traceback}``.

    An unknown code (a newer peer) still raises, as a plain :class:`RemoteError`.
    """
    cls = _BY_CODE.get(code, RemoteError)
    text = f"{type_name}: {message}" if cls is RemoteError else message
    return cls(text, remote_type=type_name, remote_traceback=traceback or None)
