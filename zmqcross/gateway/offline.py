"""Test and inspection endpoints of the offline Discord (``/_offline/...``; no Discord equivalent).

``POST /_offline/dispatch`` plays the world: it delivers an event to the live gateway sessions
of the shard that holds a guild, filling in Discord's fields for a user's message or a slash
command. ``GET /_offline/messages`` shows what the bot sent, so a test can say "!ping" and read
"pong". ``GET /_offline/identifies`` and ``GET /_offline/sessions`` show every IDENTIFY
(accepted or refused, and why) and the live sessions. ``POST /_offline/invalidate`` ends a
shard's sessions the way Discord invalidates one (op 9, not resumable), so a test can watch
its bot IDENTIFY again; ``POST /_offline/disconnect`` drops a shard's connections (resumable),
and ``POST /_offline/refuse`` makes its IDENTIFYs and RESUMEs fail until lifted (a shard
that cannot come back). Request and answer shapes are in the README ("Offline Discord
endpoints").
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import orjson
from aiohttp import web

from . import guilds as world
from .interactions import Interactions
from .messages import Channels, RestError
from .rest import json_response

__all__ = ["GatewayInspection", "OfflineApi", "ShardDirectory"]


class ShardDirectory(Protocol):
    """What the gateway knows about its sessions, and how it delivers to them."""

    def live_shards(self, guild_id: int) -> list[tuple[int, int]]:
        """``(shard_id, shard_count)`` of every live session that holds ``guild_id``."""
        ...

    def connected_shards(self) -> list[tuple[int, int]]:
        """``(shard_id, shard_count)`` of every live session."""
        ...

    async def dispatch_guild(self, guild_id: int, event: str, data: Any) -> int: ...


class GatewayInspection(Protocol):
    """What the gateway shows of its IDENTIFYs and sessions (JSON-ready records)."""

    def identifies(self) -> list[dict[str, Any]]: ...

    def live_sessions(self) -> list[dict[str, Any]]: ...

    async def invalidate(self, shard_id: int) -> int: ...

    async def disconnect_shard(self, shard_id: int) -> int: ...

    def refuse_shard(self, shard_id: int, refuse: bool = True) -> None: ...


def _error(status: int, message: str) -> web.Response:
    return json_response({"message": message, "code": 0}, status)


class OfflineApi:
    """The ``/_offline`` routes over the gateway's sessions and the REST stores."""

    def __init__(
        self,
        *,
        shards: ShardDirectory,
        gateway: GatewayInspection,
        channels: Channels,
        interactions: Interactions,
        guild_count: int,
        clock: Callable[[], float],
    ) -> None:
        self._shards = shards
        self._gateway = gateway
        self._channels = channels
        self._interactions = interactions
        self._guild_count = guild_count
        self._clock = clock

    def add_routes(self, router: web.UrlDispatcher) -> None:
        """Register the ``/_offline`` routes on ``router``."""
        router.add_post("/_offline/dispatch", self._dispatch)
        router.add_get("/_offline/messages", self._messages)
        router.add_get("/_offline/identifies", self._identifies)
        router.add_get("/_offline/sessions", self._sessions)
        router.add_post("/_offline/invalidate", self._invalidate)
        router.add_post("/_offline/disconnect", self._disconnect)
        router.add_post("/_offline/refuse", self._refuse)

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            return _error(400, 'the body must be JSON: {"guild_id": ..., "event": ..., "data": {...}}')
        if not isinstance(body, dict) or not isinstance(body.get("event"), str) or not body["event"]:
            return _error(
                400, 'the body needs "event" (a dispatch name such as MESSAGE_CREATE) and "guild_id"'
            )
        event: str = body["event"].upper()
        data = body.get("data", {})
        raw_guild = body.get("guild_id")
        index = world.guild_index(raw_guild, self._guild_count) if isinstance(raw_guild, int | str) else None
        if index is None:
            return _error(
                404,
                f"guild_id {body.get('guild_id')!r} is not one of the offline Discord's {self._guild_count} guilds "
                "(guild i has id zmqcross.gateway.guild_id(i))",
            )
        gid = world.guild_id(index)
        holders = self._shards.live_shards(gid)
        if not holders:
            connected = sorted(set(self._shards.connected_shards()))
            return _error(
                404,
                f"no live gateway session holds guild {gid}: it belongs to shard (guild_id >> 22) % shard_count; "
                f"connected shards (id, count): {connected or 'none'}",
            )
        if not isinstance(data, dict):
            return _error(400, '"data" must be a JSON object')
        try:
            if event == "MESSAGE_CREATE":
                data = self._channels.user_message(index, data)
            elif event == "INTERACTION_CREATE":
                data = self._interactions.create(index, data)
            else:
                data = {"guild_id": str(gid), **data}
        except RestError as error:
            return _error(400, error.message)
        delivered = await self._shards.dispatch_guild(gid, event, data)
        shard_id, shard_count = holders[0]
        return json_response(
            {
                "event": event,
                "guild_id": str(gid),
                "shard_id": shard_id,
                "shard_count": shard_count,
                "sessions": len(holders),
                "delivered": delivered,
                "data": data,
            }
        )

    async def _messages(self, request: web.Request) -> web.StreamResponse:
        channel_id = request.query.get("channel_id")
        guild_id = request.query.get("guild_id")
        return json_response({"messages": self._channels.records(channel_id=channel_id, guild_id=guild_id)})

    async def _identifies(self, request: web.Request) -> web.StreamResponse:
        return json_response({"identifies": self._gateway.identifies()})

    async def _sessions(self, request: web.Request) -> web.StreamResponse:
        return json_response({"sessions": self._gateway.live_sessions()})

    async def _invalidate(self, request: web.Request) -> web.StreamResponse:
        _, shard_id = await _shard_body(request)
        if shard_id is None:
            return _error(400, 'the body must be JSON: {"shard_id": <int>}')
        return json_response({"shard_id": shard_id, "invalidated": await self._gateway.invalidate(shard_id)})

    async def _disconnect(self, request: web.Request) -> web.StreamResponse:
        _, shard_id = await _shard_body(request)
        if shard_id is None:
            return _error(400, 'the body must be JSON: {"shard_id": <int>}')
        return json_response({"shard_id": shard_id, "closed": await self._gateway.disconnect_shard(shard_id)})

    async def _refuse(self, request: web.Request) -> web.StreamResponse:
        body, shard_id = await _shard_body(request)
        refuse = body.get("refuse", True) if isinstance(body, dict) else None
        if shard_id is None or type(refuse) is not bool:
            return _error(400, 'the body must be JSON: {"shard_id": <int>, "refuse": true|false}')
        self._gateway.refuse_shard(shard_id, refuse)
        return json_response({"shard_id": shard_id, "refused": refuse})


async def _shard_body(request: web.Request) -> tuple[Any, int | None]:
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        return None, None
    shard_id = body.get("shard_id") if isinstance(body, dict) else None
    return body, shard_id if type(shard_id) is int else None
