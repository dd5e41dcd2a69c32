"""The offline Discord runs a bot's commands: a real discord.py ``AutoShardedBot`` against its REST
routes, member chunks and the ``/_offline`` test endpoints (issue 15, item 3)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import discord
import discord.gateway
import discord.http
import pytest
import yarl
from conftest import offline_discord, paced_like_discord_py
from discord.ext import commands

from zmqcross.gateway import GatewayServer, guild_id, shard_of
from zmqcross.gateway.guilds import BOT_USER_ID, OWNER_USER_ID, TEXT_CHANNEL, member_count
from zmqcross.gateway.people import generated_user_id, member_chunks, member_ids
from zmqcross.gateway.ratelimit import RateLimiter
from zmqcross.gateway.wire import for_intents

GUILDS = 8
READY_TIMEOUT = 10.0


class PingBot(commands.AutoShardedBot):
    """discord.py's example patterns: a prefix command, slash commands, the message_content intent."""

    def __init__(self, *, intents: discord.Intents | None = None) -> None:
        if intents is None:
            intents = discord.Intents.default()
            intents.message_content = True
            intents.members = True
        super().__init__(
            command_prefix="!",
            intents=intents,
            shard_ids=[0, 1],
            shard_count=2,
            guild_ready_timeout=0.1,
            chunk_guilds_at_startup=False,
        )
        self.seen: list[discord.Message] = []

        @self.command()
        async def ping(ctx: commands.Context[PingBot]) -> None:
            await ctx.reply("pong")

        @self.tree.command(description="Say hello")
        async def hello(interaction: discord.Interaction) -> None:
            await interaction.response.send_message(f"hi {interaction.user.name}")

        @self.tree.command(description="Think, then answer")
        async def slow(interaction: discord.Interaction) -> None:
            await interaction.response.defer(thinking=True)
            await interaction.edit_original_response(content="done thinking")
            await interaction.followup.send("and one more thing", embed=discord.Embed(title="extra"))

    async def before_identify_hook(self, shard_id: int | None, *, initial: bool = False) -> None:
        await paced_like_discord_py(initial)

    async def on_message(self, message: discord.Message) -> None:
        self.seen.append(message)
        await self.process_commands(message)


@pytest.fixture
async def server() -> AsyncIterator[GatewayServer]:
    async with offline_discord(GUILDS) as srv:
        yield srv


@contextlib.asynccontextmanager
async def running(bot: PingBot) -> AsyncIterator[PingBot]:
    ready = asyncio.Event()

    async def on_ready() -> None:
        ready.set()

    bot.add_listener(on_ready)
    start = asyncio.create_task(bot.start("any-token"))
    waiter = asyncio.create_task(ready.wait())
    try:
        await asyncio.wait({start, waiter}, timeout=READY_TIMEOUT, return_when=asyncio.FIRST_COMPLETED)
        if start.done():
            start.result()
        assert ready.is_set(), "the bot did not reach on_ready"
        yield bot
    finally:
        waiter.cancel()
        await bot.close()
        await asyncio.wait_for(start, READY_TIMEOUT)


class Offline:
    """The ``/_offline`` endpoints, as a test uses them."""

    def __init__(self, server: GatewayServer, http: aiohttp.ClientSession) -> None:
        self.base = yarl.URL(server.api_base).with_path("/")
        self.http = http

    async def dispatch(self, guild: int, event: str, data: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        body = {"guild_id": str(guild), "event": event, "data": data}
        async with self.http.post(self.base / "_offline/dispatch", json=body) as response:
            return response.status, await response.json()

    async def messages(self, **query: str) -> list[dict[str, Any]]:
        async with self.http.get(self.base / "_offline/messages", params=query) as response:
            assert response.status == 200
            return list((await response.json())["messages"])

    async def wait_for(
        self, predicate: Callable[[dict[str, Any]], bool], what: str, **query: str
    ) -> dict[str, Any]:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            found = [m for m in await self.messages(**query) if predicate(m)]
            if found:
                return found[0]
            await asyncio.sleep(0.02)
        pytest.fail(f"timed out waiting for {what}; the bot sent {await self.messages()}")


@pytest.fixture
async def offline(server: GatewayServer) -> AsyncIterator[Offline]:
    async with aiohttp.ClientSession() as http:
        yield Offline(server, http)


def general(index: int) -> int:
    return guild_id(index) | TEXT_CHANNEL


# --- pure parts ---------------------------------------------------------------------------------


def test_members_are_the_bot_the_owner_and_generated_users() -> None:
    assert member_ids(0) == [BOT_USER_ID, OWNER_USER_ID, generated_user_id(0)]
    assert len(member_ids(57)) == member_count(57) == 60
    chunk = member_chunks(3, query="USER", limit=2, nonce="x")
    assert [m["user"]["username"] for m in chunk[0]["members"]] == ["user3", "user4"]
    by_id = member_chunks(3, user_ids=[BOT_USER_ID, 12345])[0]
    assert [m["user"]["id"] for m in by_id["members"]] == [str(BOT_USER_ID)]
    assert by_id["not_found"] == ["12345"]


def test_rate_limiter_counts_a_window_per_channel_then_answers_429() -> None:
    limiter = RateLimiter()
    route = "/channels/{channel_id}/messages"
    verdicts = [limiter.take("POST", route, "1", 100.0) for _ in range(6)]
    assert [v.remaining for v in verdicts[:5]] == [4, 3, 2, 1, 0]
    assert verdicts[5].retry_after == pytest.approx(5.0)
    assert verdicts[5].headers()["Via"]  # without it discord.py takes a 429 for a Cloudflare ban
    assert limiter.take("POST", route, "2", 100.0).remaining == 4  # another channel, another bucket
    assert limiter.take("POST", route, "1", 105.0).remaining == 4  # the window is over


def test_content_is_hidden_from_sessions_without_message_content() -> None:
    message = {"content": "!ping", "embeds": [{}], "author": {"id": "5"}, "mentions": []}
    guild_messages = 1 << 9
    assert for_intents("MESSAGE_CREATE", message, 0, bot_id="1") is None
    assert for_intents("MESSAGE_CREATE", message, guild_messages, bot_id="1")["content"] == ""
    assert for_intents("MESSAGE_CREATE", message, guild_messages | 1 << 15, bot_id="1") == message
    mentioning = {**message, "mentions": [{"id": "1"}]}
    assert for_intents("MESSAGE_CREATE", mentioning, guild_messages, bot_id="1") == mentioning


# --- a real discord.py bot ------------------------------------------------------------------------


@pytest.mark.timeout(30)
async def test_ping_on_each_shard_is_answered_with_pong(server: GatewayServer, offline: Offline) -> None:
    async with running(PingBot()) as bot:
        for index in (0, 1):  # consecutive guilds are on different shards
            gid = guild_id(index)
            status, answer = await offline.dispatch(gid, "MESSAGE_CREATE", {"content": "!ping"})
            assert status == 200, answer
            assert (answer["shard_id"], answer["shard_count"], answer["delivered"]) == (shard_of(gid, 2), 2, 1)
            said = answer["data"]
            assert said["channel_id"] == str(general(index)) and said["author"]["bot"] is False
            pong = await offline.wait_for(
                lambda m, said=said: m["reply_to"] == said["id"], f"pong in guild {index}", guild_id=str(gid)
            )
            assert (pong["content"], pong["kind"], pong["author"]["id"]) == ("pong", "message", str(BOT_USER_ID))
            assert pong["channel_id"] == str(general(index))
        # Discord announces the bot's own messages on the gateway, so discord.py sees them too.
        assert sum(m.author == bot.user and m.content == "pong" for m in bot.seen) == 2
        channel = bot.get_channel(general(0))
        assert isinstance(channel, discord.TextChannel)
        newest = [m async for m in channel.history(limit=2)]
        assert [m.content for m in newest] == ["pong", "!ping"]
        assert newest[0].reference is not None and newest[0].reference.message_id == newest[1].id


@pytest.mark.timeout(30)
async def test_dispatch_says_why_it_cannot_deliver(server: GatewayServer, offline: Offline) -> None:
    status, answer = await offline.dispatch(guild_id(0), "MESSAGE_CREATE", {"content": "!ping"})
    assert status == 404 and "no live gateway session holds guild" in answer["message"]
    status, answer = await offline.dispatch(12345, "MESSAGE_CREATE", {"content": "!ping"})
    assert status == 404 and "is not one of the offline Discord's 8 guilds" in answer["message"]
    async with running(PingBot()):
        status, answer = await offline.dispatch(guild_id(0), "INTERACTION_CREATE", {"name": "hello"})
        assert status == 400 and "run tree.sync() first" in answer["message"]
        typing = {"channel_id": str(general(3)), "user_id": str(OWNER_USER_ID), "timestamp": int(time.time())}
        status, answer = await offline.dispatch(guild_id(3), "TYPING_START", typing)
        assert (status, answer["delivered"], answer["data"]["guild_id"]) == (200, 1, str(guild_id(3)))
    async with offline.http.get(offline.base / "_offline/nothing") as response:
        assert response.status == 404


@pytest.mark.timeout(30)
async def test_tree_sync_and_fetch_commands(server: GatewayServer) -> None:
    async with running(PingBot()) as bot:
        synced = await bot.tree.sync()
        assert sorted(c.name for c in synced) == ["hello", "slow"]
        fetched = await bot.tree.fetch_commands()
        assert {c.name: c.id for c in fetched} == {c.name: c.id for c in synced}
        assert all(c.application_id == BOT_USER_ID for c in fetched)
        assert {c.id for c in await bot.tree.sync()} == {c.id for c in synced}  # ids stay stable

        guild = discord.Object(guild_id(2))
        bot.tree.copy_global_to(guild=guild)
        on_guild = await bot.tree.sync(guild=guild)
        assert sorted(c.name for c in on_guild) == ["hello", "slow"] and all(c.guild_id == guild.id for c in on_guild)
        assert len(await bot.tree.fetch_commands(guild=guild)) == 2
        assert await bot.tree.fetch_commands(guild=discord.Object(guild_id(3))) == []

        # What discord.py would refuse to build, sent by hand: Discord's 50035 names the field.
        bad = [{"name": "Bad Name", "description": "x", "type": 1}]
        with pytest.raises(discord.HTTPException) as refused:
            await bot.http.bulk_upsert_guild_commands(BOT_USER_ID, guild_id(4), payload=bad)
        assert refused.value.status == 400 and refused.value.code == 50035
        assert "0.name" in refused.value.text


@pytest.mark.timeout(30)
async def test_slash_commands_get_their_callbacks_and_follow_ups(server: GatewayServer, offline: Offline) -> None:
    async with running(PingBot()) as bot:
        await bot.tree.sync()
        gid = guild_id(5)
        status, answer = await offline.dispatch(gid, "INTERACTION_CREATE", {"name": "hello"})
        assert status == 200 and answer["delivered"] == 1, answer
        interaction_id = answer["data"]["id"]
        reply = await offline.wait_for(lambda m: m["interaction_id"] == interaction_id, "the /hello response")
        assert (reply["kind"], reply["callback_type"], reply["content"]) == ("interaction_response", 4, "hi user5")
        assert reply["channel_id"] == str(general(5))

        status, answer = await offline.dispatch(gid, "INTERACTION_CREATE", {"data": {"name": "slow"}})
        assert status == 200
        interaction_id = answer["data"]["id"]
        followup = await offline.wait_for(
            lambda m: m["interaction_id"] == interaction_id and m["kind"] == "followup", "the /slow follow-up"
        )
        assert followup["content"] == "and one more thing" and followup["embeds"][0]["title"] == "extra"
        original = [
            m for m in await offline.messages() if m["interaction_id"] == interaction_id and m["kind"] != "followup"
        ]
        assert [(m["callback_type"], m["content"]) for m in original] == [(5, "done thinking")]
        assert original[0]["edited_timestamp"] is not None
        channel = bot.get_channel(general(5))
        assert isinstance(channel, discord.TextChannel)
        assert [m.content async for m in channel.history(limit=3)] == ["and one more thing", "done thinking", "hi user5"]


@pytest.mark.timeout(30)
async def test_messages_typing_channels_guilds_roles_users(server: GatewayServer, offline: Offline) -> None:
    async with running(PingBot()) as bot:
        channel = bot.get_channel(general(1))
        assert isinstance(channel, discord.TextChannel)
        first = await channel.send("one", embed=discord.Embed(title="an embed", description="plain JSON"))
        second = await channel.send("two")
        third = await channel.send("three")
        fetched = await channel.fetch_message(first.id)
        assert (fetched.content, fetched.embeds[0].title, fetched.author.id) == ("one", "an embed", BOT_USER_ID)
        edited = await second.edit(content="two, edited")
        assert edited.content == "two, edited" and edited.edited_at is not None
        assert [m.content async for m in channel.history(limit=10)] == ["three", "two, edited", "one"]
        assert [m.content async for m in channel.history(limit=10, before=third)] == ["two, edited", "one"]
        assert [m.content async for m in channel.history(limit=1, after=first)] == ["two, edited"]
        assert [m.content async for m in channel.history(limit=None, oldest_first=True)] == [
            "one",
            "two, edited",
            "three",
        ]
        await first.delete()
        with pytest.raises(discord.NotFound) as missing:
            await channel.fetch_message(first.id)
        assert missing.value.code == 10008
        with pytest.raises(discord.HTTPException) as empty:
            await channel.send(embeds=[])
        assert empty.value.code == 50006
        sent = {m["content"]: m["deleted"] for m in await offline.messages(channel_id=str(channel.id))}
        assert sent == {"one": True, "two, edited": False, "three": False}

        await channel.typing()
        async with channel.typing():
            pass

        assert (await bot.fetch_channel(channel.id)).name == "general"
        with pytest.raises(discord.NotFound):
            await bot.fetch_channel(guild_id(1) | 99)
        category = bot.get_channel(guild_id(1) | 10)
        with pytest.raises(discord.HTTPException) as not_text:
            await bot.http.send_message(guild_id(1) | 10, params=discord.http.handle_message_parameters("x"))
        assert category is not None and not_text.value.code == 50008
        guild = await bot.fetch_guild(guild_id(1), with_counts=True)
        assert guild.name == "Guild 1" and guild.approximate_member_count == member_count(1)
        roles = await guild.fetch_roles()
        assert sorted(r.name for r in roles) == ["@everyone", "Admin", "Member"]
        user = await bot.fetch_user(generated_user_id(1))
        assert (user.name, user.bot) == ("user1", False)
        with pytest.raises(discord.NotFound):
            await bot.fetch_user(42)


@pytest.mark.timeout(30)
async def test_members_by_rest_and_by_chunks(server: GatewayServer) -> None:
    async with running(PingBot()) as bot:
        index = 6
        guild = bot.get_guild(guild_id(index))
        assert guild is not None and guild.member_count == member_count(index)
        member = await guild.fetch_member(generated_user_id(index))
        assert member.name == f"user{index}" and [r.name for r in member.roles] == ["@everyone", "Member"]
        with pytest.raises(discord.NotFound) as unknown:
            await guild.fetch_member(generated_user_id(index + 50))
        assert unknown.value.code == 10007
        # Discord pages members by ascending user id; discord.py yields each page reversed.
        listed = [m.id async for m in guild.fetch_members(limit=None)]
        assert listed == member_ids(index)[::-1]
        assert [m.id async for m in guild.fetch_members(limit=3)] == member_ids(index)[:3][::-1]

        assert len(guild.members) == 1  # only the bot before chunking
        await asyncio.wait_for(guild.chunk(), 5)
        assert sorted(m.id for m in guild.members) == member_ids(index)
        owner = guild.get_member(OWNER_USER_ID)
        assert owner is not None and owner.guild_permissions.administrator
        found = await asyncio.wait_for(guild.query_members("USER", limit=2), 5)
        assert [m.name for m in found] == [f"user{index}", f"user{index + 1}"]


@pytest.mark.timeout(30)
async def test_rest_answers_carry_rate_limit_headers_and_429(server: GatewayServer) -> None:
    url = f"{server.api_base}/channels/{general(0)}/messages"
    async with aiohttp.ClientSession(headers={"Authorization": "Bot x"}) as http:
        remaining = []
        for _ in range(5):
            async with http.post(url, json={"content": "hi"}) as response:
                assert response.status == 200 and response.headers["Content-Type"] == "application/json"
                remaining.append(response.headers["X-RateLimit-Remaining"])
                assert response.headers["X-RateLimit-Limit"] == "5" and response.headers["X-RateLimit-Bucket"]
                assert float(response.headers["X-RateLimit-Reset"]) > time.time()
                assert 0 < float(response.headers["X-RateLimit-Reset-After"]) <= 5
        assert remaining == ["4", "3", "2", "1", "0"]
        async with http.post(url, json={"content": "hi"}) as response:
            assert response.status == 429 and response.headers["Via"]
            body = await response.json()
            assert body["global"] is False and 0 < body["retry_after"] <= 5


@pytest.mark.timeout(30)
async def test_a_bot_without_message_content_does_not_see_the_command(
    server: GatewayServer, offline: Offline
) -> None:
    async with running(PingBot(intents=discord.Intents.default())) as bot:
        status, answer = await offline.dispatch(guild_id(0), "MESSAGE_CREATE", {"content": "!ping"})
        assert (status, answer["delivered"]) == (200, 1)
        deadline = time.monotonic() + 5
        while not bot.seen and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert [m.content for m in bot.seen] == [""]  # Discord hides it: no pong
        await asyncio.sleep(0.2)
        assert await offline.messages() == []
