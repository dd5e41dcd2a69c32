"""Eval results as JSON: what a bot's own objects become on the way to the caller."""

from __future__ import annotations

import asyncio
import types

import discord
import orjson
import pytest
from discord.ext import commands

from zmqcross._serialize import dump_result

pytestmark = pytest.mark.timeout(30)


class Greetings(commands.Cog):
    """Says hello."""

    @commands.command()
    async def hello(self, ctx: commands.Context) -> None:
        """Greets whoever asks."""


def bot_with_a_cog() -> commands.Bot:
    bot = commands.Bot(command_prefix="!", intents=discord.Intents.default())
    asyncio.run(bot.add_cog(Greetings()))
    return bot


def test_bot_cogs_a_mappingproxy_travels_like_a_dict() -> None:
    bot = bot_with_a_cog()
    assert isinstance(bot.cogs, types.MappingProxyType)
    assert orjson.loads(dump_result(bot.cogs)) == {
        "Greetings": {
            "name": "Greetings",
            "description": "Says hello.",
            "commands": ["hello"],
            "app_commands": [],
        }
    }
    assert orjson.loads(dump_result(types.MappingProxyType({"a": {1, 2}}))) == {"a": [1, 2]}


def test_commands_and_extensions_travel_by_name() -> None:
    bot = bot_with_a_cog()
    assert orjson.loads(dump_result(sorted(bot.commands, key=lambda c: c.name))) == [
        {"name": "hello", "cog": "Greetings", "description": "Greets whoever asks."},
        {"name": "help", "cog": None, "description": "Shows this message"},
    ]
    assert orjson.loads(dump_result(types.MappingProxyType({"cogs.fun": types}))) == {"cogs.fun": "types"}
