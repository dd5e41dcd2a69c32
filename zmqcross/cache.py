"""The shared cache: a :class:`CacheServer` on the bridge, a :class:`CacheClient` anywhere else.

::

    # on the bridge
    server = CacheServer(bridge, paths=[{"path": "cooldowns", "max_size": 50_000, "ttl": 60},
                                        CachePath("guilds", max_size=10_000)],
                         persist_path="cache.json")
    await bridge.start()
    ...
    await bridge.close()
    await server.close()          # final save; see CacheServer for the order

    # on a machine, a dashboard, or in a bot (through its Shard)
    storage = CacheClient(client_or_shard)
    await storage.cache["guilds"].set("123", {"prefix": "!"})
    hits = await storage.cache["cooldowns"].incr(f"{user_id}:daily", ttl=86_400)

Calls ride the fabric as bridge service ``"cache"`` (:meth:`Bridge.add_service`), so they
get the same CURVE, auth token and permission checks as everything else; a peer needs
the ``"cache"`` action of its :class:`~zmqcross.AccessPolicy`. Every call is one JSON
object ``{"op": ..., "path": ..., <fields>}`` (:class:`CacheOp`), applied by the bridge
in one synchronous step between its socket events: a write is acknowledged only once it
is applied, and concurrent callers see the result of one call after another.

Eviction, expiry and the persist format are decided in :mod:`zmqcross._cachestore`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, Self

from ._cachestore import (
    DEFAULT_MAX_VALUE_BYTES,
    CachePath,
    CacheStatistics,
    CacheStore,
    CorruptSnapshot,
    Snapshot,
    check_by,
    check_key,
    check_keys,
    check_ttl,
    decode_snapshot,
    encode_snapshot,
    json_fragment,
    kind_of,
)
from .errors import CacheError, ConfigurationError, SerializationError, UnknownCachePath, ZmqcrossError
from .protocol import dump, load

if TYPE_CHECKING:
    from .bridge import Bridge
    from .messages import IncomingRequest
    from .registry import ClientInfo

__all__ = [
    "CACHE_OPS",
    "CACHE_SERVICE",
    "DEFAULT_SAVE_INTERVAL",
    "DEFAULT_SWEEP_INTERVAL",
    "CacheClient",
    "CacheOp",
    "CachePath",
    "CacheServer",
    "CacheStatistics",
    "LocalCache",
    "LocalCachePath",
    "RemoteCache",
    "RemoteCachePath",
    "ServiceCaller",
    "run_op",
]

log = logging.getLogger("zmqcross.cache")

CACHE_SERVICE = "cache"
"""The bridge service name the cache registers under (and the permission it needs)."""

DEFAULT_SAVE_INTERVAL = 30.0
"""Seconds between saves of a persisted cache (only when something changed)."""

DEFAULT_SWEEP_INTERVAL = 1.0
"""Seconds between sweeps that free expired entries of paths nobody is touching."""


# --------------------------------------------------------------------------- the wire

CACHE_OPS: Mapping[str, tuple[frozenset[str], frozenset[str]]] = {
    "get": (frozenset({"key"}), frozenset()),
    "set": (frozenset({"key", "value"}), frozenset({"ttl"})),
    "delete": (frozenset({"key"}), frozenset()),
    "has": (frozenset({"key"}), frozenset()),
    "clear": (frozenset(), frozenset()),
    "keys": (frozenset(), frozenset()),
    "size": (frozenset(), frozenset()),
    "get_many": (frozenset({"keys"}), frozenset()),
    "set_many": (frozenset({"items"}), frozenset({"ttl"})),
    "incr": (frozenset({"key"}), frozenset({"by", "ttl"})),
}
"""Each cache op's required and optional fields, besides ``op`` and ``path``."""


class _Unset:
    def __repr__(self) -> str:
        return "UNSET"


_UNSET: Any = _Unset()


@dataclass(frozen=True, slots=True, kw_only=True)
class CacheOp:
    """One cache call as it travels: the JSON object ``{"op": ..., "path": ..., <fields>}``.

    ``value`` (``set``) and the values of ``items`` (``set_many``) are JSON data; ``ttl``
    null or absent means the path's ttl. Fields an op does not take stay unset and are
    not sent. Answers are described at :func:`run_op`.
    """

    op: str
    path: str
    key: str = _UNSET
    value: Any = _UNSET
    ttl: float | None = _UNSET
    by: int = _UNSET
    keys: list[str] = _UNSET
    items: Mapping[str, Any] = _UNSET

    def to_wire(self) -> dict[str, Any]:
        """The JSON object a client sends to the cache service."""
        wire: dict[str, Any] = {"op": self.op, "path": self.path}
        for name in ("key", "value", "ttl", "by", "keys", "items"):
            value = getattr(self, name)
            if value is not _UNSET:
                wire[name] = value
        return wire

    @classmethod
    def from_wire(cls, data: object) -> CacheOp:
        """Check a received call's shape; the fields' types are checked as it runs."""
        if not isinstance(data, dict):
            raise CacheError(
                'a cache call is a JSON object like {"op": "get", "path": "guilds", "key": "123"}, '
                f"not {kind_of(data)}"
            )
        op = data.get("op")
        if not isinstance(op, str) or op not in CACHE_OPS:
            raise CacheError(f"unknown cache op {op!r}; ops are: {', '.join(CACHE_OPS)}")
        if "path" not in data:
            raise CacheError(f"cache op {op!r} needs a 'path'")
        required, optional = CACHE_OPS[op]
        given = set(data) - {"op", "path"}
        missing = required - given
        if missing:
            raise CacheError(f"cache op {op!r} is missing {_fields(missing)}")
        extra = given - required - optional
        if extra:
            takes = _fields(required | optional) if required | optional else "no other fields"
            raise CacheError(f"cache op {op!r} does not take {_fields(extra)}; it takes {takes}")
        return cls(op=op, **{k: v for k, v in data.items() if k != "op"})


def _fields(names: Iterable[str]) -> str:
    ordered = sorted(names)
    return ("field " if len(ordered) == 1 else "fields ") + ", ".join(repr(n) for n in ordered)


def _given(value: Any, default: Any = None) -> Any:
    return default if value is _UNSET else value


def _encode(value: Any, key: str, path: str) -> bytes:
    try:
        return dump(value)
    except SerializationError as exc:
        raise SerializationError(f"the value for key {key!r} in cache path {path!r}: {exc.message}") from None


def run_op(store: CacheStore, op: CacheOp) -> Any:
    """Apply one call to ``store`` and return its JSON answer. Pure; raises :class:`CacheError`.

    Answers: ``get`` ``{"found": true, "value": v}`` or ``{"found": false}``; ``get_many``
    ``{key: value}`` of the keys found; ``set`` and ``set_many`` null, once applied;
    ``delete`` and ``has`` a boolean; ``clear`` how many entries it removed; ``keys`` a
    list (least recently used first); ``size`` and ``incr`` an integer.
    """
    path = op.path
    match op.op:
        case "get":
            data = store.get(path, op.key)
            return {"found": False} if data is None else {"found": True, "value": json_fragment(data)}
        case "set":
            store.set(path, check_key(op.key), _encode(op.value, op.key, path), ttl=_given(op.ttl))
            return None
        case "get_many":
            return {key: json_fragment(data) for key, data in store.get_many(path, op.keys).items()}
        case "set_many":
            if not isinstance(op.items, Mapping):
                raise CacheError(
                    f"set_many's 'items' must be an object of key to value, not {kind_of(op.items)}"
                )
            encoded = {check_key(k): _encode(v, k, path) for k, v in op.items.items()}
            store.set_many(path, encoded, ttl=_given(op.ttl))
            return None
        case "delete":
            return store.delete(path, op.key)
        case "has":
            return store.has(path, op.key)
        case "clear":
            return store.clear(path)
        case "keys":
            return store.keys(path)
        case "size":
            return store.size(path)
        case "incr":
            return store.incr(path, op.key, _given(op.by, 1), ttl=_given(op.ttl))
    raise CacheError(f"unknown cache op {op.op!r}")  # from_wire lets none through


# --------------------------------------------------------------------------- on the bridge


class LocalCachePath:
    """One path of the bridge's own cache, for bridge code: ``server.cache["guilds"]``.

    Synchronous, because nothing here waits: a call applies at once, between the
    bridge's socket events, exactly as a client's call does. Methods and results are
    those of :class:`RemoteCachePath`, without ``await``. Values come back as fresh copies.
    """

    __slots__ = ("_store", "name")

    def __init__(self, store: CacheStore, name: str) -> None:
        self._store = store
        self.name = name

    def get(self, key: str, default: Any = None) -> Any:
        """The value at ``key``, or ``default`` when it is absent or expired."""
        data = self._store.get(self.name, key)
        return default if data is None else load(data)

    def set(self, key: str, value: Any, *, ttl: float | None = None) -> None:
        """Store ``value`` (JSON data) for ``ttl`` seconds (None: the path's ttl)."""
        self._store.set(self.name, check_key(key), _encode(value, key, self.name), ttl=ttl)

    def delete(self, key: str) -> bool:
        """Remove ``key``; whether it existed."""
        return self._store.delete(self.name, key)

    def has(self, key: str) -> bool:
        """Whether ``key`` is present (not counted as a use)."""
        return self._store.has(self.name, key)

    def clear(self) -> int:
        """Remove every entry; how many there were."""
        return self._store.clear(self.name)

    def keys(self) -> list[str]:
        """The keys, least recently used first."""
        return self._store.keys(self.name)

    def size(self) -> int:
        """How many entries the path holds."""
        return self._store.size(self.name)

    def get_many(self, keys: Iterable[str]) -> dict[str, Any]:
        """The values of the keys that are present."""
        return {k: load(v) for k, v in self._store.get_many(self.name, keys).items()}

    def set_many(self, items: Mapping[str, Any], *, ttl: float | None = None) -> None:
        """Store every item, or none of them when one is refused."""
        if not isinstance(items, Mapping):
            raise CacheError(f"set_many takes a mapping of key to value, not {type(items).__name__}")
        self._store.set_many(
            self.name, {check_key(k): _encode(v, k, self.name) for k, v in items.items()}, ttl=ttl
        )

    def incr(self, key: str, by: int = 1, *, ttl: float | None = None) -> int:
        """Add ``by`` to the integer at ``key`` (missing: 0); the new value."""
        return self._store.incr(self.name, key, by, ttl=ttl)

    def __repr__(self) -> str:
        return f"<LocalCachePath {self.name!r}>"


class LocalCache:
    """The bridge's cache paths by name; ``server.cache["guilds"]`` is a :class:`LocalCachePath`."""

    __slots__ = ("_store",)

    def __init__(self, store: CacheStore) -> None:
        self._store = store

    def __getitem__(self, name: str) -> LocalCachePath:
        if name not in self:
            known = ", ".join(repr(n) for n in self)
            raise UnknownCachePath(f"no cache path {name!r}; the bridge's cache paths are: {known}")
        return LocalCachePath(self._store, name)

    def __contains__(self, name: object) -> bool:
        return any(p.name == name for p in self._store.paths)

    def __iter__(self) -> Iterator[str]:
        return iter([p.name for p in self._store.paths])

    def __len__(self) -> int:
        return len(self._store.paths)


class CacheServer:
    """The bridge's shared cache, served to every client as bridge service ``"cache"``.

    ``paths`` declares the cache areas, each a :class:`CachePath` or a dict
    ``{"path": "guilds", "max_size": 100, "ttl": None}``. ``max_value_bytes`` caps one
    value's JSON (:data:`~zmqcross._cachestore.DEFAULT_MAX_VALUE_BYTES` by default).
    ``server.cache["guilds"]`` is the bridge's own, synchronous access to a path.

    Persistence (``persist_path``): the constructor restores the file before the service
    exists, so no client can read or write ahead of it; expired entries are dropped. A
    corrupt file is logged, moved aside to ``<persist_path>.corrupt`` (replacing an older
    one) and the cache starts empty. The cache is saved every ``save_interval`` seconds when it changed,
    and by :meth:`close`, atomically (a temporary file in the same directory, fsync,
    rename). TTLs are saved as wall-clock expiry times.

    **What a crash loses.** After a clean :meth:`close` nothing acknowledged is lost.
    If the bridge process dies without it (SIGKILL, power loss), the writes acknowledged
    since the last completed save are lost: up to ``save_interval`` seconds of writes,
    plus those made while that save was being written. Lower ``save_interval`` narrows
    the window; each save writes the whole cache.

    **Lifetime.** Construct it before or after ``bridge.start()`` (with no running event
    loop yet, its sweeps and saves begin when the bridge starts). On shutdown, ``await
    server.close()``, before or after ``bridge.close()``: from its first moment the cache
    refuses every call (a :class:`CacheError` saying it is closed), so no write can be
    acknowledged after the final save. Closing the bridge first lets clients' last calls
    finish normally. ``async with CacheServer(...)`` closes it on exit.
    """

    def __init__(
        self,
        bridge: Bridge,
        *,
        paths: Iterable[CachePath | Mapping[str, Any]],
        persist_path: str | os.PathLike[str] | None = None,
        save_interval: float = DEFAULT_SAVE_INTERVAL,
        sweep_interval: float = DEFAULT_SWEEP_INTERVAL,
        max_value_bytes: int = DEFAULT_MAX_VALUE_BYTES,
        service: str = CACHE_SERVICE,
    ) -> None:
        for name, interval in (("save_interval", save_interval), ("sweep_interval", sweep_interval)):
            if isinstance(interval, bool) or not isinstance(interval, (int, float)) or not interval > 0:
                raise ConfigurationError(f"{name} must be a positive number of seconds, not {interval!r}")
        self._store = CacheStore(paths, max_value_bytes=max_value_bytes)
        self._save_interval = float(save_interval)
        self._sweep_interval = float(sweep_interval)
        self._persist_path = Path(persist_path) if persist_path is not None else None
        self._save_lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        if self._persist_path is not None:
            if not self._persist_path.parent.is_dir():
                raise ConfigurationError(
                    f"persist_path {str(self._persist_path)!r}: directory {str(self._persist_path.parent)!r} "
                    "does not exist"
                )
            self._load(self._persist_path)
        bridge.add_service(service, self._serve, action="cache", owner=self)
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            bridge.on("ready", self._start_maintenance)
        else:
            self._start_maintenance()

    @property
    def cache(self) -> LocalCache:
        """The paths by name, for bridge code: ``server.cache["guilds"].get("123")``."""
        return LocalCache(self._store)

    @property
    def paths(self) -> tuple[CachePath, ...]:
        """The configured paths."""
        return self._store.paths

    def statistics(self) -> CacheStatistics:
        """Entries, bytes, hits, misses, evictions, expirations and saves since start."""
        return self._store.statistics()

    async def save(self) -> bool:
        """Write the cache to ``persist_path`` now, if it changed; whether it wrote.

        Raises :class:`ConfigurationError` without a ``persist_path``, ``OSError`` if the
        file cannot be written (the previous file is then left whole).
        """
        path = self._persist_path
        if path is None:
            raise ConfigurationError("this CacheServer has no persist_path to save to")
        async with self._save_lock:
            if not self._store.dirty:
                return False
            # Taken in one synchronous step, so the file holds the cache as it was at one
            # instant; values are immutable bytes, so the copy can be written off the loop.
            snapshot = self._store.snapshot(time.time())
            write = asyncio.ensure_future(asyncio.to_thread(_write_atomically, path, snapshot))
            try:
                await asyncio.shield(write)
            except asyncio.CancelledError:
                # A thread cannot be stopped: hold the lock until it is done, or the next
                # save could write the same temporary file at once, or an older snapshot last.
                await asyncio.wait([write])
                raise
            self._store.mark_saved(snapshot.version, snapshot.saved_at)
            log.debug("cache saved to %s (%d paths)", path, len(snapshot.paths))
            return True

    async def close(self) -> None:
        """Refuse further calls, stop the sweeps, and save a persisted cache one last time."""
        if self._store.closed:
            return
        self._store.close()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._persist_path is not None:
            await self.save()
        log.info("cache closed")

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def _serve(self, request: IncomingRequest, client: ClientInfo) -> Any:
        # Runs synchronously inside the bridge's socket loop: each call is applied whole
        # before the next message is read, which is what makes incr atomic across clients.
        try:
            return run_op(self._store, CacheOp.from_wire(request.data))
        except ZmqcrossError as exc:
            # A refused call is the caller's mistake (or a shutdown), not a bridge fault:
            # send the message alone; a bridge-side traceback would only bury it.
            log.debug("refused a cache call from %r: %s", client.id, exc.message)
            request.fail(exc.with_traceback(None))
            return None

    def _start_maintenance(self) -> None:
        if self._task is None and not self._store.closed:
            self._task = asyncio.get_running_loop().create_task(self._maintain(), name="zmqcross-cache")

    async def _maintain(self) -> None:
        loop = asyncio.get_running_loop()
        next_save = loop.time() + self._save_interval
        while True:
            wait = self._sweep_interval
            if self._persist_path is not None:
                wait = min(wait, max(0.0, next_save - loop.time()))
            await asyncio.sleep(wait)
            try:  # maintenance must outlive one bad tick (a full disk, say)
                self._store.sweep()
                if self._persist_path is not None and loop.time() >= next_save:
                    next_save = loop.time() + self._save_interval
                    await self.save()
            except Exception:
                log.exception("cache maintenance failed; retrying at the next interval")

    def _load(self, path: Path) -> None:
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            log.info("cache persist file %s does not exist yet: starting empty", path)
            return
        except OSError as exc:
            raise ConfigurationError(
                f"cannot read the cache persist file {str(path)!r}: {exc.strerror}"
            ) from None
        try:
            snapshot = decode_snapshot(raw)
        except CorruptSnapshot as exc:
            aside = path.with_name(path.name + ".corrupt")
            os.replace(path, aside)
            log.error(
                "cache persist file %s is corrupt (%s): moved it to %s, starting empty", path, exc, aside
            )
            return
        report = self._store.restore(snapshot, time.time())
        log.info(
            "cache restored %d entries from %s (saved %.1f s ago); dropped %d expired, %d evicted, %d too large",
            report.restored,
            path,
            time.time() - snapshot.saved_at,
            report.expired,
            report.evicted,
            report.too_large,
        )
        if report.unknown_paths:
            log.warning(
                "cache persist file %s has paths no longer configured, dropped: %s",
                path,
                ", ".join(repr(n) for n in report.unknown_paths),
            )


def _write_atomically(path: Path, snapshot: Snapshot) -> None:
    # Readers (and the next start) see the old file or the new one, never half of one:
    # write a sibling, make it durable, rename it over, then make the rename durable.
    data = encode_snapshot(snapshot)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # cache data may be private
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


# --------------------------------------------------------------------------- everywhere else


class ServiceCaller(Protocol):
    """Anything that can call a bridge service: a :class:`~zmqcross.Client` or a :class:`~zmqcross.Shard`."""

    async def call_service(self, service: str, data: Any, *, timeout: float | None = None) -> Any:
        """Send ``data`` to bridge service ``service`` and return its answer."""
        ...


class RemoteCachePath:
    """One path of the bridge's cache, seen from a client: ``storage.cache["guilds"]``.

    Keys are strings; values are JSON data (tuples come back as lists). Every method
    is one round trip to the bridge, applied there before it answers. Refusals raise
    :class:`CacheError` (:class:`UnknownCachePath`, :class:`CacheValueTooLarge`);
    a value that is not JSON raises :class:`SerializationError` here, before sending;
    a peer without the ``"cache"`` permission gets :class:`PermissionDenied`.
    """

    __slots__ = ("_client", "name")

    def __init__(self, client: CacheClient, name: str) -> None:
        self._client = client
        self.name = name

    async def get(self, key: str, default: Any = None) -> Any:
        """The value at ``key``, or ``default`` when it is absent or expired (counts as a use)."""
        answer = await self._call(CacheOp(op="get", path=self.name, key=check_key(key)))
        return answer["value"] if answer["found"] else default

    async def set(self, key: str, value: Any, *, ttl: float | None = None) -> None:
        """Store ``value`` for ``ttl`` seconds (None: the path's ttl); returns once the bridge applied it."""
        await self._call(
            CacheOp(op="set", path=self.name, key=check_key(key), value=value, ttl=check_ttl(ttl))
        )

    async def delete(self, key: str) -> bool:
        """Remove ``key``; whether it existed."""
        return bool(await self._call(CacheOp(op="delete", path=self.name, key=check_key(key))))

    async def has(self, key: str) -> bool:
        """Whether ``key`` is present (not counted as a use)."""
        return bool(await self._call(CacheOp(op="has", path=self.name, key=check_key(key))))

    async def clear(self) -> int:
        """Remove every entry of this path; how many there were."""
        return int(await self._call(CacheOp(op="clear", path=self.name)))

    async def keys(self) -> list[str]:
        """The keys, least recently used first."""
        return list(await self._call(CacheOp(op="keys", path=self.name)))

    async def size(self) -> int:
        """How many unexpired entries the path holds."""
        return int(await self._call(CacheOp(op="size", path=self.name)))

    async def get_many(self, keys: Iterable[str]) -> dict[str, Any]:
        """The values of the keys that are present (each counts as a use)."""
        return dict(await self._call(CacheOp(op="get_many", path=self.name, keys=check_keys(keys))))

    async def set_many(self, items: Mapping[str, Any], *, ttl: float | None = None) -> None:
        """Store every item for ``ttl`` seconds, or none of them when one is refused."""
        if not isinstance(items, Mapping):
            raise CacheError(f"set_many takes a mapping of key to value, not {type(items).__name__}")
        check_keys(list(items))  # before sending: JSON would quietly turn an int key into a string
        await self._call(CacheOp(op="set_many", path=self.name, items=dict(items), ttl=check_ttl(ttl)))

    async def incr(self, key: str, by: int = 1, *, ttl: float | None = None) -> int:
        """Atomically add ``by`` to the integer at ``key`` and return the new value.

        A missing key starts at 0 and gets ``ttl`` (else the path's); an existing one keeps
        its expiry. A value that is not an integer raises :class:`CacheError`.
        """
        op = CacheOp(op="incr", path=self.name, key=check_key(key), by=check_by(by), ttl=check_ttl(ttl))
        return int(await self._call(op))

    async def _call(self, op: CacheOp) -> Any:
        client = self._client
        try:
            return await client.caller.call_service(client.service, op.to_wire(), timeout=client.timeout)
        except SerializationError as exc:
            if exc.remote_type is not None:
                raise
            what = f"key {op.key!r}" if op.key is not _UNSET else "these items"
            raise SerializationError(
                f"cannot {op.op} {what} in cache path {op.path!r}: {exc.message}"
            ) from None

    def __repr__(self) -> str:
        return f"<RemoteCachePath {self.name!r}>"


class RemoteCache:
    """The bridge's cache paths by name, from a client; unknown names fail on first use."""

    __slots__ = ("_client",)

    def __init__(self, client: CacheClient) -> None:
        self._client = client

    def __getitem__(self, name: str) -> RemoteCachePath:
        if not isinstance(name, str) or not name:
            raise CacheError(f"a cache path name is a non-empty string, not {name!r}")
        return RemoteCachePath(self._client, name)


class CacheClient:
    """Use the bridge's cache from a machine, a dashboard, or a bot.

    ``caller`` is a :class:`~zmqcross.Client` or a bot's :class:`~zmqcross.Shard`
    (anything with ``async call_service``). ``timeout`` applies to every call (None:
    the caller's default). ``storage.cache["guilds"]`` is a :class:`RemoteCachePath`.
    """

    def __init__(
        self, caller: ServiceCaller, *, timeout: float | None = None, service: str = CACHE_SERVICE
    ) -> None:
        if not callable(getattr(caller, "call_service", None)):
            raise ConfigurationError(
                f"CacheClient needs a Client or a Shard (something with call_service), not {type(caller).__name__}"
            )
        self.caller = caller
        self.timeout = timeout
        self.service = service

    @property
    def cache(self) -> RemoteCache:
        """The paths by name: ``storage.cache["guilds"]``."""
        return RemoteCache(self)
