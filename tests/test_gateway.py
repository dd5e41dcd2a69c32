"""The offline Discord: synthetic guilds (pure), REST, the Gateway with an unmodified discord.py, the CLI."""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import sys
import zlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import discord
import discord.gateway
import discord.http
import orjson
import pytest
from conftest import IDENTIFY_WINDOW, discord_py_pointed_at, offline_discord, paced_like_discord_py

import zmqcross.gateway
from zmqcross.gateway import (
    GatewayServer,
    guild_id,
    shard_guild_indices,
    shard_of,
    synthetic_guild,
)
from zmqcross.gateway.discordpy import gateway_url_for
from zmqcross.gateway.guilds import BOT_USER_ID, MEMBER_ROLE, guild_index
from zmqcross.gateway.people import member_ids
from zmqcross.gateway.wire import ZSTD_AVAILABLE, CloseCode, Identify, check_identify

GUILDS = 40
READY_TIMEOUT = 10.0


# --- helpers -----------------------------------------------------------------------------------


class Bot(discord.AutoShardedClient):
    """An unmodified client but for identify pacing: discord.py's rule (wait before every IDENTIFY
    but the first) with the tests' short window, which the offline gateways enforce."""

    async def before_identify_hook(self, shard_id: int | None, *, initial: bool = False) -> None:
        await paced_like_discord_py(initial)


@pytest.fixture
async def server() -> AsyncIterator[GatewayServer]:
    async with offline_discord(GUILDS) as srv:
        yield srv


@contextlib.asynccontextmanager
async def ready_bot(
    shard_ids: list[int] | None, shard_count: int | None, token: str = "any-token"
) -> AsyncIterator[Bot]:
    """A started :class:`Bot` that has reached on_ready; always closed on exit.

    ``shard_count`` None: discord.py asks ``/gateway/bot`` how many shards to run.
    """
    options: dict[str, Any] = {"intents": discord.Intents.default(), "guild_ready_timeout": 0.1}
    if shard_count is not None:
        options.update(shard_ids=shard_ids, shard_count=shard_count)
    bot = Bot(**options)
    ready = asyncio.Event()

    async def on_ready() -> None:
        ready.set()

    bot.event(on_ready)
    start = asyncio.create_task(bot.start(token))
    waiter = asyncio.create_task(ready.wait())
    try:
        await asyncio.wait({start, waiter}, timeout=READY_TIMEOUT, return_when=asyncio.FIRST_COMPLETED)
        if start.done():
            start.result()  # raise what stopped the client
        assert ready.is_set(), "the client did not reach on_ready"
        yield bot
    finally:
        waiter.cancel()
        await bot.close()
        await asyncio.wait_for(start, READY_TIMEOUT)


async def wait_until(predicate: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    try:
        async with asyncio.timeout(timeout):
            while not predicate():
                await asyncio.sleep(0.01)
    except TimeoutError:
        pytest.fail(f"timed out waiting for {what}")


class RawGateway:
    """A hand-driven gateway connection: what discord.py does, one message at a time."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, compress: str | None) -> None:
        self.ws = ws
        self.frames: list[aiohttp.WSMessage] = []
        self._zlib = zlib.decompressobj() if compress == "zlib-stream" else None
        self._zstd: Any = None
        if compress == "zstd-stream":
            import zstandard  # type: ignore[import-not-found, unused-ignore]

            self._zstd = zstandard.ZstdDecompressor().decompressobj()

    async def receive(self) -> dict[str, Any]:
        message = await self.ws.receive(timeout=5)
        self.frames.append(message)
        if message.type is aiohttp.WSMsgType.TEXT:
            return orjson.loads(message.data)  # type: ignore[no-any-return]
        assert message.type is aiohttp.WSMsgType.BINARY, message
        if self._zstd is not None:
            return orjson.loads(self._zstd.decompress(message.data))  # type: ignore[no-any-return]
        assert self._zlib is not None and message.data.endswith(b"\x00\x00\xff\xff")
        return orjson.loads(self._zlib.decompress(message.data))  # type: ignore[no-any-return]

    async def send(self, op: int, data: Any) -> None:
        await self.ws.send_str(orjson.dumps({"op": op, "d": data}).decode())

    async def identify(self, shard: list[int], token: str = "any-token") -> None:
        await self.send(2, {"token": token, "properties": {}, "intents": 0, "shard": shard})

    async def close_code(self) -> int | None:
        message = await self.ws.receive(timeout=5)
        assert message.type is aiohttp.WSMsgType.CLOSE, message
        return self.ws.close_code


@contextlib.asynccontextmanager
async def raw_gateway(server: GatewayServer, compress: str | None = None) -> AsyncIterator[RawGateway]:
    query = "?v=10&encoding=json" + (f"&compress={compress}" if compress else "")
    async with aiohttp.ClientSession() as http, http.ws_connect(server.gateway_url + query) as ws:
        yield RawGateway(ws, compress)


def shard_indices(shard: int, count: int = 2) -> list[int]:
    return [i for i in range(GUILDS) if shard_of(guild_id(i), count) == shard]


# --- synthetic guilds and wire decisions (pure) -------------------------------------------------


def test_public_api() -> None:
    assert zmqcross.gateway.__all__ == [
        "GatewayServer",
        "GatewayStatistics",
        "guild_id",
        "point_discord_py_at",
        "shard_guild_indices",
        "shard_of",
        "synthetic_guild",
    ]


def test_guild_ids_route_to_the_shard_of_their_timestamp() -> None:
    assert guild_id(0) == 150000000000 << 22
    assert shard_of(guild_id(12345), 16) == (150000000000 + 12345) % 16
    assert guild_index(str(guild_id(7)), 10) == 7
    assert guild_index(guild_id(7) | 1, 10) is None and guild_index(guild_id(10), 10) is None
    with pytest.raises(ValueError, match="shard id 2 is not in 0..1"):
        shard_guild_indices(2, 2, 10)


@pytest.mark.timeout(10)
def test_shard_indices_partition_twenty_thousand_guilds() -> None:
    per_shard = [shard_guild_indices(shard, 16, 20_000) for shard in range(16)]
    assert sorted(i for indices in per_shard for i in indices) == list(range(20_000))
    assert {len(indices) for indices in per_shard} == {1250}
    assert all(shard_of(guild_id(i), 16) == shard for shard in (0, 9) for i in per_shard[shard])


def test_synthetic_guild_has_roles_channels_and_the_bot() -> None:
    gid = guild_id(3)
    guild = synthetic_guild(3)
    assert guild == synthetic_guild(3) and guild is not synthetic_guild(3)
    assert guild["id"] == str(gid) and guild["name"] == "Guild 3" and guild["unavailable"] is False
    assert [(r["id"], r["name"]) for r in guild["roles"]] == [
        (str(gid), "@everyone"),
        (str(gid | 1), "Admin"),
        (str(gid | 2), "Member"),
    ]
    assert [(c["id"], c["type"]) for c in guild["channels"]] == [
        (str(gid | 10), 4),
        (str(gid | 11), 0),
        (str(gid | 12), 0),
        (str(gid | 13), 2),
    ]
    assert all(c["parent_id"] == str(gid | 10) for c in guild["channels"][1:])
    overwritten = {o["id"] for c in guild["channels"] for o in c["permission_overwrites"]}
    assert str(gid | MEMBER_ROLE) in overwritten
    voice = guild["channels"][3]
    assert voice["bitrate"] == 64000 and voice["user_limit"] == 10
    assert [m["user"]["id"] for m in guild["members"]] == [str(BOT_USER_ID)]
    assert guild["owner_id"] != str(BOT_USER_ID)


def test_identify_verdicts() -> None:
    assert check_identify({"token": "t", "shard": [1, 2]}, token=None) == Identify(1, 2)
    assert check_identify({"token": "t"}, token=None) == Identify(0, 1)
    assert check_identify({"token": "t", "shard": [2, 2]}, token=None) is CloseCode.INVALID_SHARD
    assert check_identify({"token": "t", "shard": [0, 0]}, token=None) is CloseCode.INVALID_SHARD
    assert check_identify({"token": "wrong"}, token="right") is CloseCode.AUTHENTICATION_FAILED
    assert check_identify({"token": "Bot right"}, token="right") == Identify(0, 1)
    assert check_identify([], token=None) is CloseCode.DECODE_ERROR


def test_gateway_url_pairs_with_the_api_base() -> None:
    assert gateway_url_for("http://127.0.0.1:8123/api/v10") == "ws://127.0.0.1:8123/"
    assert gateway_url_for("https://example.test/api/v10") == "wss://example.test/"
    with pytest.raises(ValueError, match="absolute http"):
        gateway_url_for("/api/v10")


# --- REST ----------------------------------------------------------------------------------------


@pytest.mark.timeout(30)
async def test_rest_answers_exact_application_json(server: GatewayServer) -> None:
    async with aiohttp.ClientSession(headers={"Authorization": "Bot x"}) as http:
        bodies = {}
        for path in ("/users/@me", "/oauth2/applications/@me", "/gateway", "/gateway/bot"):
            async with http.get(server.api_base + path) as response:
                assert response.status == 200, path
                assert response.headers["Content-Type"] == "application/json", path
                bodies[path] = await response.json()
        async with http.delete(server.api_base + "/channels/1/messages/2") as response:
            assert response.status == 404 and response.headers["Content-Type"] == "application/json"
        async with http.post(server.api_base + "/users/@me") as response:
            assert (response.status, await response.json()) == (
                405,
                {"message": "405: Method Not Allowed", "code": 0},
            )
        async with http.get(server.api_base + "/guilds/1/nothing") as response:
            assert (response.status, await response.json()) == (404, {"message": "404: Not Found", "code": 0})
    assert bodies["/users/@me"]["id"] == str(BOT_USER_ID) and bodies["/users/@me"]["bot"] is True
    assert bodies["/oauth2/applications/@me"]["owner"]["id"] != str(BOT_USER_ID)
    assert bodies["/gateway"] == {"url": server.gateway_url}
    bot_gateway = bodies["/gateway/bot"]
    assert bot_gateway["shards"] == 1 and bot_gateway["url"] == server.gateway_url
    assert set(bot_gateway["session_start_limit"]) == {"total", "remaining", "reset_after", "max_concurrency"}
    assert server.statistics().rest_requests == 7


@pytest.mark.timeout(30)
async def test_recommended_shards() -> None:
    async with (
        GatewayServer(guilds=20_000) as default,
        GatewayServer(guilds=20_000, recommended_shards=16) as hinted,
        aiohttp.ClientSession() as http,
    ):
        for srv, shards in ((default, 20), (hinted, 16)):
            async with http.get(srv.api_base + "/gateway/bot") as response:
                assert (await response.json())["shards"] == shards


# --- an unmodified discord.py --------------------------------------------------------------------


@pytest.mark.timeout(30)
async def test_discord_py_reaches_ready_holding_every_guild(server: GatewayServer) -> None:
    async with ready_bot([0, 1], 2) as bot:
        assert bot.user is not None and bot.user.id == BOT_USER_ID
        assert len(bot.guilds) == GUILDS
        for i in range(GUILDS):
            guild = bot.get_guild(guild_id(i))
            assert guild is not None and not guild.unavailable and guild.name == f"Guild {i}"
            assert len(guild.roles) == 3 and guild.default_role.id == guild.id
            kinds = sorted(str(channel.type) for channel in guild.channels)
            assert kinds == ["category", "text", "text", "voice"]
            assert guild.me is not None and guild.me.guild_permissions.administrator
        guild = bot.get_guild(guild_id(0))
        assert guild is not None
        members_only = guild.get_channel(guild.id | 12)
        member_role = guild.get_role(guild.id | MEMBER_ROLE)
        assert isinstance(members_only, discord.TextChannel) and member_role is not None
        assert members_only.overwrites_for(member_role).view_channel is True
        assert members_only.overwrites_for(guild.default_role).view_channel is False
        voice = guild.get_channel(guild.id | 13)
        assert isinstance(voice, discord.VoiceChannel) and voice.bitrate == 64000 and voice.user_limit == 10
    stats = server.statistics()
    assert stats.identifies == 2 and stats.connections_open == 0
    # discord.py's default transport: zlib-stream, or zstd-stream when zstandard is installed.
    assert (stats.zstd_connections if ZSTD_AVAILABLE else stats.zlib_connections) == 2
    assert stats.plain_connections == 0


@pytest.mark.timeout(30)
async def test_discord_py_without_a_shard_count_follows_gateway_bot() -> None:
    async with GatewayServer(guilds=GUILDS, recommended_shards=3, identify_window=IDENTIFY_WINDOW) as srv:
        with discord_py_pointed_at(srv):
            async with ready_bot(None, None) as bot:
                assert bot.shard_count == 3 and len(bot.guilds) == GUILDS
        assert srv.statistics().identifies == 3


@pytest.mark.timeout(30)
async def test_one_shard_holds_only_its_own_guilds(server: GatewayServer) -> None:
    async with ready_bot([0], 2) as bot:
        assert len(bot.guilds) == len(shard_indices(0)) == GUILDS // 2
        for i in range(GUILDS):
            on_shard_zero = shard_of(guild_id(i), 2) == 0
            assert (bot.get_guild(guild_id(i)) is not None) is on_shard_zero


@pytest.mark.timeout(30)
async def test_discord_py_resumes_after_a_forced_close(server: GatewayServer) -> None:
    async with ready_bot([0, 1], 2) as bot:
        resumed = asyncio.Event()
        updated: list[str] = []

        async def on_shard_resumed(shard_id: int) -> None:
            resumed.set()

        async def on_guild_update(before: discord.Guild, after: discord.Guild) -> None:
            updated.append(after.name)

        bot.event(on_shard_resumed)
        bot.event(on_guild_update)
        assert await server.disconnect_shard(0) == 1
        await asyncio.wait_for(resumed.wait(), 10)
        stats = server.statistics()
        assert (stats.resumes, stats.identifies, stats.connections_open) == (1, 2, 2)
        assert len(bot.guilds) == GUILDS and all(not g.unavailable for g in bot.guilds)

        index = shard_indices(0)[0]
        assert await server.dispatch(0, "GUILD_UPDATE", {**synthetic_guild(index), "name": "Renamed"}) == 1
        await wait_until(lambda: updated == ["Renamed"], "GUILD_UPDATE after the resume")
        renamed = bot.get_guild(guild_id(index))
        assert renamed is not None and renamed.name == "Renamed"


@pytest.mark.timeout(30)
async def test_discord_py_gets_4010_for_a_shard_out_of_range(server: GatewayServer) -> None:
    bot = Bot(shard_ids=[2], shard_count=2, intents=discord.Intents.default())
    try:
        with pytest.raises(discord.ConnectionClosed) as closed:
            await asyncio.wait_for(bot.start("any-token"), READY_TIMEOUT)
        assert closed.value.code == 4010
    finally:
        await bot.close()


@pytest.mark.timeout(30)
async def test_a_wrong_token_is_refused() -> None:
    async with GatewayServer(guilds=4, token="right") as srv:
        with discord_py_pointed_at(srv):
            bot = Bot(shard_ids=[0], shard_count=1, intents=discord.Intents.default())
            try:
                with pytest.raises(discord.LoginFailure):
                    await asyncio.wait_for(bot.start("wrong"), READY_TIMEOUT)
            finally:
                await bot.close()
            async with ready_bot([0], 1, token="right") as accepted:
                assert len(accepted.guilds) == 4
        async with (
            aiohttp.ClientSession(headers={"Authorization": "Bot wrong"}) as http,
            http.get(srv.api_base + "/users/@me") as response,
        ):
            assert response.status == 401 and response.headers["Content-Type"] == "application/json"
        async with raw_gateway(srv) as gateway:
            assert (await gateway.receive())["op"] == 10
            await gateway.identify([0, 1], token="wrong")
            assert await gateway.close_code() == 4004


# --- the gateway by hand -----------------------------------------------------------------------


@pytest.mark.timeout(30)
async def test_plain_json_identify_ready_and_guilds(server: GatewayServer) -> None:
    async with raw_gateway(server) as gateway:
        hello = await gateway.receive()
        assert hello["op"] == 10 and hello["d"]["heartbeat_interval"] == 41250
        await gateway.send(1, None)
        assert (await gateway.receive())["op"] == 11
        await gateway.identify([1, 2])
        ready = await gateway.receive()
        assert (ready["op"], ready["t"], ready["s"]) == (0, "READY", 1)
        data = ready["d"]
        assert data["shard"] == [1, 2] and data["resume_gateway_url"] == server.gateway_url
        assert data["guilds"] == [{"id": str(guild_id(i)), "unavailable": True} for i in shard_indices(1)]
        creates = [await gateway.receive() for _ in shard_indices(1)]
        assert [m["t"] for m in creates] == ["GUILD_CREATE"] * len(creates)
        assert [m["s"] for m in creates] == list(range(2, 2 + len(creates)))
        assert [m["d"]["id"] for m in creates] == [g["id"] for g in data["guilds"]]
        # Every member of the guild comes back: the bot, the owner and its generated users.
        first = data["guilds"][0]["id"]
        await gateway.send(8, {"guild_id": first, "query": "", "limit": 0, "nonce": "n"})
        chunk = await gateway.receive()
        assert chunk["t"] == "GUILD_MEMBERS_CHUNK" and chunk["d"]["nonce"] == "n"
        index = guild_index(first, GUILDS)
        assert index is not None
        assert [m["user"]["id"] for m in chunk["d"]["members"]] == [str(u) for u in member_ids(index)]
        assert (chunk["d"]["chunk_index"], chunk["d"]["chunk_count"]) == (0, 1)
        assert all(frame.type is aiohttp.WSMsgType.TEXT for frame in gateway.frames)
    assert server.statistics().plain_connections == 1


@pytest.mark.timeout(30)
@pytest.mark.parametrize("compress", ["zlib-stream", "zstd-stream"])
async def test_compressed_stream_shares_one_compressor(server: GatewayServer, compress: str) -> None:
    if compress == "zstd-stream":
        pytest.importorskip("zstandard")
    async with raw_gateway(server, compress) as gateway:
        assert (await gateway.receive())["op"] == 10
        await gateway.identify([0, 2])
        assert (await gateway.receive())["t"] == "READY"
        creates = [await gateway.receive() for _ in shard_indices(0)]
        assert [m["d"]["name"] for m in creates] == [f"Guild {i}" for i in shard_indices(0)]
        assert all(frame.type is aiohttp.WSMsgType.BINARY for frame in gateway.frames)


@pytest.mark.timeout(30)
async def test_resume_replays_what_was_missed(server: GatewayServer) -> None:
    async with raw_gateway(server) as gateway:
        await gateway.receive()
        await gateway.identify([1, 2])
        session_id = (await gateway.receive())["d"]["session_id"]
        last = [await gateway.receive() for _ in shard_indices(1)][-1]["s"]
        assert await server.disconnect_shard(1) == 1
        assert await gateway.close_code() == 4000
    assert await server.dispatch(1, "TYPING_START", {"channel_id": "1", "user_id": "2"}) == 0

    async with raw_gateway(server) as gateway:
        await gateway.receive()
        await gateway.send(6, {"token": "any-token", "session_id": session_id, "seq": last})
        missed, resumed = await gateway.receive(), await gateway.receive()
        assert (missed["t"], missed["s"]) == ("TYPING_START", last + 1)
        assert (resumed["t"], resumed["s"]) == ("RESUMED", last + 2)
    async with raw_gateway(server) as gateway:
        await gateway.receive()
        await gateway.send(6, {"token": "any-token", "session_id": "no-such-session", "seq": 3})
        assert await gateway.receive() == {"op": 9, "d": False, "s": None, "t": None}
    stats = server.statistics()
    assert (stats.resumes, stats.invalid_sessions) == (1, 1)


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    ("message", "code"),
    [
        ('{"op": 2, "d": {"token": "t", "shard": [2, 2]}}', CloseCode.INVALID_SHARD),
        ('{"op": 2, "d": {"token": "t", "shard": [0, 1]}}', CloseCode.SHARDING_REQUIRED),
        ('{"op": 8, "d": {"guild_id": "1"}}', CloseCode.NOT_AUTHENTICATED),
        ('{"op": 99, "d": null}', CloseCode.NOT_AUTHENTICATED),
        ("not json", CloseCode.DECODE_ERROR),
    ],
)
async def test_bad_messages_close_with_discords_codes(message: str, code: CloseCode) -> None:
    async with GatewayServer(guilds=2501) as srv, raw_gateway(srv) as gateway:
        await gateway.receive()
        await gateway.ws.send_str(message)
        assert await gateway.close_code() == code


@pytest.mark.timeout(30)
async def test_unknown_opcode_after_identify_closes_4001(server: GatewayServer) -> None:
    async with raw_gateway(server) as gateway:
        await gateway.receive()
        await gateway.identify([0, 1])
        for _ in range(GUILDS + 1):
            await gateway.receive()
        await gateway.send(99, None)
        assert await gateway.close_code() == CloseCode.UNKNOWN_OPCODE


# --- command line ------------------------------------------------------------------------------


@pytest.mark.timeout(30)
async def test_cli_prints_the_api_line_and_exits_0_on_sigterm() -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "zmqcross.gateway",
        "--guilds",
        "10",
        "--port",
        "0",
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        line = (await asyncio.wait_for(process.stdout.readline(), 20)).decode()
        match = re.fullmatch(r"ZMQCROSS_DISCORD_API=(http://127\.0\.0\.1:\d+/api/v10)\n", line)
        assert match, line
        async with aiohttp.ClientSession() as http, http.get(match[1] + "/users/@me") as response:
            assert response.status == 200
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 10) == 0
        assert await process.stdout.read() == b""
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
