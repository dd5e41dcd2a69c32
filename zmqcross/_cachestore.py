"""The shared cache's decisions: paths, LRU eviction, expiry, the wire operations, snapshots. Pure.

No sockets, no asyncio, no files. :class:`CacheStore` takes a clock and applies one
operation at a time, so eviction and expiry are tested with a fake clock;
:mod:`zmqcross.cache` is the layer over it (the wire ops, the bridge service, the
client, the persist file).

Rules, and the original cache server's bugs they avoid:

* ``delete`` deletes, and says whether the key was there.
* A path's ``max_size`` evicts its least recently used entries (``get``, ``get_many``,
  ``set``, ``set_many`` and ``incr`` count as use; ``has``, ``keys`` and ``size`` do not).
  A write is never refused for space and never dropped while answering success.
* An entry expires after its own ``ttl``, else its path's; an expired entry is gone for
  every reader at once: every operation first removes what has expired on its path, so
  ``size()`` and ``keys()`` are exact without waiting for a sweep.
* An operation that is refused (bad key, bad ttl, value too large, unknown path)
  changes nothing, also in batches: ``set_many`` checks every item before storing one.
* Values are stored as their encoded JSON bytes: a value's size is exact, and what a
  reader gets back can never be changed by another reader mutating its copy.
"""

from __future__ import annotations

import heapq
import math
import reprlib
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from .errors import CacheError, CacheValueTooLarge, ConfigurationError, UnknownCachePath
from .protocol import load

__all__ = [
    "COUNTER_MAX",
    "COUNTER_MIN",
    "DEFAULT_MAX_SIZE",
    "DEFAULT_MAX_VALUE_BYTES",
    "MAX_BATCH_KEYS",
    "MAX_KEY_LENGTH",
    "CachePath",
    "CacheStatistics",
    "CacheStore",
    "CorruptSnapshot",
    "RestoreReport",
    "Snapshot",
    "SnapshotEntry",
    "check_by",
    "check_key",
    "check_keys",
    "check_ttl",
    "decode_snapshot",
    "encode_snapshot",
    "json_fragment",
    "kind_of",
]

DEFAULT_MAX_SIZE = 10_000
"""Entries a path holds when its config names no ``max_size``; ``None`` there means unbounded."""

DEFAULT_MAX_VALUE_BYTES = 1024 * 1024
"""Largest value, as encoded JSON, a cache accepts unless ``max_value_bytes`` says otherwise."""

MAX_KEY_LENGTH = 512
"""Longest cache key (and path name), in characters."""

MAX_BATCH_KEYS = 10_000
"""Most keys one ``get_many`` or ``set_many`` may carry."""

COUNTER_MIN = -(2**63)
COUNTER_MAX = 2**63 - 1
"""The range of an ``incr`` counter (and of its step): a signed 64-bit integer, as JSON peers can hold."""

SNAPSHOT_FORMAT = "zmqcross-cache"
SNAPSHOT_VERSION = 1

_HEAP_SLACK = 64
# Overwritten entries leave stale expiry records in a path's heap; it is rebuilt once it
# holds more than twice the live entries plus this, so rewriting one key forever cannot
# grow it without bound.

_short = reprlib.Repr()
_short.maxstring = 60
_short.maxother = 60


def _show(value: object) -> str:
    return _short.repr(value)


# --------------------------------------------------------------------------- checks


def check_key(key: object) -> str:
    """``key`` if it is a usable cache key; else :class:`CacheError` saying why."""
    if not isinstance(key, str):
        raise CacheError(
            f"cache keys are strings, not {type(key).__name__} ({_show(key)}); convert it, e.g. str(key)"
        )
    if not key:
        raise CacheError("cache keys must not be empty")
    if len(key) > MAX_KEY_LENGTH:
        raise CacheError(f"a cache key is {len(key):,} characters, over MAX_KEY_LENGTH ({MAX_KEY_LENGTH})")
    return key


def check_keys(keys: object) -> list[str]:
    """A list of usable keys, at most :data:`MAX_BATCH_KEYS` of them; else :class:`CacheError`."""
    if isinstance(keys, (str, bytes)) or not isinstance(keys, Iterable):
        raise CacheError(f"keys must be a list of strings, not {type(keys).__name__} ({_show(keys)})")
    keys = list(keys)
    if len(keys) > MAX_BATCH_KEYS:
        raise CacheError(f"{len(keys):,} keys in one call, over MAX_BATCH_KEYS ({MAX_BATCH_KEYS:,})")
    return [check_key(key) for key in keys]


def check_ttl(ttl: object) -> float | None:
    """``ttl`` in seconds as a float (None stays None: the path's default); else :class:`CacheError`."""
    if ttl is None:
        return None
    if isinstance(ttl, bool) or not isinstance(ttl, (int, float)):
        raise CacheError(
            f"ttl must be a number of seconds or None (the path's default), not {type(ttl).__name__} "
            f"({_show(ttl)})"
        )
    if not (math.isfinite(ttl) and ttl > 0):
        raise CacheError(f"ttl must be a positive, finite number of seconds, not {ttl!r}")
    return float(ttl)


def check_by(by: object) -> int:
    """``by`` if it is a usable ``incr`` step (an integer in the counter range); else :class:`CacheError`."""
    if isinstance(by, bool) or not isinstance(by, int):
        raise CacheError(f"incr's 'by' must be an integer, not {type(by).__name__} ({_show(by)})")
    if not COUNTER_MIN <= by <= COUNTER_MAX:
        raise CacheError(f"incr's 'by' is {by}, outside the 64-bit counter range")
    return by


# --------------------------------------------------------------------------- config


@dataclass(frozen=True, slots=True)
class CachePath:
    """One named cache area on the bridge, e.g. ``CachePath("cooldowns", max_size=50_000, ttl=60)``.

    ``max_size`` is how many entries it keeps before evicting the least recently used
    (``None``: unbounded, only for paths whose keys are bounded by nature). ``ttl`` is the
    seconds an entry lives unless its write names its own ``ttl`` (``None``: forever).
    """

    name: str
    max_size: int | None = DEFAULT_MAX_SIZE
    ttl: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name or len(self.name) > MAX_KEY_LENGTH:
            raise ConfigurationError(
                f"a cache path's name must be a non-empty string of at most {MAX_KEY_LENGTH} characters, "
                f"not {_show(self.name)}"
            )
        size = self.max_size
        if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
            raise ConfigurationError(
                f"cache path {self.name!r}: max_size must be a positive integer or None, not {size!r}"
            )
        try:
            object.__setattr__(self, "ttl", check_ttl(self.ttl))
        except CacheError as exc:
            raise ConfigurationError(f"cache path {self.name!r}: {exc.message}") from None

    @classmethod
    def from_config(cls, spec: CachePath | Mapping[str, Any]) -> CachePath:
        """A path from itself or from ``{"path": name, "max_size": ..., "ttl": ...}`` (``"name"`` also works)."""
        if isinstance(spec, CachePath):
            return spec
        if not isinstance(spec, Mapping):
            raise ConfigurationError(
                f'a cache path is a CachePath or a dict like {{"path": "guilds", "max_size": 100, "ttl": None}}, '
                f"not {type(spec).__name__}"
            )
        unknown = set(spec) - {"path", "name", "max_size", "ttl"}
        if unknown:
            raise ConfigurationError(
                f"cache path {dict(spec)!r}: unknown setting(s) {sorted(unknown)}; "
                "settings are 'path', 'max_size' and 'ttl'"
            )
        if ("path" in spec) == ("name" in spec):
            raise ConfigurationError(
                f"cache path {dict(spec)!r}: name it with exactly one of 'path' or 'name'"
            )
        name = spec["path"] if "path" in spec else spec["name"]
        return cls(name, spec.get("max_size", DEFAULT_MAX_SIZE), spec.get("ttl"))


@dataclass(frozen=True, slots=True)
class CacheStatistics:
    """A snapshot of a cache's counters since it started (``saves`` and after: its persist file)."""

    entries: int
    value_bytes: int
    hits: int
    misses: int
    writes: int
    evictions: int
    expirations: int
    saves: int
    last_saved_at: float | None
    unsaved_changes: bool


# --------------------------------------------------------------------------- the store


@dataclass(frozen=True, slots=True)
class _Entry:
    data: bytes  # the value's JSON
    expires_at: float | None  # on the store's clock
    seq: int  # the store version that wrote it: tells a live heap record from a stale one


@dataclass(slots=True)
class _Path:
    config: CachePath
    entries: OrderedDict[str, _Entry] = field(default_factory=OrderedDict)  # least recently used first
    expiries: list[tuple[float, int, str]] = field(default_factory=list)  # heap of (expires_at, seq, key)


@dataclass(frozen=True, slots=True)
class SnapshotEntry:
    """One entry as it is persisted: ``expires_at`` is wall-clock time (``time.time()``) or None."""

    key: str
    data: bytes
    expires_at: float | None


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A store's content at one instant, least recently used first in each path."""

    saved_at: float
    version: int
    paths: Mapping[str, tuple[SnapshotEntry, ...]]


@dataclass(frozen=True, slots=True)
class RestoreReport:
    """What :meth:`CacheStore.restore` did with a snapshot's entries."""

    restored: int
    expired: int
    evicted: int
    unknown_paths: tuple[str, ...]
    too_large: int


class CacheStore:
    """Every path's entries, with LRU eviction and expiry. Not thread-safe: one loop owns it.

    ``clock`` returns seconds on a monotonic scale (default :func:`time.monotonic`); it
    is injected so tests can move time. Values go in and out as encoded JSON bytes; the
    methods mirror the wire ops of :class:`zmqcross.cache.CacheOp`.
    """

    def __init__(
        self,
        paths: Iterable[CachePath | Mapping[str, Any]],
        *,
        max_value_bytes: int = DEFAULT_MAX_VALUE_BYTES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if isinstance(max_value_bytes, bool) or not isinstance(max_value_bytes, int) or max_value_bytes < 1:
            raise ConfigurationError(f"max_value_bytes must be a positive integer, not {max_value_bytes!r}")
        self._paths: dict[str, _Path] = {}
        for spec in paths:
            config = CachePath.from_config(spec)
            if config.name in self._paths:
                raise ConfigurationError(f"cache path {config.name!r} is declared twice")
            self._paths[config.name] = _Path(config)
        if not self._paths:
            raise ConfigurationError(
                'a cache needs at least one path, e.g. paths=[{"path": "guilds", "max_size": 1000}]'
            )
        self.max_value_bytes = max_value_bytes
        self._clock = clock
        self._closed = False
        self._version = 0
        self._saved_version = 0
        self._value_bytes = 0
        self._counts = {"hits": 0, "misses": 0, "writes": 0, "evictions": 0, "expirations": 0, "saves": 0}
        self._last_saved_at: float | None = None

    # ------------------------------------------------------------------ state

    @property
    def paths(self) -> tuple[CachePath, ...]:
        """The configured paths, in declaration order."""
        return tuple(p.config for p in self._paths.values())

    @property
    def version(self) -> int:
        """Grows with every change; a snapshot records the version it saw."""
        return self._version

    @property
    def dirty(self) -> bool:
        """Whether something changed since the last :meth:`mark_saved`."""
        return self._version != self._saved_version

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called (every operation is then refused)."""
        return self._closed

    def close(self) -> None:
        """Refuse every later operation, so nothing is acknowledged after a final save."""
        self._closed = True

    def mark_saved(self, version: int, saved_at: float) -> None:
        """Record that a snapshot of ``version`` reached the persist file at wall time ``saved_at``."""
        self._saved_version = max(self._saved_version, version)
        self._last_saved_at = saved_at
        self._counts["saves"] += 1

    def statistics(self) -> CacheStatistics:
        """Counters since this store was made."""
        c = self._counts
        return CacheStatistics(
            entries=sum(len(p.entries) for p in self._paths.values()),
            value_bytes=self._value_bytes,
            hits=c["hits"],
            misses=c["misses"],
            writes=c["writes"],
            evictions=c["evictions"],
            expirations=c["expirations"],
            saves=c["saves"],
            last_saved_at=self._last_saved_at,
            unsaved_changes=self.dirty,
        )

    # ------------------------------------------------------------------ operations

    def get(self, path: str, key: str) -> bytes | None:
        """The value's JSON, or None when absent; a hit makes the entry most recently used."""
        p = self._open(path)
        key = check_key(key)
        entry = p.entries.get(key)
        if entry is None:
            self._counts["misses"] += 1
            return None
        p.entries.move_to_end(key)
        self._counts["hits"] += 1
        return entry.data

    def get_many(self, path: str, keys: Iterable[str]) -> dict[str, bytes]:
        """The JSON of every key found (each becomes recently used); absent keys are left out."""
        p = self._open(path)
        found: dict[str, bytes] = {}
        for key in check_keys(keys):
            entry = p.entries.get(key)
            if entry is None:
                self._counts["misses"] += 1
                continue
            p.entries.move_to_end(key)
            self._counts["hits"] += 1
            found[key] = entry.data
        return found

    def set(self, path: str, key: str, data: bytes, *, ttl: float | None = None) -> None:
        """Store ``data`` (a value's JSON) under ``key``, evicting the least recently used if full."""
        p = self._open(path)
        key = check_key(key)
        expires_at = self._expiry(p, check_ttl(ttl))
        self._check_size(p, key, data)
        self._put(p, key, data, expires_at)

    def set_many(self, path: str, items: Mapping[str, bytes], *, ttl: float | None = None) -> None:
        """Store every item, or (when one is refused) none of them."""
        p = self._open(path)
        if not isinstance(items, Mapping):
            raise CacheError(f"items must be a mapping of key to value, not {type(items).__name__}")
        if len(items) > MAX_BATCH_KEYS:
            raise CacheError(f"{len(items):,} items in one call, over MAX_BATCH_KEYS ({MAX_BATCH_KEYS:,})")
        expires_at = self._expiry(p, check_ttl(ttl))
        for key, data in items.items():  # all checks first: a refused batch changes nothing
            self._check_size(p, check_key(key), data)
        for key, data in items.items():
            self._put(p, key, data, expires_at)

    def delete(self, path: str, key: str) -> bool:
        """Remove ``key``; whether it was there (an expired entry was not)."""
        p = self._open(path)
        entry = p.entries.pop(check_key(key), None)
        if entry is None:
            return False
        self._value_bytes -= len(entry.data)
        self._version += 1
        return True

    def has(self, path: str, key: str) -> bool:
        """Whether ``key`` is present and unexpired (not counted as a use)."""
        return check_key(key) in self._open(path).entries

    def clear(self, path: str) -> int:
        """Remove every entry of ``path``; how many there were."""
        p = self._open(path)
        removed = len(p.entries)
        if removed:
            self._value_bytes -= sum(len(e.data) for e in p.entries.values())
            p.entries.clear()
            p.expiries.clear()
            self._version += 1
        return removed

    def keys(self, path: str) -> list[str]:
        """The unexpired keys, least recently used first."""
        return list(self._open(path).entries)

    def size(self, path: str) -> int:
        """How many unexpired entries ``path`` holds."""
        return len(self._open(path).entries)

    def incr(self, path: str, key: str, by: int = 1, *, ttl: float | None = None) -> int:
        """Add ``by`` to the integer at ``key`` (a missing key counts as 0); the new value.

        ``ttl`` (else the path's) applies only when this creates the key: an existing
        counter keeps its expiry, so hitting a rate-limit counter does not extend its window.
        """
        p = self._open(path)
        key = check_key(key)
        by = check_by(by)
        ttl = check_ttl(ttl)
        entry = p.entries.get(key)
        if entry is None:
            current, expires_at = 0, self._expiry(p, ttl)
        else:
            current = load(entry.data)
            if isinstance(current, bool) or not isinstance(current, int):
                raise CacheError(
                    f"cannot incr key {key!r} in cache path {path!r}: it holds {kind_of(current)}, "
                    "not an integer"
                )
            expires_at = entry.expires_at
        total = current + by
        if not COUNTER_MIN <= total <= COUNTER_MAX:
            raise CacheError(
                f"cannot incr key {key!r} in cache path {path!r}: {current} + {by} leaves the 64-bit range"
            )
        self._put(p, key, orjson.dumps(total), expires_at)
        return total

    def sweep(self) -> int:
        """Remove every expired entry of every path; how many. Frees memory of idle paths."""
        before = self._counts["expirations"]
        now = self._clock()
        for p in self._paths.values():
            self._expire(p, now)
        return self._counts["expirations"] - before

    # ------------------------------------------------------------------ snapshots

    def snapshot(self, wall_now: float) -> Snapshot:
        """Every unexpired entry, with expiries turned into wall-clock times relative to ``wall_now``."""
        now = self._clock()
        paths: dict[str, tuple[SnapshotEntry, ...]] = {}
        for name, p in self._paths.items():
            self._expire(p, now)
            paths[name] = tuple(
                SnapshotEntry(key, e.data, None if e.expires_at is None else wall_now + (e.expires_at - now))
                for key, e in p.entries.items()
            )
        return Snapshot(saved_at=wall_now, version=self._version, paths=paths)

    def restore(self, snapshot: Snapshot, wall_now: float) -> RestoreReport:
        """Put a snapshot's entries back (meant for an empty store), keeping their wall-clock expiry.

        A store that had no unsaved changes has none after it: it holds what the file holds.

        Entries already expired at ``wall_now``, of paths no longer configured, or over
        ``max_value_bytes`` are dropped; a smaller ``max_size`` evicts the least recent.
        """
        now = self._clock()
        was_clean = not self.dirty
        restored = expired = too_large = 0
        evictions_before = self._counts["evictions"]
        unknown = []
        for name, entries in snapshot.paths.items():
            p = self._paths.get(name)
            if p is None:
                unknown.append(name)
                continue
            for entry in entries:
                if entry.expires_at is not None and entry.expires_at <= wall_now:
                    expired += 1
                elif len(entry.data) > self.max_value_bytes:
                    too_large += 1
                else:
                    expires_at = None if entry.expires_at is None else now + (entry.expires_at - wall_now)
                    self._put(p, entry.key, entry.data, expires_at)
                    restored += 1
        if was_clean:
            self._saved_version = self._version  # the store now holds what the file holds
        return RestoreReport(
            restored=restored,
            expired=expired,
            evicted=self._counts["evictions"] - evictions_before,
            unknown_paths=tuple(unknown),
            too_large=too_large,
        )

    # ------------------------------------------------------------------ internals

    def _open(self, name: str) -> _Path:
        if self._closed:
            raise CacheError("the cache is closed (the bridge is shutting down); nothing was changed")
        p = self._paths.get(name) if isinstance(name, str) else None
        if p is None:
            if not isinstance(name, str):
                raise CacheError(f"a cache path name is a string, not {type(name).__name__} ({_show(name)})")
            known = ", ".join(repr(n) for n in self._paths)
            raise UnknownCachePath(f"no cache path {name!r}; the bridge's cache paths are: {known}")
        # Expiry is applied before anything reads or counts, so no reader ever sees an
        # entry past its time, whether or not the periodic sweep has run.
        self._expire(p, self._clock())
        return p

    def _expiry(self, p: _Path, ttl: float | None) -> float | None:
        ttl = ttl if ttl is not None else p.config.ttl
        return None if ttl is None else self._clock() + ttl

    def _check_size(self, p: _Path, key: str, data: bytes) -> None:
        if len(data) > self.max_value_bytes:
            default = (
                f"; DEFAULT_MAX_VALUE_BYTES is {DEFAULT_MAX_VALUE_BYTES:,}"
                if self.max_value_bytes != DEFAULT_MAX_VALUE_BYTES
                else " (DEFAULT_MAX_VALUE_BYTES)"
            )
            raise CacheValueTooLarge(
                f"the value for key {key!r} in cache path {p.config.name!r} is {len(data):,} bytes of JSON, "
                f"over the cache's max_value_bytes of {self.max_value_bytes:,}{default}; nothing was stored"
            )

    def _put(self, p: _Path, key: str, data: bytes, expires_at: float | None) -> None:
        self._version += 1
        self._counts["writes"] += 1
        old = p.entries.get(key)
        if old is not None:
            self._value_bytes -= len(old.data)
        p.entries[key] = _Entry(data, expires_at, self._version)
        p.entries.move_to_end(key)
        self._value_bytes += len(data)
        if expires_at is not None:
            heapq.heappush(p.expiries, (expires_at, self._version, key))
            if len(p.expiries) > 2 * len(p.entries) + _HEAP_SLACK:
                p.expiries = [
                    (e.expires_at, e.seq, k) for k, e in p.entries.items() if e.expires_at is not None
                ]
                heapq.heapify(p.expiries)
        limit = p.config.max_size
        while limit is not None and len(p.entries) > limit:
            _, evicted = p.entries.popitem(last=False)
            self._value_bytes -= len(evicted.data)
            self._counts["evictions"] += 1

    def _expire(self, p: _Path, now: float) -> None:
        heap = p.expiries
        while heap and heap[0][0] <= now:
            _, seq, key = heapq.heappop(heap)
            entry = p.entries.get(key)
            if entry is not None and entry.seq == seq:  # else overwritten, deleted or evicted since
                del p.entries[key]
                self._value_bytes -= len(entry.data)
                self._counts["expirations"] += 1


def kind_of(value: object) -> str:
    """What a JSON value is, for error messages: ``null``, ``a boolean (true)``, ``a str ('x')``."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    return f"a {type(value).__name__} ({_show(value)})"


# orjson.Fragment (orjson >= 3.9.14) embeds stored JSON in an answer or a snapshot without
# decoding and re-encoding it; with an older orjson the value is decoded: slower, same result.
json_fragment: Callable[[bytes], Any] = getattr(orjson, "Fragment", orjson.loads)
"""Wrap a stored value's JSON so :func:`orjson.dumps` embeds it as it is."""


# --------------------------------------------------------------------------- persist format


class CorruptSnapshot(ValueError):
    """A persist file that is not a cache snapshot this version can read."""


def encode_snapshot(snapshot: Snapshot) -> bytes:
    """The persist file's bytes: ``{"format", "version", "saved_at", "paths": {name: [[key, value, expires_at]]}}``."""
    return orjson.dumps(
        {
            "format": SNAPSHOT_FORMAT,
            "version": SNAPSHOT_VERSION,
            "saved_at": snapshot.saved_at,
            "paths": {
                name: [[e.key, json_fragment(e.data), e.expires_at] for e in entries]
                for name, entries in snapshot.paths.items()
            },
        }
    )


def decode_snapshot(raw: bytes) -> Snapshot:
    """Read a persist file's bytes; :class:`CorruptSnapshot` saying what is wrong with them."""
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise CorruptSnapshot(f"not JSON ({exc})") from None
    if not isinstance(doc, dict) or doc.get("format") != SNAPSHOT_FORMAT:
        raise CorruptSnapshot(f'not a zmqcross cache snapshot (no "format": {SNAPSHOT_FORMAT!r})')
    if doc.get("version") != SNAPSHOT_VERSION:
        raise CorruptSnapshot(
            f"snapshot version {doc.get('version')!r}; this zmqcross reads {SNAPSHOT_VERSION}"
        )
    saved_at, paths = doc.get("saved_at"), doc.get("paths")
    if not isinstance(saved_at, (int, float)) or isinstance(saved_at, bool) or not isinstance(paths, dict):
        raise CorruptSnapshot("'saved_at' must be a number and 'paths' an object")
    decoded: dict[str, tuple[SnapshotEntry, ...]] = {}
    for name, entries in paths.items():
        if not isinstance(entries, list):
            raise CorruptSnapshot(f"path {name!r}: entries must be a list")
        rows = []
        for row in entries:
            if not (isinstance(row, list) and len(row) == 3 and isinstance(row[0], str)):
                raise CorruptSnapshot(
                    f"path {name!r}: an entry is not [key, value, expires_at]: {_show(row)}"
                )
            expires = row[2]
            if expires is not None and (isinstance(expires, bool) or not isinstance(expires, (int, float))):
                raise CorruptSnapshot(f"path {name!r}, key {row[0]!r}: expires_at is {_show(expires)}")
            rows.append(
                SnapshotEntry(row[0], orjson.dumps(row[1]), None if expires is None else float(expires))
            )
        decoded[name] = tuple(rows)
    return Snapshot(saved_at=float(saved_at), version=0, paths=decoded)
