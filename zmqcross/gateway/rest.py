"""The offline Discord's REST routes for what a bot's commands do: aiohttp handlers over the pure
stores of :mod:`.messages`, :mod:`.interactions` and :mod:`.people`, rate-limited by
:mod:`.ratelimit`.

Every answer has Discord's shape and status (errors as ``{"message", "code"}``, 204 with no
body where Discord sends none) and, on rate-limited routes, Discord's ``X-RateLimit-*``
headers. Messages the bot sends, edits or deletes are also announced on the gateway
(MESSAGE_CREATE/UPDATE/DELETE to the shard holding the guild), as Discord does.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, Final, Protocol

import orjson
from aiohttp import web

from . import guilds as world
from . import people
from .interactions import Commands, Interactions
from .messages import Channels, RestError, invalid_form
from .ratelimit import RateLimiter

__all__ = ["EventSink", "RestApi", "json_response"]

log = logging.getLogger("zmqcross.gateway")

_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# Routes Discord does not count against the global limit, and that need no bot token.
_INTERACTION_ROUTES: Final = ("/interactions/", "/webhooks/")


class EventSink(Protocol):
    """Where the REST layer announces what changed: the gateway's sessions of a guild's shard."""

    async def dispatch_guild(self, guild_id: int, event: str, data: Any) -> int: ...


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    """A JSON answer with exactly ``application/json``: discord.py compares the header verbatim,
    and the "; charset=utf-8" that ``web.json_response`` appends makes it treat the body as text."""
    return web.Response(
        body=orjson.dumps(data), status=status, content_type="application/json", headers=headers
    )


def _int_param(request: web.Request, name: str, default: int | None) -> int | None:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError:
        raise invalid_form(name, "NUMBER_TYPE_COERCE", f"Value {raw!r} is not int.") from None


async def _body(request: web.Request) -> Any:
    if not request.can_read_body:
        return {}
    try:
        return orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        raise RestError(400, 50109, "The request body contains invalid JSON.") from None


class RestApi:
    """The REST routes, built with the stores they act on, the clock and the gateway to announce on."""

    def __init__(
        self,
        *,
        channels: Channels,
        commands: Commands,
        interactions: Interactions,
        events: EventSink,
        guild_count: int,
        prefix: str,
        clock: Callable[[], float],
    ) -> None:
        self._channels = channels
        self._commands = commands
        self._interactions = interactions
        self._events = events
        self._guild_count = guild_count
        self._prefix = prefix
        self._clock = clock
        self._limiter = RateLimiter()

    def is_token_free(self, path: str) -> bool:
        """Interaction callbacks and follow-ups authenticate with the token in their URL."""
        return path.startswith(tuple(self._prefix + p for p in _INTERACTION_ROUTES))

    def add_routes(self, router: web.UrlDispatcher) -> None:
        """Register every route on ``router``."""
        routes: list[tuple[str, str, _Handler]] = [
            ("GET", "/users/{user_id}", self._user),
            ("GET", "/channels/{channel_id}", self._channel),
            ("POST", "/channels/{channel_id}/messages", self._send),
            ("GET", "/channels/{channel_id}/messages", self._history),
            ("GET", "/channels/{channel_id}/messages/{message_id}", self._get_message),
            ("PATCH", "/channels/{channel_id}/messages/{message_id}", self._edit),
            ("DELETE", "/channels/{channel_id}/messages/{message_id}", self._delete),
            ("POST", "/channels/{channel_id}/typing", self._typing),
            ("GET", "/guilds/{guild_id}", self._guild),
            ("GET", "/guilds/{guild_id}/channels", self._guild_channels),
            ("GET", "/guilds/{guild_id}/roles", self._roles),
            ("GET", "/guilds/{guild_id}/members", self._members),
            ("GET", "/guilds/{guild_id}/members/{user_id}", self._member),
            ("GET", "/applications/{application_id}/commands", self._get_commands),
            ("PUT", "/applications/{application_id}/commands", self._put_commands),
            ("GET", "/applications/{application_id}/guilds/{guild_id}/commands", self._get_commands),
            ("PUT", "/applications/{application_id}/guilds/{guild_id}/commands", self._put_commands),
            ("POST", "/interactions/{interaction_id}/{token}/callback", self._callback),
            ("POST", "/webhooks/{application_id}/{token}", self._followup),
            ("GET", "/webhooks/{application_id}/{token}/messages/{message_id}", self._webhook_message),
            ("PATCH", "/webhooks/{application_id}/{token}/messages/{message_id}", self._edit_webhook_message),
            (
                "DELETE",
                "/webhooks/{application_id}/{token}/messages/{message_id}",
                self._delete_webhook_message,
            ),
        ]
        for method, route, handler in routes:
            router.add_route(method, self._prefix + route, self._limited(method, route, handler))

    def _limited(self, method: str, route: str, handler: _Handler) -> _Handler:
        """``handler`` behind its rate limit, with Discord's errors and headers on every answer."""
        free = route.startswith(_INTERACTION_ROUTES)

        async def limited(request: web.Request) -> web.StreamResponse:
            info = request.match_info
            # Discord's major parameters: the channel, guild or webhook a bucket is kept per.
            major = info.get("channel_id") or info.get("guild_id") or info.get("token") or ""
            verdict = self._limiter.take(method, route, major, self._clock(), counts_globally=not free)
            if verdict.retry_after is not None:
                log.info(
                    "rate limited: %s %s (retry after %.3f s)", method, request.path, verdict.retry_after
                )
                body = {
                    "message": "You are being rate limited.",
                    "retry_after": round(verdict.retry_after, 3),
                    "global": verdict.is_global,
                    "code": 0,
                }
                return json_response(body, 429, verdict.headers())
            try:
                response = await handler(request)
            except RestError as error:
                response = json_response(error.body(), error.status)
            response.headers.update(verdict.headers())
            return response

        return limited

    # --- users, channels, guilds ------------------------------------------------------------------

    async def _user(self, request: web.Request) -> web.StreamResponse:
        raw = request.match_info["user_id"]
        found = people.user(int(raw)) if raw.isdigit() else None
        if found is None:
            raise RestError(404, 10013, "Unknown User")
        return json_response(found)

    async def _channel(self, request: web.Request) -> web.StreamResponse:
        _, channel = self._channels.channel(request.match_info["channel_id"])
        return json_response(channel)

    async def _guild(self, request: web.Request) -> web.StreamResponse:
        index = self._channels.guild(request.match_info["guild_id"])
        guild = world.synthetic_guild(index)
        count = guild["member_count"]
        # REST's guild object has no gateway-only fields; with_counts adds the approximations.
        for key in (
            "channels",
            "members",
            "member_count",
            "joined_at",
            "large",
            "unavailable",
            "lazy",
            "threads",
        ):
            guild.pop(key, None)
        for key in (
            "voice_states",
            "presences",
            "stage_instances",
            "guild_scheduled_events",
            "soundboard_sounds",
        ):
            guild.pop(key, None)
        if request.query.get("with_counts", "").lower() in ("1", "true"):
            guild.update(approximate_member_count=count, approximate_presence_count=0)
        return json_response(guild)

    async def _guild_channels(self, request: web.Request) -> web.StreamResponse:
        index = self._channels.guild(request.match_info["guild_id"])
        channels = [self._channels.channel(c["id"])[1] for c in world.synthetic_guild(index)["channels"]]
        return json_response(channels)

    async def _roles(self, request: web.Request) -> web.StreamResponse:
        index = self._channels.guild(request.match_info["guild_id"])
        return json_response(world.synthetic_guild(index)["roles"])

    async def _members(self, request: web.Request) -> web.StreamResponse:
        index = self._channels.guild(request.match_info["guild_id"])
        limit = _int_param(request, "limit", 1)
        after = _int_param(request, "after", 0)
        assert limit is not None and after is not None
        if not 1 <= limit <= people.MAX_MEMBERS_PAGE:
            raise invalid_form(
                "limit", "NUMBER_TYPE_MAX", f"Must be between 1 and {people.MAX_MEMBERS_PAGE}."
            )
        return json_response(people.members_page(index, limit=limit, after=after))

    async def _member(self, request: web.Request) -> web.StreamResponse:
        index = self._channels.guild(request.match_info["guild_id"])
        raw = request.match_info["user_id"]
        found = people.member(index, int(raw)) if raw.isdigit() else None
        if found is None:
            raise RestError(404, 10007, "Unknown Member")
        return json_response(found)

    # --- messages ----------------------------------------------------------------------------------

    async def _announce(self, event: str, message: dict[str, Any]) -> None:
        await self._events.dispatch_guild(int(message["guild_id"]), event, message)

    async def _send(self, request: web.Request) -> web.StreamResponse:
        message = self._channels.create(request.match_info["channel_id"], await _body(request))
        await self._announce("MESSAGE_CREATE", message)
        return json_response(message)

    async def _history(self, request: web.Request) -> web.StreamResponse:
        limit = _int_param(request, "limit", 50)
        assert limit is not None
        history = self._channels.history(
            request.match_info["channel_id"],
            limit=limit,
            before=_int_param(request, "before", None),
            after=_int_param(request, "after", None),
            around=_int_param(request, "around", None),
        )
        return json_response(history)

    async def _get_message(self, request: web.Request) -> web.StreamResponse:
        info = request.match_info
        return json_response(self._channels.get(info["channel_id"], info["message_id"]))

    async def _edit(self, request: web.Request) -> web.StreamResponse:
        info = request.match_info
        message = self._channels.edit(info["channel_id"], info["message_id"], await _body(request))
        await self._announce("MESSAGE_UPDATE", message)
        return json_response(message)

    async def _delete(self, request: web.Request) -> web.StreamResponse:
        info = request.match_info
        message = self._channels.delete(info["channel_id"], info["message_id"])
        gone = {k: message[k] for k in ("id", "channel_id", "guild_id")}
        await self._announce("MESSAGE_DELETE", gone)
        return web.Response(status=204)

    async def _typing(self, request: web.Request) -> web.StreamResponse:
        self._channels.text_channel(request.match_info["channel_id"])
        return web.Response(status=204)

    # --- application commands and interactions -----------------------------------------------------

    def _scope(self, request: web.Request) -> int | None:
        if request.match_info["application_id"] != str(world.APPLICATION_ID):
            raise RestError(403, 50001, "Missing Access")
        guild = request.match_info.get("guild_id")
        return None if guild is None else self._channels.guild(guild)

    async def _get_commands(self, request: web.Request) -> web.StreamResponse:
        return json_response(self._commands.list(self._scope(request)))

    async def _put_commands(self, request: web.Request) -> web.StreamResponse:
        scope = self._scope(request)
        return json_response(self._commands.put(scope, await _body(request)))

    async def _callback(self, request: web.Request) -> web.StreamResponse:
        info = request.match_info
        answer, message = self._interactions.callback(
            info["interaction_id"], info["token"], await _body(request)
        )
        if message is not None:
            await self._announce("MESSAGE_CREATE", message)
        if request.query.get("with_response", "").lower() in ("1", "true"):
            return json_response(answer)
        return web.Response(status=204)

    async def _followup(self, request: web.Request) -> web.StreamResponse:
        info = request.match_info
        message = self._interactions.followup(info["application_id"], info["token"], await _body(request))
        if not message["flags"] & (1 << 6):
            await self._announce("MESSAGE_CREATE", message)
        if request.query.get("wait", "").lower() in ("1", "true"):
            return json_response(message)
        return web.Response(status=204)

    async def _webhook_message(self, request: web.Request) -> web.StreamResponse:
        info = request.match_info
        return json_response(
            self._interactions.webhook_message(info["application_id"], info["token"], info["message_id"])
        )

    async def _edit_webhook_message(self, request: web.Request) -> web.StreamResponse:
        info = request.match_info
        message = self._interactions.edit_webhook_message(
            info["application_id"], info["token"], info["message_id"], await _body(request)
        )
        if not message["flags"] & (1 << 6):
            await self._announce("MESSAGE_UPDATE", message)
        return json_response(message)

    async def _delete_webhook_message(self, request: web.Request) -> web.StreamResponse:
        info = request.match_info
        message = self._interactions.delete_webhook_message(
            info["application_id"], info["token"], info["message_id"]
        )
        await self._announce("MESSAGE_DELETE", {k: message[k] for k in ("id", "channel_id", "guild_id")})
        return web.Response(status=204)
