"""discord.py objects -> plain JSON data, for eval results.

:func:`to_json` is orjson's ``default`` hook: orjson calls it only for values it cannot
encode itself, and each converter returns plain data (ids as ints, nested discord.py
objects already converted), so nothing here can recurse through the object graph.
That is how ``broadcast_eval("bot")`` answers with a summary, where the original's
``broadcastEval('this')`` never answers (JSON.stringify recurses through a cycle).
"""

from __future__ import annotations

import collections.abc
import datetime
import gc
import types
from collections.abc import Callable
from operator import attrgetter
from typing import Any

import discord
from discord.ext import commands

from .protocol import dump

__all__ = ["dump_result", "to_json"]


def _user(user: discord.abc.User) -> dict[str, Any]:
    return {
        "id": user.id,
        "name": user.name,
        "discriminator": user.discriminator,
        "global_name": user.global_name,
        "bot": user.bot,
        "avatar": user.avatar.key if user.avatar else None,
    }


def _member(member: discord.Member) -> dict[str, Any]:
    data = _user(member)
    data.update(
        guild_id=member.guild.id,
        nick=member.nick,
        display_name=member.display_name,
        roles=[role.id for role in member.roles],
        joined_at=member.joined_at,
    )
    return data


def _role(role: discord.Role) -> dict[str, Any]:
    # role._colour / role._permissions are the ints behind .colour / .permissions, which
    # build a new object per call; guild lists convert thousands of roles.
    return {
        "id": role.id,
        "name": role.name,
        "guild_id": role.guild.id,
        "color": role._colour if _ROLE_INTS else role.colour.value,
        "position": role.position,
        "permissions": role._permissions if _ROLE_INTS else role.permissions.value,
        "hoist": role.hoist,
        "mentionable": role.mentionable,
        "managed": role.managed,
    }


_ROLE_INTS = {"_colour", "_permissions"} <= set(getattr(discord.Role, "__slots__", ()))
_BY_POSITION = attrgetter("position")


def _channel(channel: discord.abc.GuildChannel) -> dict[str, Any]:
    data: dict[str, Any] = {
        "id": channel.id,
        "name": channel.name,
        "type": channel.type.value,
        "guild_id": channel.guild.id,
        "position": channel.position,
        "category_id": channel.category_id,
    }
    if isinstance(channel, discord.TextChannel):
        data.update(topic=channel.topic, nsfw=channel.nsfw, slowmode_delay=channel.slowmode_delay)
    elif isinstance(channel, discord.VoiceChannel):
        data.update(bitrate=channel.bitrate, user_limit=channel.user_limit)
    return data


def _thread(thread: discord.Thread) -> dict[str, Any]:
    return {
        "id": thread.id,
        "name": thread.name,
        "type": thread.type.value,
        "guild_id": thread.guild.id,
        "parent_id": thread.parent_id,
        "archived": thread.archived,
    }


def _guild(guild: discord.Guild) -> dict[str, Any]:
    return {
        "id": guild.id,
        "name": guild.name,
        "icon": guild.icon.key if guild.icon else None,
        "owner_id": guild.owner_id,
        "member_count": guild.member_count,
        "shard_id": guild.shard_id,
        "unavailable": guild.unavailable,
        # Ids only, as discord.js's Guild.toJSON does: a full role or channel repeats the
        # guild id and a dozen fields, and list(bot.guilds) at 20,000 guilds went from
        # 26 MB to 5.6 MB for the caller to decode. Ask for guild.roles to get them whole.
        # Roles in hierarchy order, as guild.roles gives it, without its pairwise comparisons.
        "roles": [role.id for role in sorted(guild._roles.values(), key=_BY_POSITION)],
        "channels": [channel.id for channel in guild._channels.values()],
    }


def _emoji(emoji: discord.Emoji) -> dict[str, Any]:
    return {"id": emoji.id, "name": emoji.name, "animated": emoji.animated, "guild_id": emoji.guild_id}


def _message(message: discord.Message) -> dict[str, Any]:
    return {
        "id": message.id,
        "channel_id": message.channel.id,
        "guild_id": message.guild.id if message.guild else None,
        "author": _user(message.author),
        "content": message.content,
        "created_at": message.created_at,
    }


def _client(client: discord.Client) -> dict[str, Any]:
    # A summary: the client object graph is cyclic and huge; these are the facts callers want.
    return {
        "user": _user(client.user) if client.user else None,
        "guild_count": len(client.guilds),
        "shard_ids": list(getattr(client, "shard_ids", None) or []),
        "shard_count": client.shard_count,
        "latency": client.latency
        if client.latency == client.latency
        else None,  # NaN before the first heartbeat
        "ready": client.is_ready(),
    }


def _cog(cog: commands.Cog) -> dict[str, Any]:
    # bot.cogs maps names to these: what a caller asks "which cogs run where" wants to see.
    return {
        "name": cog.qualified_name,
        "description": cog.description,
        "commands": [command.qualified_name for command in cog.get_commands()],
        "app_commands": [command.qualified_name for command in cog.get_app_commands()],
    }


def _command(command: commands.Command[Any, Any, Any]) -> dict[str, Any]:
    return {"name": command.qualified_name, "cog": command.cog_name, "description": command.short_doc}


_CONVERTERS: dict[type, Callable[[Any], Any]] = {
    discord.Client: _client,
    discord.Guild: _guild,
    discord.Member: _member,
    discord.ClientUser: _user,
    discord.User: _user,
    discord.Role: _role,
    discord.Thread: _thread,
    discord.abc.GuildChannel: _channel,
    discord.Emoji: _emoji,
    discord.Message: _message,
    discord.Permissions: lambda p: p.value,
    discord.Colour: lambda c: c.value,
    discord.Asset: lambda a: a.url,
    discord.Object: lambda o: {"id": o.id},
    commands.Cog: _cog,
    commands.Command: _command,
    types.ModuleType: lambda m: m.__name__,  # bot.extensions: name -> module
    datetime.timedelta: lambda d: d.total_seconds(),
    set: list,
    frozenset: list,
    # guild.roles, guild.channels and friends are read-only views (SequenceProxy) in
    # discord.py 2; dict views come from bot._connection and user code.
    discord.utils.SequenceProxy: list,
    collections.abc.KeysView: list,
    collections.abc.ValuesView: list,
    # bot.cogs and bot.extensions are read-only views of a dict (types.MappingProxyType).
    types.MappingProxyType: dict,
}
_RESOLVED: dict[type, Callable[[Any], Any] | None] = {}


def _converter(cls: type) -> Callable[[Any], Any] | None:
    try:
        return _RESOLVED[cls]
    except KeyError:
        pass
    found = None
    for base in cls.__mro__:
        if base in _CONVERTERS:
            found = _CONVERTERS[base]
            break
    else:
        # Abstract bases (GuildChannel) are registered virtually, not in the MRO.
        for base, convert in _CONVERTERS.items():
            if isinstance(base, type) and issubclass(cls, base):
                found = convert
                break
    _RESOLVED[cls] = found
    return found


def to_json(value: Any) -> Any:
    """orjson ``default`` hook: convert one discord.py object (or set, timedelta) to plain data."""
    convert = _converter(type(value))
    if convert is None:
        raise TypeError(
            f"a {type(value).__module__}.{type(value).__qualname__} cannot be sent as JSON; "
            "return plain data (or a discord.py object zmqcross knows)"
        )
    return convert(value)


def dump_result(value: Any) -> bytes:
    """Encode an eval result once, converting discord.py objects on the way.

    The collector is paused meanwhile: converting thousands of guilds makes short-lived
    dicts by the hundred thousand, and each collection would also scan the bot's cache.
    """
    if not gc.isenabled():
        return dump(value, default=to_json)
    gc.disable()
    try:
        return dump(value, default=to_json)
    finally:
        gc.enable()
