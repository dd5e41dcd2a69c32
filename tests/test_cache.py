"""The shared cache: the pure store under a fake clock, then real clients on a real bridge.

Covers LRU eviction (reads refresh), per-entry and per-path expiry, delete, atomic incr
under concurrency, batches, refusals that leave the cache serving, permissions, and
persistence across a clean restart, a corrupt file and a SIGKILL of the bridge process.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from conftest import FAST, TOKEN, free_port, wait_for

from zmqcross import (
    AccessPolicy,
    Bridge,
    CacheError,
    CacheValueTooLarge,
    ConfigurationError,
    PermissionDenied,
    SerializationError,
    UnknownCachePath,
)
from zmqcross.cache import CacheClient, CacheOp, CacheServer, run_op
from zmqcross._cachestore import (
    DEFAULT_MAX_VALUE_BYTES,
    MAX_KEY_LENGTH,
    CachePath,
    CacheStore,
    CorruptSnapshot,
    decode_snapshot,
    encode_snapshot,
)

pytestmark = pytest.mark.timeout(30)

PATHS = [
    {"path": "guilds", "max_size": 3, "ttl": None},
    CachePath("short", max_size=100, ttl=0.2),
    CachePath("counters", max_size=None),
]


class FakeClock:
    """A monotonic clock that moves only when told."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def j(value: Any) -> bytes:
    """A value as the store holds it (its JSON)."""
    return orjson.dumps(value)


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 5.0, what: str = "it") -> None:
    """Await ``check`` until it is true; fail after ``timeout`` seconds (no fixed sleeps)."""
    end = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.02)


@pytest.fixture
async def make_cache() -> AsyncIterator[Callable[..., CacheServer]]:
    servers: list[CacheServer] = []

    def make(bridge: Bridge, **options: Any) -> CacheServer:
        options.setdefault("paths", PATHS)
        server = CacheServer(bridge, **options)
        servers.append(server)
        return server

    yield make
    for server in servers:
        await server.close()


# --------------------------------------------------------------------------- the pure store


def test_store_evicts_least_recently_used_and_reads_refresh() -> None:
    store = CacheStore([CachePath("p", max_size=3)], clock=FakeClock())
    for key in "abc":
        store.set("p", key, j(key))
    assert store.get("p", "a") == j("a")  # a is now the most recently used
    assert store.has("p", "b")  # a peek: b stays least recently used
    store.set("p", "d", j("d"))
    assert store.keys("p") == ["c", "a", "d"]
    store.get_many("p", ["c"])
    store.incr("p", "n")  # a write is never refused for space: it evicts instead
    assert store.keys("p") == ["d", "c", "n"]
    store.set("p", "d", j("d2"))  # overwriting refreshes too
    store.set("p", "e", j("e"))
    assert store.keys("p") == ["n", "d", "e"]
    stats = store.statistics()
    assert stats.entries == 3 and stats.evictions == 3


def test_store_expires_per_entry_and_per_path_on_the_clock() -> None:
    clock = FakeClock()
    store = CacheStore([CachePath("p", max_size=None, ttl=10), CachePath("q", max_size=None)], clock=clock)
    store.set("p", "default", j(1))  # the path's 10 s
    store.set("p", "own", j(2), ttl=3)
    store.set("q", "forever", j(3))
    store.set("q", "brief", j(4), ttl=0.5)
    clock.advance(0.5)
    assert store.get("q", "brief") is None  # gone exactly at its expiry
    assert store.size("q") == 1
    clock.advance(2.5)
    assert store.keys("p") == ["default"] and not store.has("p", "own")
    clock.advance(7)
    assert store.size("p") == 0  # exact without any sweep having run
    assert store.get("q", "forever") == j(3)
    store.set("q", "idle", j(5), ttl=1)
    clock.advance(1)
    assert store.sweep() == 1  # the sweep frees paths nobody touches
    assert store.statistics().expirations == 4


def test_store_overwrite_replaces_the_ttl_and_stale_expiry_records_stay_bounded() -> None:
    clock = FakeClock()
    store = CacheStore([CachePath("p", max_size=None)], clock=clock)
    store.set("p", "k", j(1), ttl=1)
    store.set("p", "k", j(2), ttl=100)
    clock.advance(50)
    assert store.get("p", "k") == j(2)  # the first write's expiry no longer applies
    store.set("p", "k", j(3))  # no ttl now: never expires
    clock.advance(1000)
    assert store.get("p", "k") == j(3)
    for i in range(10_000):
        store.set("p", "hot", j(i), ttl=3600)
    # Internal invariant: rewriting one key forever must not grow the expiry heap forever.
    assert len(store._paths["p"].expiries) <= 2 * store.size("p") + 64


def test_store_incr_counts_from_zero_keeps_expiry_and_refuses_non_integers() -> None:
    clock = FakeClock()
    store = CacheStore([CachePath("c", max_size=None, ttl=60)], clock=clock)
    assert store.incr("c", "n") == 1
    assert store.incr("c", "n", 41) == 42
    assert store.incr("c", "n", -50) == -8
    assert store.incr("c", "window", ttl=10) == 1
    clock.advance(9)
    assert store.incr("c", "window", ttl=10) == 2  # an existing counter keeps its expiry
    clock.advance(1)
    assert store.incr("c", "window", ttl=10) == 1  # the window ended: a fresh counter
    for value in ("7", 1.5, True, None, [1]):
        store.set("c", "odd", j(value))
        with pytest.raises(
            CacheError, match="cannot incr key 'odd' in cache path 'c': it holds .*not an integer"
        ):
            store.incr("c", "odd")
    store.set("c", "big", j(2**63 - 1))
    with pytest.raises(CacheError, match="leaves the 64-bit range"):
        store.incr("c", "big")
    assert store.get("c", "big") == j(2**63 - 1)
    with pytest.raises(CacheError, match="incr's 'by' must be an integer, not float"):
        store.incr("c", "n", 1.0)  # type: ignore[arg-type]


def test_store_refusals_change_nothing() -> None:
    store = CacheStore([CachePath("p", max_size=10)], max_value_bytes=10, clock=FakeClock())
    store.set("p", "keep", j("x"))
    version = store.version
    with pytest.raises(
        CacheValueTooLarge, match=r"is 13 bytes of JSON, over the cache's max_value_bytes of 10"
    ):
        store.set_many("p", {"a": j(1), "b": j("0123456789a")})
    with pytest.raises(CacheError, match="cache keys are strings, not int"):
        store.set_many("p", {"a": j(1), 5: j(2)})  # type: ignore[dict-item]
    with pytest.raises(CacheError, match="ttl must be a positive, finite number of seconds, not -1"):
        store.set("p", "a", j(1), ttl=-1)
    with pytest.raises(UnknownCachePath, match="no cache path 'q'; the bridge's cache paths are: 'p'"):
        store.set("q", "a", j(1))
    assert store.version == version and store.keys("p") == ["keep"]
    store.close()
    with pytest.raises(CacheError, match="the cache is closed"):
        store.get("p", "keep")


def test_snapshot_keeps_order_and_wall_clock_expiry_and_drops_what_expired() -> None:
    clock = FakeClock()
    old = CacheStore([CachePath("p", max_size=None), CachePath("gone")], clock=clock)
    old.set("p", "forever", j({"a": [1, 2]}))
    old.set("p", "soon", j(1), ttl=5)
    old.set("p", "later", j(2), ttl=60)
    old.set("gone", "x", j(0))
    raw = encode_snapshot(old.snapshot(wall_now=1_000_000.0))
    snapshot = decode_snapshot(raw)
    assert snapshot.saved_at == 1_000_000.0

    new_clock = FakeClock()
    new_clock.now = 5.0  # another process: another monotonic origin
    new = CacheStore([CachePath("p", max_size=None)], clock=new_clock)
    report = new.restore(snapshot, wall_now=1_000_010.0)  # restarted 10 s later
    assert (report.restored, report.expired, report.unknown_paths) == (2, 1, ("gone",))
    assert new.keys("p") == ["forever", "later"]
    assert new.get("p", "forever") == j({"a": [1, 2]})
    assert not new.dirty  # it holds what the file holds
    new_clock.advance(49.9)
    assert new.has("p", "later")
    new_clock.advance(0.1)
    assert not new.has("p", "later")  # 60 s after it was written, not 60 s after the restart

    small = CacheStore([CachePath("p", max_size=1)], clock=FakeClock())
    assert small.restore(snapshot, wall_now=1_000_000.0).evicted == 2
    assert small.keys("p") == ["later"]  # the most recently used survives a smaller max_size


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        (b"\x00garbage", "not JSON"),
        (b"[]", "not a zmqcross cache snapshot"),
        (b'{"format": "zmqcross-cache", "version": 99, "saved_at": 1, "paths": {}}', "snapshot version 99"),
        (b'{"format": "zmqcross-cache", "version": 1, "saved_at": "x", "paths": {}}', "'saved_at' must be"),
        (b'{"format": "zmqcross-cache", "version": 1, "saved_at": 1, "paths": {"p": [[1, 2]]}}', "not [key,"),
        (
            b'{"format": "zmqcross-cache", "version": 1, "saved_at": 1, "paths": {"p": [["k", 1, "x"]]}}',
            "expires_at",
        ),
    ],
)
def test_decode_snapshot_says_what_is_wrong(raw: bytes, problem: str) -> None:
    with pytest.raises(CorruptSnapshot, match=problem.replace("[", r"\[")):
        decode_snapshot(raw)


def test_path_configuration_is_checked_at_construction() -> None:
    assert CachePath.from_config({"name": "a", "ttl": 5}) == CachePath("a", ttl=5.0)
    bad: list[tuple[Any, str]] = [
        ({"path": "a", "size": 3}, r"unknown setting\(s\) \['size'\]"),
        ({"max_size": 3}, "exactly one of 'path' or 'name'"),
        ({"path": "a", "max_size": 0}, "max_size must be a positive integer or None, not 0"),
        ({"path": "a", "ttl": 0}, "cache path 'a': ttl must be a positive"),
        ({"path": ""}, "non-empty string"),
        ("guilds", "a cache path is a CachePath or a dict"),
    ]
    for spec, message in bad:
        with pytest.raises(ConfigurationError, match=message):
            CacheStore([spec])
    with pytest.raises(ConfigurationError, match="declared twice"):
        CacheStore([CachePath("a"), {"path": "a"}])
    with pytest.raises(ConfigurationError, match="at least one path"):
        CacheStore([])
    with pytest.raises(ConfigurationError, match="max_value_bytes must be a positive integer"):
        CacheStore([CachePath("a")], max_value_bytes=0)


def test_wire_calls_are_checked_field_by_field() -> None:
    store = CacheStore([CachePath("p")], clock=FakeClock())
    bad: list[tuple[Any, str]] = [
        ("get", 'a cache call is a JSON object like {"op": "get"'),
        ({"op": "fly", "path": "p"}, "unknown cache op 'fly'; ops are: get, set, delete"),
        ({"op": "get", "key": "k"}, "cache op 'get' needs a 'path'"),
        ({"op": "set", "path": "p", "key": "k"}, "cache op 'set' is missing field 'value'"),
        ({"op": "get", "path": "p", "key": "k", "ttl": 1}, "does not take field 'ttl'; it takes field 'key'"),
        (
            {"op": "size", "path": "p", "key": "k"},
            "cache op 'size' does not take field 'key'; it takes no other",
        ),
        ({"op": "get", "path": ["p"], "key": "k"}, "a cache path name is a string, not list"),
        ({"op": "get_many", "path": "p", "keys": "abc"}, "keys must be a list of strings, not str"),
        (
            {"op": "set_many", "path": "p", "items": [1]},
            "'items' must be an object of key to value, not a list",
        ),
        ({"op": "incr", "path": "p", "key": "k", "by": "2"}, "incr's 'by' must be an integer, not str"),
        ({"op": "set", "path": "p", "key": "k", "value": 1, "ttl": "5"}, "ttl must be a number of seconds"),
    ]
    for data, message in bad:
        with pytest.raises(CacheError, match=message.replace("(", r"\(").replace("{", r"\{")):
            run_op(store, CacheOp.from_wire(data))
    assert store.version == 0
    assert run_op(store, CacheOp.from_wire({"op": "incr", "path": "p", "key": "k", "ttl": None})) == 1


# --------------------------------------------------------------------------- through the fabric


async def test_lru_eviction_through_clients_counts_reads_as_use(bridge, make_client, make_cache) -> None:
    server = make_cache(bridge)
    a = CacheClient(await make_client(bridge, machine_id="a")).cache["guilds"]
    b = CacheClient(await make_client(bridge, machine_id="b")).cache["guilds"]
    for key in ("1", "2", "3"):
        await a.set(key, {"id": key})
    assert await b.get("1") == {"id": "1"}  # another machine's read refreshes "1"
    await b.set("4", {"id": "4"})
    assert await a.keys() == ["3", "1", "4"]
    assert await a.get("2") is None and await a.get("2", "missing") == "missing"
    assert await a.size() == 3
    assert server.cache["guilds"].keys() == ["3", "1", "4"]
    assert server.statistics().evictions == 1


async def test_ttl_expiry_per_entry_and_per_path_reaches_every_reader(
    bridge, make_client, make_cache
) -> None:
    server = make_cache(bridge, sweep_interval=0.05)
    one = CacheClient(await make_client(bridge, machine_id="one")).cache
    two = CacheClient(await make_client(bridge, machine_id="two")).cache
    await one["short"].set("path-ttl", 1)  # the path's 0.2 s
    await one["guilds"].set("own-ttl", 2, ttl=0.2)
    await one["guilds"].set("kept", 3)
    await one["short"].set("longer", 4, ttl=30)  # its own ttl wins over the path's
    assert await two["short"].get("path-ttl") == 1 and await two["guilds"].get("own-ttl") == 2

    async def both_gone() -> bool:
        return not await two["short"].has("path-ttl") and await two["guilds"].get("own-ttl") is None

    await eventually(both_gone, timeout=3, what="both entries to expire")
    assert await one["guilds"].keys() == ["kept"] and await one["short"].keys() == ["longer"]
    assert await one["short"].size() == 1

    await one["short"].set("idle", 5, ttl=0.1)
    # Nobody touches the path again: the periodic sweep alone frees the entry.
    await wait_for(
        lambda: server.statistics().entries == 2, timeout=3, what="the sweep to free an idle expired entry"
    )


async def test_delete_returns_whether_the_key_existed_and_it_is_really_gone(
    bridge, make_client, make_cache
) -> None:
    make_cache(bridge)
    writer = CacheClient(await make_client(bridge, machine_id="w")).cache["guilds"]
    reader = CacheClient(await make_client(bridge, machine_id="r")).cache["guilds"]
    await writer.set("k", {"v": 1})
    assert await reader.delete("k") is True
    assert await reader.delete("k") is False
    assert await writer.get("k") is None and not await writer.has("k")
    assert "k" not in await writer.keys() and await writer.size() == 0
    assert await writer.delete("never-there") is False


async def test_a_thousand_concurrent_incrs_from_four_clients_add_up_exactly(
    bridge, make_client, make_cache
) -> None:
    make_cache(bridge)
    paths = [CacheClient(await make_client(bridge, machine_id=f"m{i}")).cache["counters"] for i in range(4)]
    results = await asyncio.gather(*(paths[i % 4].incr("hits") for i in range(1000)))
    assert sorted(results) == list(range(1, 1001))  # each incr saw the one before it, none was lost
    assert await paths[0].get("hits") == 1000
    assert await paths[1].incr("hits", by=-1000) == 0


async def test_get_many_and_set_many(bridge, make_client, make_cache) -> None:
    make_cache(bridge)
    cache = CacheClient(await make_client(bridge)).cache
    await cache["counters"].set_many({"a": 1, "b": [True, None], "c": {"nested": "x"}})
    assert await cache["counters"].get_many(["a", "c", "missing"]) == {"a": 1, "c": {"nested": "x"}}
    assert await cache["counters"].get_many(k for k in "bz") == {"b": [True, None]}
    assert await cache["counters"].get_many([]) == {}
    await cache["counters"].set_many({"t1": 1, "t2": 2}, ttl=0.2)

    async def expired() -> bool:
        return await cache["counters"].get_many(["t1", "t2"]) == {}

    await eventually(expired, timeout=3, what="set_many's ttl to expire both")
    await cache["guilds"].set_many({str(i): i for i in range(5)})  # max_size 3: the first two are evicted
    assert await cache["guilds"].keys() == ["2", "3", "4"]


async def test_bad_inputs_get_clear_errors_and_the_cache_keeps_serving(
    bridge, make_client, make_cache
) -> None:
    make_cache(bridge, max_value_bytes=1024)
    client = await make_client(bridge)
    cache = CacheClient(client).cache
    guilds = cache["guilds"]
    calls: list[tuple[Callable[[], Awaitable[Any]], type[Exception], str]] = [
        (
            lambda: cache["nope"].get("k"),
            UnknownCachePath,
            "no cache path 'nope'; the bridge's cache paths are: 'guilds', 'short', 'counters'",
        ),
        (
            lambda: guilds.set("k", {"when": object()}),
            SerializationError,
            "cannot set key 'k' in cache path 'guilds': cannot send this value as JSON",
        ),
        (
            lambda: guilds.set("k", "x" * 2000),
            CacheValueTooLarge,
            (
                "the value for key 'k' in cache path 'guilds' is 2,002 bytes of JSON, over the cache's "
                "max_value_bytes of 1,024; DEFAULT_MAX_VALUE_BYTES is"
            ),
        ),
        (lambda: guilds.get(123), CacheError, r"cache keys are strings, not int \(123\)"),
        (lambda: guilds.set("", 1), CacheError, "cache keys must not be empty"),
        (lambda: guilds.get("k" * (MAX_KEY_LENGTH + 1)), CacheError, "over MAX_KEY_LENGTH"),
        (lambda: guilds.set("k", 1, ttl="5"), CacheError, r"ttl must be a number of seconds .*not str"),
        (lambda: guilds.set("k", 1, ttl=0), CacheError, "ttl must be a positive, finite number"),
        (lambda: guilds.set("k", 1, ttl=math.inf), CacheError, "ttl must be a positive, finite number"),
        (lambda: guilds.incr("k", by=1.5), CacheError, "incr's 'by' must be an integer, not float"),
        (lambda: guilds.incr("k", by=True), CacheError, "incr's 'by' must be an integer, not bool"),
        (lambda: guilds.set_many({1: "a"}), CacheError, "cache keys are strings, not int"),
        (lambda: guilds.get_many("abc"), CacheError, "keys must be a list of strings, not str"),
        # A confused peer writing the wire by hand gets the same care.
        (lambda: client.call_service("cache", "get me k"), CacheError, "a cache call is a JSON object like"),
        (
            lambda: client.call_service("cache", {"op": "pop", "path": "guilds"}),
            CacheError,
            "unknown cache op",
        ),
        (
            lambda: client.call_service("cache", {"op": "get", "path": "guilds", "key": "k", "default": 0}),
            CacheError,
            "cache op 'get' does not take field 'default'",
        ),
        (
            lambda: client.call_service("cache", {"op": "set", "path": "guilds", "key": 5, "value": 1}),
            CacheError,
            "cache keys are strings, not int",
        ),
    ]
    await guilds.set("word", "hello")
    for call, error, message in calls:
        with pytest.raises(error, match=message) as info:
            await call()
        # The message alone: no bridge-side traceback to wade through for a caller's mistake.
        assert info.value.remote_traceback is None
        await guilds.set("ok", 1)  # the cache keeps serving after every refusal
        assert await guilds.get("ok") == 1
    with pytest.raises(CacheError, match="cannot incr key 'word' in cache path 'guilds': it holds a str"):
        await guilds.incr("word")
    assert await guilds.get("word") == "hello"  # refused calls changed nothing
    assert await guilds.get("k") is None


async def test_a_client_without_the_cache_permission_is_denied(make_bridge, make_client, make_cache) -> None:
    bridge = await make_bridge(permissions=AccessPolicy(agents={"viewer": ["request"]}))
    make_cache(bridge)
    viewer = CacheClient(await make_client(bridge, machine_id="v", agent="viewer")).cache["guilds"]
    with pytest.raises(PermissionDenied, match="client 'v' .* may not cache; it may: request"):
        await viewer.get("k")
    with pytest.raises(PermissionDenied):
        await viewer.set("k", 1)
    bot = CacheClient(await make_client(bridge, machine_id="b")).cache["guilds"]
    await bot.set("k", 1)
    assert await bot.get("k") == 1


async def test_bridge_code_shares_the_cache_synchronously(bridge, make_client, make_cache) -> None:
    server = make_cache(bridge)
    local = server.cache["guilds"]
    remote = CacheClient(await make_client(bridge)).cache["guilds"]
    local.set("from-bridge", {"a": (1, 2)})
    assert await remote.get("from-bridge") == {"a": [1, 2]}
    await remote.set("from-client", [1])
    copy = local.get("from-client")
    copy.append(2)  # a reader's copy is its own
    assert local.get("from-client") == [1] and local.incr("n", 2) == 2
    assert local.get_many(["n", "x"]) == {"n": 2} and local.delete("n") and not local.has("n")
    assert sorted(server.cache) == ["counters", "guilds", "short"] and "guilds" in server.cache
    with pytest.raises(UnknownCachePath, match="no cache path 'nope'"):
        server.cache["nope"]
    with pytest.raises(SerializationError, match="the value for key 'k' in cache path 'guilds'"):
        local.set("k", object())

    await server.close()
    with pytest.raises(CacheError, match="the cache is closed"):
        await remote.get("from-client")
    with pytest.raises(CacheError, match="the cache is closed"):
        local.get("from-client")


async def test_acknowledged_writes_survive_a_clean_bridge_restart(make_client, tmp_path: Path) -> None:
    port, pub_port = free_port(), free_port()
    persist = tmp_path / "cache.json"

    async def start() -> tuple[Bridge, CacheServer]:
        bridge = Bridge(auth_token=TOKEN, port=port, pub_port=pub_port, **FAST)
        server = CacheServer(bridge, paths=PATHS, persist_path=persist, save_interval=3600)
        await bridge.start()
        return bridge, server

    bridge, server = await start()
    try:
        cache = CacheClient(await make_client(port=port, pub_port=pub_port, machine_id="m")).cache
        await cache["guilds"].set("settings", {"prefix": "!"})
        await cache["counters"].incr("hits", 7)
        await cache["short"].set("brief", 1)  # 0.2 s: expired by the time it is read back
        await cache["counters"].set("cooldown", True, ttl=60)
        await server.close()  # the final save; from here on every call is refused
        with pytest.raises(CacheError, match="the cache is closed"):
            await cache["guilds"].set("too-late", 1)
    finally:
        await bridge.close()
        await server.close()
    assert persist.exists() and not persist.with_name("cache.json.tmp").exists()
    assert server.statistics().saves == 1
    await asyncio.sleep(0.25)  # past "brief"'s ttl, while no bridge runs

    bridge, server = await start()
    try:
        cache = CacheClient(await make_client(port=port, pub_port=pub_port, machine_id="m2")).cache
        assert await cache["guilds"].get("settings") == {"prefix": "!"}
        assert await cache["counters"].incr("hits") == 8
        assert await cache["counters"].get("cooldown") is True
        assert await cache["short"].get("brief") is None and await cache["short"].size() == 0
        assert await cache["guilds"].get("too-late") is None
    finally:
        await bridge.close()
        await server.close()


async def test_leaving_async_with_bridge_saves_the_cache_for_the_next_bridge(
    make_client, tmp_path: Path
) -> None:
    # Nothing but the bridge's own lifetime: no server.close(), as a new user would write it.
    port, pub_port = free_port(), free_port()
    persist = tmp_path / "cache.json"
    written = {f"guild-{n}": {"prefix": "!" * (n % 3 + 1), "n": n} for n in range(50)}

    bridge = Bridge(auth_token=TOKEN, port=port, pub_port=pub_port, **FAST)
    server = CacheServer(bridge, paths=PATHS[2:], persist_path=persist, save_interval=3600)
    async with bridge:
        cache = CacheClient(await make_client(port=port, pub_port=pub_port, machine_id="m")).cache
        for key, value in written.items():
            await cache["counters"].set(key, value)  # returns once the bridge applied it
        assert await cache["counters"].incr("hits", 41) == 41
        assert not persist.exists()  # save_interval is an hour: only the close can have saved it
    assert server.statistics().saves == 1
    with pytest.raises(CacheError, match="the cache is closed"):
        server.cache["counters"].get("hits")

    bridge = Bridge(auth_token=TOKEN, port=port, pub_port=pub_port, **FAST)
    CacheServer(bridge, paths=PATHS[2:], persist_path=persist, save_interval=3600)
    async with bridge:
        cache = CacheClient(await make_client(port=port, pub_port=pub_port, machine_id="m2")).cache
        assert await cache["counters"].get_many(list(written)) == written
        assert await cache["counters"].incr("hits") == 42


async def test_a_corrupt_persist_file_is_moved_aside_and_the_cache_starts_empty(
    bridge, make_client, make_cache, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    persist = tmp_path / "cache.json"
    persist.write_bytes(b'{"format": "zmqcross-cache", "version": 1, "saved_at": 1, "paths": {"guilds": [[')
    server = make_cache(bridge, persist_path=persist)
    assert (tmp_path / "cache.json.corrupt").read_bytes().startswith(b'{"format"')
    assert not persist.exists()
    assert any(r.levelno == logging.ERROR and "is corrupt" in r.getMessage() for r in caplog.records)
    guilds = CacheClient(await make_client(bridge)).cache["guilds"]
    assert await guilds.size() == 0
    await guilds.set("k", 1)
    assert await server.save() is True
    assert decode_snapshot(persist.read_bytes()).paths["guilds"][0].key == "k"
    assert await server.save() is False  # nothing changed since


async def test_persist_options_are_checked(bridge, tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="does not exist"):
        CacheServer(bridge, paths=PATHS, persist_path=tmp_path / "missing" / "cache.json")
    with pytest.raises(ConfigurationError, match="save_interval must be a positive number of seconds"):
        CacheServer(bridge, paths=PATHS, save_interval=0)
    server = CacheServer(bridge, paths=PATHS)
    try:
        with pytest.raises(ConfigurationError, match="no persist_path"):
            await server.save()
        with pytest.raises(ConfigurationError, match="already has a 'cache' service"):
            CacheServer(bridge, paths=PATHS)
    finally:
        await server.close()
    assert DEFAULT_MAX_VALUE_BYTES == 1024 * 1024


# --------------------------------------------------------------------------- SIGKILL

CACHE_BRIDGE = """
import asyncio, sys
from zmqcross import Bridge
from zmqcross.cache import CacheServer

async def main(port, pub_port, persist, save_interval):
    bridge = Bridge(auth_token="test-token", port=port, pub_port=pub_port,
                    heartbeat_interval=0.1, heartbeat_timeout=0.5)
    CacheServer(bridge, paths=[{"path": "state", "max_size": 100}], persist_path=persist,
                save_interval=save_interval)
    await bridge.start()
    print("READY", flush=True)
    await bridge.wait_closed()

asyncio.run(main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], float(sys.argv[4])))
"""


class CacheBridgeProcess:
    """A bridge with a persisted cache in a child process, to be SIGKILLed."""

    def __init__(self, persist: Path, save_interval: float) -> None:
        self.port, self.pub_port = free_port(), free_port()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-c",
                CACHE_BRIDGE,
                str(self.port),
                str(self.pub_port),
                str(persist),
                str(save_interval),
            ],
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )

    async def wait_ready(self) -> None:
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(self.proc.stdout.readline), 20)
        assert line.strip() == "READY", f"the cache bridge printed {line!r}, exit code {self.proc.poll()}"

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)


@pytest.fixture
def cache_bridges() -> Any:
    started: list[CacheBridgeProcess] = []

    def start(persist: Path, save_interval: float) -> CacheBridgeProcess:
        proc = CacheBridgeProcess(persist, save_interval)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.kill()


@pytest.mark.timeout(60)
async def test_sigkill_loses_only_writes_newer_than_the_last_save(
    cache_bridges, make_client, tmp_path
) -> None:
    """The documented window: a write older than ``save_interval`` survives SIGKILL; a newer one may not."""
    persist = tmp_path / "cache.json"

    async def connect(proc: CacheBridgeProcess, name: str) -> Any:
        await proc.wait_ready()
        client = await make_client(port=proc.port, pub_port=proc.pub_port, machine_id=name)
        return client, CacheClient(client).cache["state"]

    def saved_keys() -> set[str]:
        try:
            return {e.key for e in decode_snapshot(persist.read_bytes()).paths["state"]}
        except (FileNotFoundError, CorruptSnapshot):
            return set()

    first = cache_bridges(persist, save_interval=0.2)
    client, state = await connect(first, "one")
    await state.set("early", {"n": 1})
    await wait_for(lambda: "early" in saved_keys(), timeout=10, what="a periodic save to include 'early'")
    await client.close()
    first.kill()

    # No save can happen in this run's window (3600 s), so its one write is lost to SIGKILL.
    second = cache_bridges(persist, save_interval=3600)
    client, state = await connect(second, "two")
    assert await state.get("early") == {"n": 1}
    await state.set("late", 2)  # acknowledged, but newer than the last save
    await client.close()
    second.kill()

    third = cache_bridges(persist, save_interval=3600)
    client, state = await connect(third, "three")
    assert await state.get("early") == {"n": 1}
    assert await state.get("late") is None


async def test_a_cancelled_save_still_leaves_one_whole_file(bridge, make_cache, tmp_path: Path) -> None:
    persist = tmp_path / "cache.json"
    server = make_cache(bridge, persist_path=persist, paths=[CachePath("big", max_size=None)])
    big = server.cache["big"]
    big.set_many({str(i): {"payload": "x" * 500, "i": i} for i in range(5000)})
    first = asyncio.ensure_future(server.save())
    await asyncio.sleep(0)  # the write thread is under way
    first.cancel()
    big.set("last", 1)
    assert await server.save() is True  # waited for the cancelled write instead of racing it
    with pytest.raises(asyncio.CancelledError):
        await first
    saved = decode_snapshot(persist.read_bytes()).paths["big"]
    assert len(saved) == 5001 and saved[-1].key == "last"
