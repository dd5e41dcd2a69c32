"""Who is in the synthetic guilds: the bot, the owner and generated users. Pure and deterministic.

Guild ``i`` has ``member_count(i) = 3 + i % 100`` members: the bot (Admin), the owner
(Admin; Discord's owner is always a member) and ``1 + i % 100`` generated users
``k = i .. i + i % 100`` (Member role), so neighbouring guilds share users, as real ones do.
User ``k`` is ``user{k}`` with snowflake ``(_GENERATED_EPOCH_OFFSET + k) << 22``: ids rise with
``k``, and every generated id is above the bot's and the owner's, so a guild's members sorted
by user id (the order of Discord's ``GET /guilds/{id}/members``) are bot, owner, users.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Final

from .guilds import (
    ADMIN_ROLE,
    BOT_USER_ID,
    MEMBER_ROLE,
    OWNER_USER_ID,
    USER_EPOCH_OFFSET,
    bot_member,
    guild_id,
    member_record,
    user_object,
)

__all__ = [
    "MAX_CHUNK_MEMBERS",
    "MAX_MEMBERS_PAGE",
    "generated_user_id",
    "member",
    "member_chunks",
    "member_ids",
    "members_page",
    "user",
]

MAX_CHUNK_MEMBERS: Final = 1000
"""Members per GUILD_MEMBERS_CHUNK (Discord's chunk size)."""
MAX_MEMBERS_PAGE: Final = 1000
"""Upper bound of ``limit`` for ``GET /guilds/{id}/members`` (Discord's)."""
MAX_QUERY_LIMIT: Final = 100
"""Upper bound of ``limit`` for a REQUEST_GUILD_MEMBERS with a non-empty query (Discord's)."""

_GENERATED_EPOCH_OFFSET: Final = USER_EPOCH_OFFSET + 1_000


def generated_user_id(k: int) -> int:
    """Snowflake of generated user ``k``."""
    return (_GENERATED_EPOCH_OFFSET + k) << 22


def _generated_index(user_id: int) -> int | None:
    k = (user_id >> 22) - _GENERATED_EPOCH_OFFSET
    return k if k >= 0 and generated_user_id(k) == user_id else None


def member_ids(index: int) -> list[int]:
    """User ids of guild ``index``'s members, ascending."""
    return [
        BOT_USER_ID,
        OWNER_USER_ID,
        *(generated_user_id(k) for k in range(index, index + 1 + index % 100)),
    ]


def user(user_id: int) -> dict[str, Any] | None:
    """The public user ``user_id`` (``GET /users/{id}``), or None if nobody has that id."""
    if user_id == BOT_USER_ID:
        return user_object(BOT_USER_ID, "zmqcross-offline", bot=True)
    if user_id == OWNER_USER_ID:
        return user_object(OWNER_USER_ID, "owner", bot=False)
    k = _generated_index(user_id)
    if k is None:
        return None
    generated = user_object(user_id, f"user{k}", bot=False)
    generated["global_name"] = f"User {k}"
    return generated


def member(index: int, user_id: int) -> dict[str, Any] | None:
    """``user_id``'s member object in guild ``index`` (with ``user``), or None if not a member."""
    if user_id == BOT_USER_ID:
        return bot_member(index)
    k = _generated_index(user_id)
    if user_id != OWNER_USER_ID and (k is None or not index <= k <= index + index % 100):
        return None
    found = user(user_id)
    assert found is not None
    role = ADMIN_ROLE if user_id == OWNER_USER_ID else MEMBER_ROLE
    return member_record(found, guild_id(index) | role)


def _members(index: int, ids: Iterable[int]) -> list[dict[str, Any]]:
    return [m for m in (member(index, user_id) for user_id in ids) if m is not None]


def members_page(index: int, *, limit: int, after: int) -> list[dict[str, Any]]:
    """``GET /guilds/{id}/members?limit=&after=``: members with user id above ``after``, ascending."""
    return _members(index, [u for u in member_ids(index) if u > after][:limit])


def member_chunks(
    index: int,
    *,
    query: str | None = None,
    limit: int = 0,
    user_ids: Sequence[int] | None = None,
    nonce: object = None,
) -> list[dict[str, Any]]:
    """The GUILD_MEMBERS_CHUNK ``d``s answering one REQUEST_GUILD_MEMBERS for guild ``index``.

    ``user_ids`` picks members by id (unknown ones go to ``not_found``); otherwise ``query``
    matches the start of usernames, case-insensitively ("" matches everyone), and ``limit``
    0 means no limit. Discord always answers, with one empty chunk when nothing matched.
    """
    not_found: list[str] = []
    if user_ids is not None:
        known = set(member_ids(index))
        found = [u for u in user_ids if u in known]
        not_found = [str(u) for u in user_ids if u not in known]
        members = _members(index, found)
    else:
        prefix = (query or "").casefold()
        members = [m for m in _members(index, member_ids(index)) if m["user"]["username"].startswith(prefix)]
        if limit > 0:
            members = members[:limit]
    pieces = [members[i : i + MAX_CHUNK_MEMBERS] for i in range(0, len(members), MAX_CHUNK_MEMBERS)] or [[]]
    chunks: list[dict[str, Any]] = []
    for number, piece in enumerate(pieces):
        chunk: dict[str, Any] = {
            "guild_id": str(guild_id(index)),
            "members": piece,
            "chunk_index": number,
            "chunk_count": len(pieces),
            "not_found": not_found if number == 0 else [],
        }
        if nonce is not None:
            chunk["nonce"] = nonce
        chunks.append(chunk)
    return chunks
