"""The offline Discord enforces Discord's IDENTIFY limits when asked, and shows them.

Per-bucket identify windows (``max_concurrency``, ``identify_window``: refused with op 9 d=false,
as Discord does), the session-start budget (``session_budget``: the IDENTIFY after it closes with
4004 and every live session ends), ``/_offline/identifies`` and ``/_offline/sessions``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import discord
import pytest
from test_gateway import Bot, discord_py_pointed_at, raw_gateway, ready_bot

from zmqcross.gateway import GatewayServer
from zmqcross.gateway.wire import CloseCode

pytestmark = pytest.mark.timeout(30)

GUILDS = 8
WINDOW = 1.0


async def get(server: GatewayServer, path: str) -> Any:
    base = server.api_base.split("/api/")[0]
    async with aiohttp.ClientSession() as http, http.get(base + path) as response:
        assert response.status == 200, (path, response.status, await response.text())
        return await response.json()


async def identifies(server: GatewayServer) -> list[dict[str, Any]]:
    answer = await get(server, "/_offline/identifies")
    return answer["identifies"]  # type: ignore[no-any-return]


@contextlib.asynccontextmanager
async def limited(**options: Any) -> AsyncIterator[GatewayServer]:
    async with GatewayServer(guilds=GUILDS, **options) as server:
        with discord_py_pointed_at(server):
            yield server


async def ready_together(*bots: discord.AutoShardedClient, timeout: float = 15.0) -> None:
    """Start ``bots`` at the same instant and wait until every one reaches on_ready."""
    events = []
    for bot in bots:
        ready = asyncio.Event()

        async def on_ready(ready: asyncio.Event = ready) -> None:
            ready.set()

        bot.event(on_ready)
        events.append(ready)
    starts = [asyncio.create_task(bot.start("any-token")) for bot in bots]
    try:
        async with asyncio.timeout(timeout):
            await asyncio.gather(*(e.wait() for e in events))
    finally:
        for bot in bots:
            await bot.close()
        await asyncio.wait_for(asyncio.gather(*starts, return_exceptions=True), timeout)


def bot(shard_ids: list[int], shard_count: int, cls: type[discord.AutoShardedClient] = Bot) -> Any:
    return cls(
        intents=discord.Intents.default(),
        guild_ready_timeout=0.1,
        shard_ids=shard_ids,
        shard_count=shard_count,
    )


# --- (a) today's fleet: two processes' shards of one bucket at once ----------------------------


async def test_two_clients_identifying_one_bucket_at_once_are_refused() -> None:
    """Like two cluster processes of today's fleet (no pacing across them, none within offline):
    the gateway refuses one IDENTIFY with op 9, discord.py re-identifies, and the record says why."""
    async with limited(max_concurrency=1, identify_window=WINDOW) as server:
        await ready_together(bot([0], 2), bot([1], 2))
        records = await identifies(server)
    refused = [r for r in records if not r["accepted"]]
    accepted = [r for r in records if r["accepted"]]
    assert refused, records
    assert {r["reason"] for r in refused} == {"rate_limited"}
    assert all(r["bucket"] == 0 for r in records)
    assert sorted(r["shard"][0] for r in accepted) == [0, 1]  # both got in, a window apart
    first, second = sorted(r["time"] for r in accepted)
    assert second - first >= WINDOW * 0.95
    assert server.statistics().invalid_sessions == len(refused)


async def one_in_one_refused(server: GatewayServer) -> dict[str, Any]:
    """Shards 0 and 1 of 2 IDENTIFY one after the other: the second is refused with op 9, d=false.
    Returns ``/gateway/bot``'s session_start_limit after them."""
    async with raw_gateway(server) as first, raw_gateway(server) as second:
        for gateway in (first, second):
            assert (await gateway.receive())["op"] == 10
        await first.identify([0, 2])
        assert (await first.receive())["t"] == "READY"
        await second.identify([1, 2])
        refusal = await second.receive()
        assert (refusal["op"], refusal["d"]) == (9, False)
        return dict((await get(server, "/api/v10/gateway/bot"))["session_start_limit"])


async def test_op_9_with_d_false_is_the_refusal() -> None:
    async with limited(max_concurrency=1, identify_window=10.0) as server:
        await one_in_one_refused(server)
        records = await identifies(server)
    assert [(r["shard"], r["bucket"], r["accepted"], r["reason"]) for r in records] == [
        ([0, 2], 0, True, None),
        ([1, 2], 0, False, "rate_limited"),
    ]
    assert "session_id" in records[0] and isinstance(records[0]["time"], float)


# --- (b) paced IDENTIFYs, and buckets identifying together ------------------------------------


class PacedBot(discord.AutoShardedClient):
    """discord.py's own pacing (sleep before every IDENTIFY but the first), with a short window."""

    async def before_identify_hook(self, shard_id: int | None, *, initial: bool = False) -> None:
        if not initial:
            await asyncio.sleep(WINDOW * 1.1)


async def test_paced_identifies_are_all_accepted() -> None:
    async with limited(max_concurrency=1, identify_window=WINDOW) as server:
        await ready_together(bot([0, 1, 2], 3, PacedBot))
        records = await identifies(server)
    assert [(r["shard"][0], r["accepted"]) for r in records] == [(0, True), (1, True), (2, True)]


async def test_different_buckets_identify_together() -> None:
    async with limited(max_concurrency=2, identify_window=10.0) as server:
        await ready_together(bot([0], 2), bot([1], 2))
        records = await identifies(server)
    assert sorted((r["shard"][0], r["bucket"], r["accepted"]) for r in records) == [
        (0, 0, True),
        (1, 1, True),
    ]


async def test_the_limits_are_discords_by_default_and_off_only_when_asked() -> None:
    """One bucket and a 5 s window unless told otherwise, as for most bots on Discord."""
    async with limited() as server:
        limit = await one_in_one_refused(server)
    assert limit["max_concurrency"] == 1 and limit["total"] == 1000 and limit["remaining"] == 998
    async with limited(max_concurrency=None) as server:
        await ready_together(bot([0], 2), bot([1], 2))
        records = await identifies(server)
    assert sorted((r["shard"][0], r["bucket"], r["accepted"]) for r in records) == [
        (0, None, True),
        (1, None, True),
    ]


# --- (c) the session-start budget --------------------------------------------------------------


async def test_the_identify_after_the_budget_closes_4004_and_ends_every_session() -> None:
    async with limited(session_budget=3, max_concurrency=None) as server, contextlib.AsyncExitStack() as stack:
        live = []
        for shard in range(3):
            gateway = await stack.enter_async_context(raw_gateway(server))
            assert (await gateway.receive())["op"] == 10
            await gateway.identify([shard, 4])
            assert (await gateway.receive())["t"] == "READY"
            live.append(gateway)
        limit = (await get(server, "/api/v10/gateway/bot"))["session_start_limit"]
        assert (limit["total"], limit["remaining"]) == (3, 0)
        assert 0 < limit["reset_after"] <= 86_400_000
        fourth = await stack.enter_async_context(raw_gateway(server))
        assert (await fourth.receive())["op"] == 10
        await fourth.identify([3, 4])
        assert await fourth.close_code() == CloseCode.AUTHENTICATION_FAILED
        for gateway in live:  # Discord: "all active sessions for the app will be terminated"
            while (await gateway.ws.receive(timeout=5)).type is not aiohttp.WSMsgType.CLOSE:
                pass
            assert gateway.ws.close_code == CloseCode.AUTHENTICATION_FAILED
        records = await identifies(server)
        assert [r["reason"] for r in records] == [None, None, None, "session_start_limit"]
        assert (await get(server, "/_offline/sessions"))["sessions"] == []
        limit = (await get(server, "/api/v10/gateway/bot"))["session_start_limit"]
        assert limit["remaining"] == 0


async def test_a_refused_identify_costs_the_budget_too() -> None:
    async with limited(max_concurrency=1, identify_window=10.0, session_budget=5) as server:
        limit = await one_in_one_refused(server)
    assert (limit["total"], limit["remaining"], limit["max_concurrency"]) == (5, 3, 1)


async def test_the_budget_resets_after_reset_after() -> None:
    async with limited(session_budget=1, session_reset_after=0.5, max_concurrency=None) as server:
        async with raw_gateway(server) as gateway:
            assert (await gateway.receive())["op"] == 10
            await gateway.identify([0, 1])
            assert (await gateway.receive())["t"] == "READY"
        assert (await get(server, "/api/v10/gateway/bot"))["session_start_limit"]["remaining"] == 0
        await asyncio.sleep(0.6)
        async with raw_gateway(server) as gateway:
            assert (await gateway.receive())["op"] == 10
            await gateway.identify([0, 1])
            assert (await gateway.receive())["t"] == "READY"


# --- (d) the live sessions ---------------------------------------------------------------------


async def test_sessions_lists_the_live_sessions_per_shard() -> None:
    async with limited() as server:
        async with ready_bot([0, 1], 2) as client:
            sessions = (await get(server, "/_offline/sessions"))["sessions"]
            assert [s["shard"] for s in sessions] == [[0, 2], [1, 2]]
            shards = client._AutoShardedClient__shards  # type: ignore[attr-defined]  # discord.py's Shards
            ids = {shard_id: shard.ws.session_id for shard_id, shard in shards.items()}
            assert {s["shard"][0]: s["session_id"] for s in sessions} == ids
            assert all(isinstance(s["since"], float) for s in sessions)
            accepted = {r["session_id"] for r in await identifies(server) if r["accepted"]}
            assert accepted == set(ids.values())

        async def gone() -> bool:
            return (await get(server, "/_offline/sessions"))["sessions"] == []

        async with asyncio.timeout(5):
            while not await gone():
                await asyncio.sleep(0.05)


def test_bad_limits_are_refused() -> None:
    for options in ({"max_concurrency": 0}, {"identify_window": -1.0}, {"session_budget": -1}):
        with pytest.raises(ValueError):
            GatewayServer(**options)
