"""The fleet as a bot sees it: ``bot.machine = Shard(bot.cluster)``.

Every call goes up the cluster's pipe to its machine agent, which sends it to the
bridge as its own request; answers come back the same way. Data travels as data: a
payload full of quotes and backslashes arrives as it was sent.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from .cluster.child import ClusterClient
from .fanout import eval_outcome, eval_request, guild_of
from .protocol import DEFAULT_TIMEOUT, GuildRequest, Request, Send, dump, result_of

__all__ = ["Shard"]


class Shard:
    """Cross-machine calls from inside a bot, through its :class:`ClusterClient`."""

    def __init__(self, cluster: ClusterClient, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.cluster = cluster
        self._timeout = timeout

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
        """Run ``script`` on every cluster of every machine (or those chosen); one result each.

        See :meth:`zmqcross.Client.broadcast_eval` for the rules.
        """
        timeout = self._timeout if timeout is None else float(timeout)
        request_id = self.cluster.next_id()
        msg = eval_request(
            request_id,
            script,
            timeout=timeout,
            context=context,
            clusters=clusters,
            shards=shards,
            guild_id=guild_id,
        )
        outcome = await self.cluster.call(msg, request_id, timeout, "broadcast_eval")
        return eval_outcome(outcome, return_exceptions=return_exceptions)

    async def send(self, data: Any) -> None:
        """Send a custom message to the bridge (its ``client_message`` event)."""
        await self.cluster.send(Send(data=dump(data)))

    async def request(self, data: Any, *, timeout: float | None = None) -> Any:
        """Send a custom request to the bridge (its ``client_request`` event); return the answer."""
        return await self._request(data, timeout, "request to the bridge")

    async def call_service(self, service: str, data: Any, *, timeout: float | None = None) -> Any:
        """Call a bridge service (such as the cache) through this cluster's machine."""
        return await self._request(data, timeout, f"{service} service call", service=service)

    async def request_to_client(
        self,
        data: Any,
        *,
        client_id: str | None = None,
        agent: str | None = None,
        timeout: float | None = None,
    ) -> Any:
        """Send a custom request to a client (machine or dashboard) through the bridge."""
        if (client_id is None) == (agent is None):
            raise ValueError("name the target with exactly one of client_id= or agent=")
        return await self._request(data, timeout, "request to a client", target=client_id, agent=agent)

    async def request_to_guild(
        self, data: Any, *, guild_id: int | None = None, timeout: float | None = None
    ) -> Any:
        """Send a custom request to the cluster that owns ``guild_id`` (or ``data["guild_id"]``)."""
        timeout = self._timeout if timeout is None else float(timeout)
        request_id = self.cluster.next_id()
        msg = GuildRequest(
            id=request_id, deadline=time.time() + timeout, guild_id=guild_of(data, guild_id), data=dump(data)
        )
        return result_of(await self.cluster.call(msg, request_id, timeout, "request_to_guild"))

    async def _request(self, data: Any, timeout: float | None, what: str, **route: str | None) -> Any:
        timeout = self._timeout if timeout is None else float(timeout)
        request_id = self.cluster.next_id()
        msg = Request(id=request_id, deadline=time.time() + timeout, data=dump(data), **route)
        return result_of(await self.cluster.call(msg, request_id, timeout, what))
