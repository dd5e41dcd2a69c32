"""The calls a fleet member makes through the bridge, whatever carries them.

A machine's :class:`~zmqcross.Client` sends them on its DEALER socket; a bot's
:class:`~zmqcross.Shard` sends them up its cluster's pipe, and its machine forwards
them. Both hold a :class:`FleetCalls` that builds the same messages; each gives it only
how a request id is drawn and how a message leaves and its answer comes back
(``next_id`` and ``exchange``), and delegates its public calls to it.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from ._fanout import eval_outcome, eval_request, guild_of
from .errors import ZmqcrossError
from .protocol import GuildRequest, Message, Request, dump, result_of

__all__ = ["Exchange", "FleetCalls"]

Exchange = Callable[[Message, int, float, str], Awaitable[Message | ZmqcrossError]]
"""Send ``message`` (its request id, its timeout, what it is for errors); its answer or error."""


class FleetCalls:
    """broadcast_eval, requests to the bridge, its services, other clients and guilds.

    ``next_id`` draws a request id and ``exchange`` carries a request and returns its
    outcome; ``request_timeout`` applies to calls that do not give their own.
    """

    __slots__ = ("_exchange", "_next_request_id", "request_timeout")

    def __init__(self, *, next_id: Callable[[], int], exchange: Exchange, request_timeout: float) -> None:
        self._next_request_id = next_id
        self._exchange = exchange
        self.request_timeout = float(request_timeout)

    async def broadcast_eval(
        self,
        script: str | Callable[..., Any],
        *,
        context: Any = None,
        timeout: float | None = None,
        clusters: Sequence[int] | None = None,
        shards: Sequence[int] | None = None,
        guild_id: int | None = None,
        return_exceptions: bool = False,
    ) -> list[Any]:
        """Run ``script`` on every cluster of every machine; one result per cluster, in cluster id order.

        See :meth:`zmqcross.Bridge.broadcast_eval`; raises :class:`BroadcastEvalError` if any
        cluster failed, unless ``return_exceptions``.
        """
        timeout = self.timeout_or_default(timeout)
        request_id = self._next_request_id()
        msg = eval_request(
            request_id,
            script,
            timeout=timeout,
            context=context,
            clusters=clusters,
            shards=shards,
            guild_id=guild_id,
        )
        outcome = await self._exchange(msg, request_id, timeout, "broadcast_eval")
        return eval_outcome(outcome, return_exceptions=return_exceptions)

    async def request(self, data: Any, *, timeout: float | None = None) -> Any:
        """Send a custom request to the bridge (its ``client_request`` event); return the answer."""
        return await self._request(data, timeout=timeout, what="request to the bridge")

    async def call_service(self, service: str, data: Any, *, timeout: float | None = None) -> Any:
        """Call a bridge service (see :meth:`Bridge.add_service`), such as the cache; return its answer."""
        return await self._request(data, timeout=timeout, what=f"{service} service call", service=service)

    async def request_to_client(
        self,
        data: Any,
        *,
        client_id: str | None = None,
        agent: str | None = None,
        timeout: float | None = None,
    ) -> Any:
        """Send a custom request to another client through the bridge; return its answer.

        Name the client by ``client_id``, or by ``agent`` when exactly one client has it.
        Raises :class:`ClientNotFound` if no (or more than one) client matches.
        """
        if (client_id is None) == (agent is None):
            raise ValueError("name the target with exactly one of client_id= or agent=")
        target = f"client {client_id!r}" if client_id is not None else f"the client with agent {agent!r}"
        return await self._request(
            data, timeout=timeout, what=f"request to {target}", target=client_id, agent=agent
        )

    async def request_to_guild(
        self, data: Any, *, guild_id: int | None = None, timeout: float | None = None
    ) -> Any:
        """Send a custom request to the cluster that owns ``guild_id`` (or ``data["guild_id"]``)."""
        timeout = self.timeout_or_default(timeout)
        request_id = self._next_request_id()
        msg = GuildRequest(
            id=request_id, deadline=time.time() + timeout, guild_id=guild_of(data, guild_id), data=dump(data)
        )
        return result_of(await self._exchange(msg, request_id, timeout, f"request to guild {msg.guild_id}"))

    async def _request(self, data: Any, *, timeout: float | None, what: str, **route: str | None) -> Any:
        timeout = self.timeout_or_default(timeout)
        request_id = self._next_request_id()
        msg = Request(id=request_id, deadline=time.time() + timeout, data=dump(data), **route)
        return result_of(await self._exchange(msg, request_id, timeout, what))

    def timeout_or_default(self, timeout: float | None) -> float:
        """``timeout`` as a float, or the default request timeout for None."""
        return self.request_timeout if timeout is None else float(timeout)
