"""Messages in the offline Discord: ids, Discord's message shape and limits, channel histories, the
record of what bots sent. No I/O: the REST layer calls these and turns :class:`RestError` into
Discord's JSON error answers.

Every channel of every synthetic guild accepts messages except categories (Discord answers
50008 there). A channel keeps its last :data:`MAX_MESSAGES_PER_CHANNEL` messages for
``fetch_message`` and ``history``; the record that ``GET /_offline/messages`` reads keeps the
last :data:`MAX_RECORDED` messages the bot sent (interaction responses and follow-ups too).
"""

from __future__ import annotations

import collections
import datetime
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from . import guilds as world
from .people import generated_user_id, member, user

__all__ = [
    "DISCORD_EPOCH_MS",
    "MAX_CONTENT_LENGTH",
    "MAX_EMBEDS",
    "MAX_HISTORY_LIMIT",
    "MAX_MESSAGES_PER_CHANNEL",
    "MAX_RECORDED",
    "Channels",
    "Record",
    "RecordKind",
    "RestError",
    "Snowflakes",
    "bot_author",
    "invalid_form",
    "iso_time",
]

DISCORD_EPOCH_MS: Final = 1_420_070_400_000
MAX_CONTENT_LENGTH: Final = 2000
"""Discord refuses longer ``content`` with 50035 (``BASE_TYPE_MAX_LENGTH``)."""
MAX_EMBEDS: Final = 10
MAX_HISTORY_LIMIT: Final = 100
"""``GET /channels/{id}/messages`` takes ``limit`` 1..100 (default 50)."""
MAX_MESSAGES_PER_CHANNEL: Final = 1000
MAX_RECORDED: Final = 10_000

_TEXT_CHANNEL_TYPES: Final = frozenset({0, 2, 5, 10, 11, 12, 13, 15})  # category (4) has no messages
_MENTION: Final = re.compile(r"<@!?(\d{1,20})>")
_LOADING: Final = 1 << 7  # message flag of a deferred interaction response ("thinking")

RecordKind = Literal["message", "interaction_response", "followup"]


class RestError(Exception):
    """A Discord REST error: HTTP ``status``, JSON error ``code`` and ``message`` (and ``errors``)."""

    def __init__(self, status: int, code: int, message: str, errors: dict[str, Any] | None = None) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.errors = errors

    def body(self) -> dict[str, Any]:
        """The JSON body Discord answers with."""
        body: dict[str, Any] = {"message": self.message, "code": self.code}
        if self.errors is not None:
            body["errors"] = self.errors
        return body


def invalid_form(path: str, error_code: str, message: str) -> RestError:
    """Discord's 50035 "Invalid Form Body" for one field (``path`` dotted, e.g. ``"0.name"``)."""
    errors: dict[str, Any] = {"_errors": [{"code": error_code, "message": message}]}
    for key in reversed(path.split(".")):
        errors = {key: errors}
    return RestError(400, 50035, "Invalid Form Body", errors)


def iso_time(seconds: float) -> str:
    """Discord's timestamp format for a Unix time."""
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC).isoformat(timespec="microseconds")


class Snowflakes:
    """Fresh, strictly rising snowflakes dated by ``clock`` (Unix seconds)."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._last = 0

    def next(self) -> int:
        stamp = (int(self._clock() * 1000) - DISCORD_EPOCH_MS) << 22
        self._last = max(stamp, self._last + 1)
        return self._last


def bot_author() -> dict[str, Any]:
    """The bot as a message's ``author``."""
    author = user(world.BOT_USER_ID)
    assert author is not None
    return author


def snowflake_time(snowflake: int) -> float:
    return ((snowflake >> 22) + DISCORD_EPOCH_MS) / 1000


@dataclass(slots=True)
class Record:
    """One message the bot sent, as ``GET /_offline/messages`` lists it."""

    message: dict[str, Any]
    kind: RecordKind
    interaction_id: str | None = None
    callback_type: int | None = None
    ephemeral: bool = False
    deleted: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        m = self.message
        entry: dict[str, Any] = {
            "id": m.get("id"),
            "kind": self.kind,
            "guild_id": m.get("guild_id"),
            "channel_id": m.get("channel_id"),
            "author": {k: m["author"][k] for k in ("id", "username", "bot")} if "author" in m else None,
            "content": m.get("content", ""),
            "embeds": m.get("embeds", []),
            "components": m.get("components", []),
            "reply_to": (m.get("message_reference") or {}).get("message_id"),
            "timestamp": m.get("timestamp"),
            "edited_timestamp": m.get("edited_timestamp"),
            "deleted": self.deleted,
            "interaction_id": self.interaction_id,
            "callback_type": self.callback_type,
            "ephemeral": self.ephemeral,
        }
        entry.update(self.extra)
        return entry


def _check_body(body: Any, *, creating: bool) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise RestError(400, 50109, "The request body contains invalid JSON.")
    content = body.get("content")
    if content is not None and not isinstance(content, str):
        raise invalid_form("content", "STRING_TYPE_CONVERT", "Could not interpret the value as string.")
    if isinstance(content, str) and len(content) > MAX_CONTENT_LENGTH:
        raise invalid_form(
            "content", "BASE_TYPE_MAX_LENGTH", f"Must be {MAX_CONTENT_LENGTH} or fewer in length."
        )
    embeds = body.get("embeds")
    if embeds is not None and (not isinstance(embeds, list) or len(embeds) > MAX_EMBEDS):
        raise invalid_form("embeds", "BASE_TYPE_MAX_LENGTH", f"Must be {MAX_EMBEDS} or fewer in length.")
    if creating and not (
        content or embeds or body.get("components") or body.get("sticker_ids") or body.get("poll")
    ):
        raise RestError(400, 50006, "Cannot send an empty message")
    return body


class Channels:
    """The messages of every channel of ``guild_count`` synthetic guilds, and the record of the bot's."""

    def __init__(self, guild_count: int, snowflakes: Snowflakes, clock: Callable[[], float]) -> None:
        self._guild_count = guild_count
        self._snowflakes = snowflakes
        self._clock = clock
        self._messages: dict[int, collections.OrderedDict[int, dict[str, Any]]] = {}
        self._records: collections.OrderedDict[int, Record] = collections.OrderedDict()

    # --- the world ----------------------------------------------------------------------------

    def guild(self, guild: int | str) -> int:
        """The index of guild id ``guild``; 404 Unknown Guild otherwise."""
        index = world.guild_index(guild, self._guild_count)
        if index is None:
            raise RestError(404, 10004, "Unknown Guild")
        return index

    def channel(self, channel: int | str) -> tuple[int, dict[str, Any]]:
        """``(guild index, channel object with guild_id)``; 404 Unknown Channel otherwise."""
        try:
            channel_id = int(channel)
        except ValueError:
            raise RestError(404, 10003, "Unknown Channel") from None
        index = world.guild_index(channel_id & ~((1 << 22) - 1), self._guild_count)
        if index is not None:
            for found in world.synthetic_guild(index)["channels"]:
                if found["id"] == str(channel_id):
                    found["guild_id"] = str(world.guild_id(index))
                    history = self._messages.get(channel_id)
                    if found["type"] != 4:
                        found["last_message_id"] = str(next(reversed(history))) if history else None
                    return index, found
        raise RestError(404, 10003, "Unknown Channel")

    def text_channel(self, channel: int | str) -> tuple[int, dict[str, Any]]:
        index, found = self.channel(channel)
        if found["type"] not in _TEXT_CHANNEL_TYPES:
            raise RestError(400, 50008, "Cannot send messages in a non-text channel")
        return index, found

    # --- messages -----------------------------------------------------------------------------

    def build(
        self,
        channel_id: int,
        index: int,
        body: dict[str, Any],
        *,
        author: dict[str, Any],
        member: dict[str, Any] | None,
        message_type: int = 0,
    ) -> dict[str, Any]:
        """A full message object (Discord's shape, with ``guild_id`` and ``member``) from ``body``."""
        message_id = self._snowflakes.next()
        message: dict[str, Any] = {
            "id": str(message_id),
            "type": message_type,
            "channel_id": str(channel_id),
            "guild_id": str(world.guild_id(index)),
            "author": author,
            "content": body.get("content") or "",
            "timestamp": iso_time(snowflake_time(message_id)),
            "edited_timestamp": None,
            "tts": bool(body.get("tts", False)),
            "mention_everyone": False,
            "mentions": [],
            "mention_roles": [],
            "mention_channels": [],
            "attachments": [],
            "embeds": list(body.get("embeds") or []),
            "reactions": [],
            "pinned": False,
            "flags": int(body.get("flags") or 0),
            "components": list(body.get("components") or []),
            "sticker_items": [],
        }
        if "nonce" in body:
            message["nonce"] = body["nonce"]
        if member is not None:
            message["member"] = {k: v for k, v in member.items() if k != "user"}
        reference = body.get("message_reference")
        if isinstance(reference, dict) and reference.get("message_id") is not None:
            referenced = self._find(channel_id, reference["message_id"])
            if referenced is None and reference.get("fail_if_not_exists", True):
                raise invalid_form(
                    "message_reference", "MESSAGE_REFERENCE_UNKNOWN_MESSAGE", "Unknown message"
                )
            if referenced is not None:
                message["type"] = 19 if message_type == 0 else message_type  # REPLY
                message["message_reference"] = {
                    "type": 0,
                    "message_id": referenced["id"],
                    "channel_id": str(channel_id),
                    "guild_id": message["guild_id"],
                }
                message["referenced_message"] = {
                    k: v for k, v in referenced.items() if k not in ("referenced_message", "member")
                }
        return message

    def store(self, message: dict[str, Any]) -> None:
        """Keep ``message`` in its channel's history (ephemeral ones are never stored)."""
        channel_id = int(message["channel_id"])
        history = self._messages.setdefault(channel_id, collections.OrderedDict())
        history[int(message["id"])] = message
        while len(history) > MAX_MESSAGES_PER_CHANNEL:
            history.popitem(last=False)

    def record(self, record: Record) -> None:
        """Add a message the bot sent to what ``GET /_offline/messages`` shows."""
        # A callback that made no message (a modal, a deferred update) is recorded under a fresh id.
        raw = record.message.get("id")
        self._records[int(raw) if raw is not None else self._snowflakes.next()] = record
        while len(self._records) > MAX_RECORDED:
            self._records.popitem(last=False)

    def create(self, channel: int | str, body: Any, *, kind: RecordKind = "message") -> dict[str, Any]:
        """``POST /channels/{id}/messages`` by the bot: the new message (stored and recorded)."""
        index, found = self.text_channel(channel)
        body = _check_body(body, creating=True)
        message = self.build(
            int(found["id"]), index, body, author=bot_author(), member=world.bot_member(index)
        )
        self.store(message)
        self.record(Record(message, kind))
        return message

    def _find(self, channel_id: int, message_id: Any) -> dict[str, Any] | None:
        try:
            history = self._messages.get(channel_id)
            return None if history is None else history.get(int(message_id))
        except (TypeError, ValueError):
            return None

    def get(self, channel: int | str, message_id: int | str) -> dict[str, Any]:
        """``GET /channels/{id}/messages/{id}``; 404 Unknown Message."""
        _, found = self.channel(channel)
        message = self._find(int(found["id"]), message_id)
        if message is None:
            raise RestError(404, 10008, "Unknown Message")
        return message

    def edit(self, channel: int | str, message_id: int | str, body: Any) -> dict[str, Any]:
        """``PATCH /channels/{id}/messages/{id}``: only the bot's own messages (403 50005 otherwise)."""
        message = self.get(channel, message_id)
        if message["author"]["id"] != str(world.BOT_USER_ID):
            raise RestError(403, 50005, "Cannot edit a message authored by another user")
        self.apply_edit(message, body)
        return message

    def apply_edit(self, message: dict[str, Any], body: Any) -> None:
        """Edit ``message`` in place with ``body`` (checked like a new message's, empty allowed)."""
        body = _check_body(body, creating=False)
        for key in ("content", "embeds", "components", "flags"):
            if key in body and body[key] is not None:
                message[key] = body[key]
        message["flags"] = int(message.get("flags") or 0) & ~_LOADING
        message["edited_timestamp"] = iso_time(self._clock())

    def delete(self, channel: int | str, message_id: int | str) -> dict[str, Any]:
        """``DELETE /channels/{id}/messages/{id}``: the deleted message (the bot is Admin: any message)."""
        message = self.get(channel, message_id)
        self.forget(message)
        return message

    def forget(self, message: dict[str, Any]) -> None:
        history = self._messages.get(int(message["channel_id"]))
        if history is not None:
            history.pop(int(message["id"]), None)
        record = self._records.get(int(message["id"]))
        if record is not None:
            record.deleted = True

    def history(
        self, channel: int | str, *, limit: int, before: int | None, after: int | None, around: int | None
    ) -> list[dict[str, Any]]:
        """``GET /channels/{id}/messages``: newest first, always (discord.py relies on that order).

        ``after`` gives the ``limit`` messages just after it; ``before`` (or nothing) the ones
        just before it (or the newest); ``around`` half on each side.
        """
        _, found = self.channel(channel)
        if not 1 <= limit <= MAX_HISTORY_LIMIT:
            raise invalid_form("limit", "NUMBER_TYPE_MAX", f"Must be between 1 and {MAX_HISTORY_LIMIT}.")
        ids = sorted(self._messages.get(int(found["id"]), {}))
        if around is not None:
            older = [i for i in ids if i < around][-(limit // 2) :] if limit > 1 else []
            newer = [i for i in ids if i >= around][: limit - len(older)]
            chosen = older + newer
        elif after is not None:
            chosen = [i for i in ids if i > after][:limit]
        else:
            chosen = [i for i in ids if before is None or i < before][-limit:]
        history = self._messages[int(found["id"])] if chosen else {}
        return [history[i] for i in reversed(chosen)]

    # --- the record ---------------------------------------------------------------------------

    def records(self, *, channel_id: str | None = None, guild_id: str | None = None) -> list[dict[str, Any]]:
        """What the bot sent, oldest first, optionally of one channel or guild."""
        entries = [r.to_json() for r in self._records.values()]
        return [
            e
            for e in entries
            if (channel_id is None or e["channel_id"] == channel_id)
            and (guild_id is None or e["guild_id"] == guild_id)
        ]

    def find_record(self, message_id: int | str) -> Record | None:
        try:
            return self._records.get(int(message_id))
        except ValueError:
            return None

    # --- messages from users (delivered with POST /_offline/dispatch) -----------------------------

    def user_message(self, index: int, data: dict[str, Any]) -> dict[str, Any]:
        """MESSAGE_CREATE's ``d`` for a user's message in guild ``index``: ``data`` (as short as
        ``{"content": "!ping"}``) with Discord's fields filled in; stored in the channel's history.

        ``channel_id`` defaults to the guild's "general", ``author`` to a generated member
        (``author_id`` picks another member); ``<@id>`` in the content fills ``mentions``.
        """
        gid = world.guild_id(index)
        _, found = self.text_channel(data.get("channel_id") or gid | world.TEXT_CHANNEL)
        author = data.get("author")
        if author is None:
            wanted = data.get("author_id", generated_user_id(index))
            author = user(int(wanted)) if str(wanted).isdigit() else None
            if author is None:
                raise RestError(400, 50035, f"author_id {wanted!r} is not a user of the offline Discord")
        who = member(index, int(author["id"]))
        extra = {k: v for k, v in data.items() if k not in ("channel_id", "author", "author_id")}
        message = self.build(int(found["id"]), index, extra, author=author, member=who)
        content = message["content"]
        mentioned = [user(int(i)) for i in _MENTION.findall(content)]
        message["mentions"] = [m for m in mentioned if m is not None]
        message.update({k: v for k, v in extra.items() if k not in message or k == "mentions"})
        self.store(message)
        return message
