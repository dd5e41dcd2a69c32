"""The synthetic Discord world the offline gateway serves: one bot, its application, N guilds.

Pure and deterministic, no I/O: guild ``i`` always has the same ids, names, roles and
channels, so a test (or a benchmark on another machine) can predict what a client must
hold without asking the server. Payloads have the shape Discord sends in ``GUILD_CREATE``
and ``READY``, with every key discord.py indexes directly (a missing one is a KeyError
deep inside ``Client.start()``) and the usual optional ones set to their defaults.

Ids are snowflakes whose timestamp part is ``150000000000 + i`` milliseconds, so guild
``i`` lives on shard ``(150000000000 + i) % shard_count``: consecutive guilds land on
consecutive shards and :func:`shard_guild_indices` is a ``range``, not a scan.

Inside guild ``g`` (low 22 bits of ``g`` are zero, so ``g | k`` is a distinct id)::

    roles     @everyone = g   Admin = g|1 (administrator, held by the bot)   Member = g|2
    channels  category g|10 (type 4)
                ├─ text  g|11 "general"
                ├─ text  g|12 "members-only" (overwrites: @everyone denied, Member allowed)
                └─ voice g|13 "Voice" (bitrate, user_limit)
"""

from __future__ import annotations

from typing import Any, Final

__all__ = [
    "ADMIN_ROLE",
    "APPLICATION_ID",
    "BOT_USER_ID",
    "CATEGORY_CHANNEL",
    "GUILD_EPOCH_OFFSET",
    "JOINED_AT",
    "MEMBERS_ONLY_CHANNEL",
    "MEMBER_ROLE",
    "OWNER_USER_ID",
    "TEXT_CHANNEL",
    "USER_EPOCH_OFFSET",
    "VOICE_CHANNEL",
    "application",
    "bot_member",
    "bot_user",
    "guild_id",
    "guild_index",
    "guild_stub",
    "member_count",
    "member_record",
    "ready",
    "shard_guild_indices",
    "shard_of",
    "synthetic_guild",
    "user_object",
]

# Milliseconds after the Discord epoch (2015) of guild 0's snowflake: late 2019.
GUILD_EPOCH_OFFSET: Final = 150_000_000_000
USER_EPOCH_OFFSET: Final = 140_000_000_000

BOT_USER_ID: Final = (USER_EPOCH_OFFSET << 22) | 1
"""The bot's user id; also its application id, as for real bot applications."""
OWNER_USER_ID: Final = (USER_EPOCH_OFFSET << 22) | 2
"""Owner of every synthetic guild and of the application (never the bot)."""
APPLICATION_ID: Final = BOT_USER_ID

# Offsets OR-ed into a guild id to make the ids of its roles and channels.
ADMIN_ROLE: Final = 1
MEMBER_ROLE: Final = 2
CATEGORY_CHANNEL: Final = 10
TEXT_CHANNEL: Final = 11
MEMBERS_ONLY_CHANNEL: Final = 12
VOICE_CHANNEL: Final = 13

_VIEW_CHANNEL: Final = 1 << 10
_ADMINISTRATOR: Final = 1 << 3
# Discord's default @everyone permissions for a new guild.
_EVERYONE_PERMISSIONS: Final = "2248473465835073"
JOINED_AT: Final = "2020-01-01T00:00:00.000000+00:00"
_BOT_NAME: Final = "zmqcross-offline"


def user_object(user_id: int, username: str, *, bot: bool) -> dict[str, Any]:
    """A public user object (what ``GET /users/{id}`` and a message's ``author`` carry)."""
    return {
        "id": str(user_id),
        "username": username,
        "discriminator": "0",
        "global_name": None,
        "avatar": None,
        "banner": None,
        "accent_color": None,
        "bot": bot,
        "public_flags": 0,
    }


def member_count(index: int) -> int:
    """How many members guild ``index`` has: the bot, the owner and ``1 + index % 100`` users."""
    return 3 + index % 100


def bot_user() -> dict[str, Any]:
    """The bot's own user, as ``GET /users/@me`` and READY's ``user`` carry it (a fresh dict)."""
    user = user_object(BOT_USER_ID, _BOT_NAME, bot=True)
    user.update(verified=True, mfa_enabled=False, flags=0, locale="en-US", email=None)
    return user


def application() -> dict[str, Any]:
    """The bot's application, as ``GET /oauth2/applications/@me`` returns it (a fresh dict)."""
    return {
        "id": str(APPLICATION_ID),
        "name": _BOT_NAME,
        "description": "Synthetic application of the zmqcross offline gateway.",
        "icon": None,
        "bot_public": True,
        "bot_require_code_grant": False,
        "owner": user_object(OWNER_USER_ID, "owner", bot=False),
        "verify_key": "0" * 64,
        "team": None,
        "flags": 0,
        "summary": "",
        "rpc_origins": [],
        "tags": [],
        "interactions_endpoint_url": None,
        "bot": bot_user(),
    }


def guild_id(index: int) -> int:
    """Snowflake id of synthetic guild ``index`` (0-based)."""
    if index < 0:
        raise ValueError(f"guild index must be >= 0, got {index}")
    return (GUILD_EPOCH_OFFSET + index) << 22


def guild_index(guild: int | str, guild_count: int) -> int | None:
    """The index of synthetic guild id ``guild``, or None if it is not one of ``guild_count``."""
    try:
        snowflake = int(guild)
    except (TypeError, ValueError):  # the id came from a client's JSON: anything goes
        return None
    index = (snowflake >> 22) - GUILD_EPOCH_OFFSET
    if not 0 <= index < guild_count or guild_id(index) != snowflake:
        return None
    return index


def shard_of(guild: int, total_shards: int) -> int:
    """The shard Discord routes ``guild`` (an id) to: ``(id >> 22) % total_shards``."""
    if total_shards < 1:
        raise ValueError(f"total_shards must be >= 1, got {total_shards}")
    return (guild >> 22) % total_shards


def shard_guild_indices(shard_id: int, shard_count: int, guild_count: int) -> range:
    """Indices of the guilds (out of ``guild_count``) that shard ``shard_id`` of ``shard_count`` holds.

    O(1): guild ``i`` is on shard ``(GUILD_EPOCH_OFFSET + i) % shard_count``, so the guilds
    of one shard are an arithmetic progression.
    """
    if not 0 <= shard_id < shard_count:
        raise ValueError(f"shard id {shard_id} is not in 0..{shard_count - 1}")
    first = (shard_id - GUILD_EPOCH_OFFSET) % shard_count
    return range(first, max(guild_count, 0), shard_count)


def guild_stub(index: int) -> dict[str, Any]:
    """Guild ``index`` as READY lists it: an unavailable stub, filled in by its GUILD_CREATE."""
    return {"id": str(guild_id(index)), "unavailable": True}


def bot_member(index: int) -> dict[str, Any]:
    """The bot's member in guild ``index``; it holds the Admin role so permission checks pass."""
    return member_record(bot_user(), guild_id(index) | ADMIN_ROLE)


def member_record(user: dict[str, Any], role_id: int) -> dict[str, Any]:
    """A guild member object as Discord sends it: ``user`` with one role and no nickname."""
    return {
        "user": user,
        "roles": [str(role_id)],
        "joined_at": JOINED_AT,
        "premium_since": None,
        "nick": None,
        "avatar": None,
        "banner": None,
        "deaf": False,
        "mute": False,
        "pending": False,
        "flags": 0,
        "communication_disabled_until": None,
    }


def _role(
    role_id: int, name: str, *, permissions: str, position: int, colour: int, hoist: bool
) -> dict[str, Any]:
    return {
        "id": str(role_id),
        "name": name,
        "permissions": permissions,
        "position": position,
        "color": colour,
        "colors": {"primary_color": colour, "secondary_color": None, "tertiary_color": None},
        "hoist": hoist,
        "managed": False,
        "mentionable": False,
        "icon": None,
        "unicode_emoji": None,
        "flags": 0,
    }


def _channel(channel_id: int, kind: int, name: str, position: int, parent: int | None) -> dict[str, Any]:
    return {
        "id": str(channel_id),
        "type": kind,
        "name": name,
        "position": position,
        "parent_id": None if parent is None else str(parent),
        "permission_overwrites": [],
        "nsfw": False,
        "flags": 0,
    }


def _text_channel(channel_id: int, name: str, position: int, parent: int) -> dict[str, Any]:
    channel = _channel(channel_id, 0, name, position, parent)
    channel.update(
        topic=None, last_message_id=None, rate_limit_per_user=0, default_auto_archive_duration=1440
    )
    return channel


def synthetic_guild(index: int) -> dict[str, Any]:
    """Guild ``index`` as its GUILD_CREATE ``d`` carries it (a fresh dict; callers may mutate it).

    ``member_count`` varies (:func:`member_count`) so sums over guilds are not trivially
    ``k * N``; ``members`` holds only the bot, which is what a bot without the members
    intent keeps anyway (the others come in member chunks, see :mod:`.people`).
    """
    gid = guild_id(index)
    category = gid | CATEGORY_CHANNEL
    members_only = _text_channel(gid | MEMBERS_ONLY_CHANNEL, "members-only", 1, category)
    members_only["permission_overwrites"] = [
        {"id": str(gid), "type": 0, "allow": "0", "deny": str(_VIEW_CHANNEL)},
        {"id": str(gid | MEMBER_ROLE), "type": 0, "allow": str(_VIEW_CHANNEL), "deny": "0"},
    ]
    voice = _channel(gid | VOICE_CHANNEL, 2, "Voice", 0, category)
    voice.update(bitrate=64000, user_limit=10, rtc_region=None, video_quality_mode=1, rate_limit_per_user=0)
    return {
        "id": str(gid),
        "name": f"Guild {index}",
        "icon": None,
        "splash": None,
        "discovery_splash": None,
        "banner": None,
        "description": None,
        "owner_id": str(OWNER_USER_ID),
        "application_id": None,
        "afk_channel_id": None,
        "afk_timeout": 300,
        "verification_level": 0,
        "default_message_notifications": 0,
        "explicit_content_filter": 0,
        "mfa_level": 0,
        "nsfw_level": 0,
        "premium_tier": 0,
        "premium_subscription_count": 0,
        "premium_progress_bar_enabled": False,
        "preferred_locale": "en-US",
        "system_channel_id": str(gid | TEXT_CHANNEL),
        "system_channel_flags": 0,
        "rules_channel_id": None,
        "public_updates_channel_id": None,
        "safety_alerts_channel_id": None,
        "vanity_url_code": None,
        "widget_enabled": False,
        "widget_channel_id": None,
        "max_members": 500_000,
        "max_presences": None,
        "max_video_channel_users": 25,
        "max_stage_video_channel_users": 50,
        "incidents_data": None,
        "features": [],
        "emojis": [],
        "stickers": [],
        "roles": [
            _role(gid, "@everyone", permissions=_EVERYONE_PERMISSIONS, position=0, colour=0, hoist=False),
            _role(
                gid | ADMIN_ROLE,
                "Admin",
                permissions=str(_ADMINISTRATOR),
                position=2,
                colour=0xE74C3C,
                hoist=True,
            ),
            _role(gid | MEMBER_ROLE, "Member", permissions="0", position=1, colour=0x3498DB, hoist=False),
        ],
        "channels": [
            _channel(category, 4, "General", 0, None),
            _text_channel(gid | TEXT_CHANNEL, "general", 0, category),
            members_only,
            voice,
        ],
        "members": [bot_member(index)],
        "member_count": member_count(index),
        "joined_at": JOINED_AT,
        "large": False,
        "unavailable": False,
        "lazy": True,
        "voice_states": [],
        "presences": [],
        "threads": [],
        "stage_instances": [],
        "guild_scheduled_events": [],
        "soundboard_sounds": [],
    }


def ready(
    *, session_id: str, shard_id: int, shard_count: int, guild_count: int, resume_gateway_url: str
) -> dict[str, Any]:
    """READY's ``d`` for shard ``shard_id`` of ``shard_count``: the bot and its guilds as stubs.

    ``session_id``, ``resume_gateway_url``, ``user``, ``guilds`` and ``shard`` are the keys
    discord.py indexes directly.
    """
    indices = shard_guild_indices(shard_id, shard_count, guild_count)
    return {
        "v": 10,
        "user": bot_user(),
        "guilds": [guild_stub(i) for i in indices],
        "session_id": session_id,
        "session_type": "normal",
        "resume_gateway_url": resume_gateway_url,
        "shard": [shard_id, shard_count],
        "application": {"id": str(APPLICATION_ID), "flags": 0},
        "private_channels": [],
        "relationships": [],
        "presences": [],
        "guild_join_requests": [],
        "geo_ordered_rtc_regions": [],
        "auth": {},
        "user_settings": {},
        "_trace": ["zmqcross-offline-gateway"],
    }
