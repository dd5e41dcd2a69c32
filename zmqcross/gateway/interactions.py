"""Application commands and interactions in the offline Discord. No I/O.

:class:`Commands` holds what ``tree.sync()`` PUTs (global and per guild), with ids that stay
stable across PUTs of the same name, as Discord keeps them. :class:`Interactions` makes
INTERACTION_CREATE payloads (only for commands that are registered: Discord never sends an
interaction for a command it does not know) and judges the callbacks and follow-ups a bot
sends, with Discord's windows: the initial response within
:data:`INTERACTION_RESPONSE_WINDOW` seconds, follow-ups for :data:`INTERACTION_TOKEN_LIFETIME`.
"""

from __future__ import annotations

import collections
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from . import guilds as world
from .messages import Channels, Record, RecordKind, RestError, Snowflakes, bot_author, invalid_form
from .people import generated_user_id, member

__all__ = [
    "INTERACTION_RESPONSE_WINDOW",
    "INTERACTION_TOKEN_LIFETIME",
    "MAX_CHAT_INPUT_COMMANDS",
    "MAX_CONTEXT_MENU_COMMANDS",
    "Commands",
    "Interactions",
]

INTERACTION_RESPONSE_WINDOW: Final = 3.0
"""Discord: the initial response must come within 3 s, or the callback gets 10062 Unknown interaction."""
INTERACTION_TOKEN_LIFETIME: Final = 15 * 60.0
"""Discord: an interaction token is valid for follow-ups and @original for 15 minutes."""
MAX_PENDING_INTERACTIONS: Final = 10_000
MAX_CHAT_INPUT_COMMANDS: Final = 100
"""Per scope (global, or one guild), Discord's limit; USER and MESSAGE commands have their own."""
MAX_CONTEXT_MENU_COMMANDS: Final = 15
ATTACHMENT_SIZE_LIMIT: Final = 10 * 1024 * 1024

_CHAT_INPUT_NAME: Final = re.compile(r"^[-_\w]{1,32}$")
_EPHEMERAL: Final = 1 << 6
_LOADING: Final = 1 << 7
_APPLICATION_COMMAND: Final = 2
# Callback types a bot may answer each interaction type with (Discord's table).
_ALLOWED_CALLBACKS: Final = {
    1: {1},  # PING -> PONG
    2: {4, 5, 9, 12},  # APPLICATION_COMMAND
    3: {4, 5, 6, 7, 9, 12},  # MESSAGE_COMPONENT
    4: {8},  # APPLICATION_COMMAND_AUTOCOMPLETE
    5: {4, 5, 6, 7},  # MODAL_SUBMIT
}
_MESSAGE_CALLBACKS: Final = {4, 5}


class Commands:
    """Registered application commands: scope None is global, otherwise a guild index."""

    def __init__(self, snowflakes: Snowflakes) -> None:
        self._snowflakes = snowflakes
        self._scopes: dict[int | None, list[dict[str, Any]]] = {}

    def put(self, scope: int | None, body: Any) -> list[dict[str, Any]]:
        """Bulk overwrite (``PUT .../commands``): validates everything first, as Discord does."""
        if not isinstance(body, list):
            raise invalid_form("_errors", "LIST_TYPE_CONVERT", "Only iterables may be used in a ListType")
        previous = {(c["name"], c["type"]): c for c in self._scopes.get(scope, [])}
        counts: collections.Counter[int] = collections.Counter()
        seen: set[tuple[str, int]] = set()
        commands: list[dict[str, Any]] = []
        for position, given in enumerate(body):
            command = self._check(position, given)
            key = (command["name"], command["type"])
            if key in seen:
                raise invalid_form(
                    f"{position}.name",
                    "APPLICATION_COMMANDS_DUPLICATE_NAME",
                    "Application command names must be unique",
                )
            seen.add(key)
            counts[command["type"]] += 1
            limit = MAX_CHAT_INPUT_COMMANDS if command["type"] == 1 else MAX_CONTEXT_MENU_COMMANDS
            if counts[command["type"]] > limit:
                raise invalid_form("_errors", "BASE_TYPE_MAX_LENGTH", f"Must be {limit} or fewer in length.")
            kept = previous.get(key)
            command["id"] = kept["id"] if kept is not None else str(self._snowflakes.next())
            command["version"] = str(self._snowflakes.next())
            if scope is not None:
                command["guild_id"] = str(world.guild_id(scope))
            commands.append(command)
        self._scopes[scope] = commands
        return commands

    @staticmethod
    def _check(position: int, given: Any) -> dict[str, Any]:
        if not isinstance(given, dict) or not isinstance(given.get("name"), str):
            raise invalid_form(f"{position}.name", "BASE_TYPE_REQUIRED", "This field is required")
        kind = given.get("type", 1)
        name = given["name"]
        if kind == 1 and (not _CHAT_INPUT_NAME.match(name) or name != name.lower()):
            raise invalid_form(
                f"{position}.name", "APPLICATION_COMMAND_INVALID_NAME", f"Command name is invalid: {name!r}"
            )
        description = given.get("description") or ""
        if kind == 1 and not 1 <= len(description) <= 100:
            raise invalid_form(
                f"{position}.description", "BASE_TYPE_BAD_LENGTH", "Must be between 1 and 100 in length."
            )
        return {
            "application_id": str(world.APPLICATION_ID),
            "type": kind,
            "name": name,
            "name_localizations": given.get("name_localizations"),
            "description": description,
            "description_localizations": given.get("description_localizations"),
            "options": given.get("options") or [],
            "default_member_permissions": given.get("default_member_permissions"),
            "dm_permission": given.get("dm_permission", True),
            "contexts": given.get("contexts"),
            "integration_types": given.get("integration_types", [0]),
            "nsfw": bool(given.get("nsfw", False)),
        }

    def list(self, scope: int | None) -> list[dict[str, Any]]:
        """``GET .../commands``."""
        return list(self._scopes.get(scope, []))

    def find(self, name: str, kind: int, guild: int) -> dict[str, Any] | None:
        """The command an interaction named ``name`` in guild ``guild`` runs: guild first, then global."""
        for scope in (guild, None):
            for command in self._scopes.get(scope, []):
                if command["name"] == name and command["type"] == kind:
                    return command
        return None


@dataclass(slots=True)
class _Pending:
    interaction_id: int
    token: str
    kind: int
    guild: int
    channel_id: int
    created: float
    callback_type: int | None = None
    original: dict[str, Any] | None = None


class Interactions:
    """Interactions delivered to the bot, and the answers it gave them."""

    def __init__(
        self, channels: Channels, commands: Commands, snowflakes: Snowflakes, clock: Callable[[], float]
    ) -> None:
        self._channels = channels
        self._commands = commands
        self._snowflakes = snowflakes
        self._clock = clock
        self._pending: collections.OrderedDict[int, _Pending] = collections.OrderedDict()
        self._by_token: dict[str, int] = {}

    def create(self, index: int, data: dict[str, Any]) -> dict[str, Any]:
        """INTERACTION_CREATE's ``d`` for guild ``index``: ``data`` with Discord's defaults filled in.

        ``data`` may be as short as ``{"name": "ping"}`` (an application command by name) or
        ``{"data": {"name": "ping", "options": [...]}}``; ``channel_id`` defaults to the
        guild's "general", the user to a generated member.
        """
        payload = dict(data)
        kind = payload.setdefault("type", _APPLICATION_COMMAND)
        command_data = payload.get("data")
        if command_data is None:
            command_data = {k: payload.pop(k) for k in ("name", "options", "resolved") if k in payload}
        if kind == _APPLICATION_COMMAND:
            payload["data"] = self._command_data(index, command_data)
        elif command_data:
            payload["data"] = command_data
        gid = world.guild_id(index)
        _, channel = self._channels.channel(payload.get("channel_id") or gid | world.TEXT_CHANNEL)
        who = payload.get("member") or member(index, generated_user_id(index))
        assert who is not None
        interaction_id = self._snowflakes.next()
        token = f"offline-{interaction_id}-{secrets.token_urlsafe(16)}"
        payload.update(
            id=str(interaction_id),
            application_id=str(world.APPLICATION_ID),
            token=token,
            version=1,
            guild_id=str(gid),
            guild={"id": str(gid), "locale": "en-US", "features": []},
            channel=channel,
            channel_id=channel["id"],
            member={"permissions": "2248473465835073", **who},
            app_permissions="8",
            locale=payload.get("locale", "en-US"),
            guild_locale="en-US",
            entitlements=[],
            authorizing_integration_owners={"0": str(gid)},
            context=0,
            attachment_size_limit=ATTACHMENT_SIZE_LIMIT,
        )
        self._remember(_Pending(interaction_id, token, kind, index, int(channel["id"]), self._clock()))
        return payload

    def _command_data(self, index: int, given: dict[str, Any]) -> dict[str, Any]:
        name, kind = given.get("name"), given.get("type", 1)
        if not isinstance(name, str):
            raise RestError(400, 50035, 'an application command interaction needs a "name"')
        command = self._commands.find(name, kind, index)
        if command is None:
            raise RestError(
                400,
                50035,
                f"no application command {name!r} (type {kind}) is registered for guild {world.guild_id(index)} "
                "or globally: Discord only sends interactions for synced commands; run tree.sync() first",
            )
        data = {"id": command["id"], "name": name, "type": kind, "options": given.get("options", [])}
        if "guild_id" in command:
            data["guild_id"] = command["guild_id"]
        if "resolved" in given:
            data["resolved"] = given["resolved"]
        return data

    def _remember(self, pending: _Pending) -> None:
        self._pending[pending.interaction_id] = pending
        self._by_token[pending.token] = pending.interaction_id
        while len(self._pending) > MAX_PENDING_INTERACTIONS:
            _, forgotten = self._pending.popitem(last=False)
            self._by_token.pop(forgotten.token, None)

    # --- the bot's answers ------------------------------------------------------------------------

    def callback(
        self, interaction_id: str, token: str, body: Any
    ) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """``POST /interactions/{id}/{token}/callback``: (the ``with_response`` body, the new
        channel message to announce, if any)."""
        pending = self._pending.get(int(interaction_id)) if interaction_id.isdigit() else None
        now = self._clock()
        if pending is None or pending.token != token or now - pending.created > INTERACTION_RESPONSE_WINDOW:
            raise RestError(404, 10062, "Unknown interaction")
        if pending.callback_type is not None:
            raise RestError(400, 40060, "Interaction has already been acknowledged.")
        if not isinstance(body, dict) or body.get("type") not in _ALLOWED_CALLBACKS.get(pending.kind, set()):
            raise invalid_form(
                "type", "INTERACTION_CALLBACK_TYPE_INVALID", "Interaction callback type is invalid"
            )
        callback_type: int = body["type"]
        data = body.get("data") or {}
        pending.callback_type = callback_type
        answer: dict[str, Any] = {
            "interaction": {
                "id": str(pending.interaction_id),
                "type": pending.kind,
                "response_message_loading": callback_type == 5,
                "response_message_ephemeral": bool(int(data.get("flags") or 0) & _EPHEMERAL),
            },
        }
        if callback_type not in _MESSAGE_CALLBACKS:
            placeholder: dict[str, Any] = {
                "id": None,
                "channel_id": str(pending.channel_id),
                "guild_id": str(world.guild_id(pending.guild)),
            }
            self._channels.record(
                Record(
                    placeholder,
                    "interaction_response",
                    str(pending.interaction_id),
                    callback_type,
                    extra={"data": data},
                )
            )
            answer["resource"] = {"type": callback_type}
            return answer, None
        if callback_type == 5:
            data = {**data, "flags": int(data.get("flags") or 0) | _LOADING, "content": ""}
        message = self._message(
            pending, data, "interaction_response", callback_type, creating=callback_type == 4
        )
        pending.original = message
        answer["interaction"]["response_message_id"] = message["id"]
        answer["resource"] = {"type": callback_type, "message": message}
        return answer, None if message["flags"] & _EPHEMERAL else message

    def _message(
        self, pending: _Pending, data: Any, kind: RecordKind, callback_type: int | None, *, creating: bool
    ) -> dict[str, Any]:
        if creating and not (isinstance(data, dict) and (data.get("content") or data.get("embeds"))):
            raise RestError(400, 50006, "Cannot send an empty message")
        message = self._channels.build(
            pending.channel_id, pending.guild, data, author=bot_author(), member=None, message_type=20
        )
        message.update(
            webhook_id=str(world.APPLICATION_ID),
            application_id=str(world.APPLICATION_ID),
            interaction_metadata={
                "id": str(pending.interaction_id),
                "type": pending.kind,
                "user": bot_author(),
                "authorizing_integration_owners": {"0": str(world.guild_id(pending.guild))},
            },
        )
        ephemeral = bool(message["flags"] & _EPHEMERAL)
        if not ephemeral:
            self._channels.store(message)
        self._channels.record(
            Record(message, kind, str(pending.interaction_id), callback_type, ephemeral=ephemeral)
        )
        return message

    def _webhook(self, application_id: str, token: str) -> _Pending:
        number = self._by_token.get(token)
        pending = None if number is None else self._pending.get(number)
        if (
            application_id != str(world.APPLICATION_ID)
            or pending is None
            or pending.callback_type is None  # Discord: follow-ups only after the initial response
            or self._clock() - pending.created > INTERACTION_TOKEN_LIFETIME
        ):
            raise RestError(404, 10015, "Unknown Webhook")
        return pending

    def followup(self, application_id: str, token: str, body: Any) -> dict[str, Any]:
        """``POST /webhooks/{app}/{token}``: a follow-up message."""
        pending = self._webhook(application_id, token)
        return self._message(pending, body, "followup", None, creating=True)

    def webhook_message(self, application_id: str, token: str, message_id: str) -> dict[str, Any]:
        """The ``@original`` response or a follow-up of this interaction; 404 Unknown Message."""
        pending = self._webhook(application_id, token)
        if message_id == "@original":
            if pending.original is None:
                raise RestError(404, 10008, "Unknown Message")
            return pending.original
        record = self._channels.find_record(message_id)
        if record is None or record.deleted or record.interaction_id != str(pending.interaction_id):
            raise RestError(404, 10008, "Unknown Message")
        return record.message

    def edit_webhook_message(
        self, application_id: str, token: str, message_id: str, body: Any
    ) -> dict[str, Any]:
        """``PATCH /webhooks/{app}/{token}/messages/{id or @original}``."""
        message = self.webhook_message(application_id, token, message_id)
        self._channels.apply_edit(message, body)
        return message

    def delete_webhook_message(self, application_id: str, token: str, message_id: str) -> dict[str, Any]:
        """``DELETE /webhooks/{app}/{token}/messages/{id or @original}``."""
        message = self.webhook_message(application_id, token, message_id)
        self._channels.forget(message)
        pending = self._webhook(application_id, token)
        if pending.original is message:
            pending.original = None
        return message
