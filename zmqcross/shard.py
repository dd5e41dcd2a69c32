"""The fleet as a bot sees it: ``bot.machine = Shard(bot.cluster)``.

Every call goes up the cluster's pipe to its machine agent, which sends it to the
bridge as its own request; answers come back the same way. Data travels as data: a
payload full of quotes and backslashes arrives as it was sent.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from ._calls import FleetCalls
from .cluster._child import ClusterClient
from .errors import ZmqcrossError
from .protocol import DEFAULT_TIMEOUT, Message, Send, dump
from .status import FleetStatus

__all__ = ["Shard"]


class Shard:
    """Cross-machine calls from inside a bot, through its :class:`ClusterClient`.

    The calls (``broadcast_eval``, ``request``, ``call_service``, ``request_to_client``,
    ``request_to_guild``, ``fleet_status``) are :class:`~zmqcross.Client`'s, carried by the
    pipe. :meth:`wait_ready` waits for the rest of the fleet, say before a fleet-wide
    ``broadcast_eval`` in a task started at ready.
    """

    def __init__(self, cluster: ClusterClient, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.cluster = cluster
        self._calls = FleetCalls(next_id=self._next_id, exchange=self._exchange, request_timeout=timeout)

    async def send(self, data: Any) -> None:
        """Send a custom message to the bridge (its ``client_message`` event)."""
        await self.cluster.send(Send(data=dump(data)))

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
        """Run ``script`` on every cluster of every machine; see :meth:`zmqcross.Client.broadcast_eval`."""
        return await self._calls.broadcast_eval(
            script,
            context=context,
            timeout=timeout,
            clusters=clusters,
            shards=shards,
            guild_id=guild_id,
            return_exceptions=return_exceptions,
        )

    async def request(self, data: Any, *, timeout: float | None = None) -> Any:
        """Send a custom request to the bridge (its ``client_request`` event); return the answer."""
        return await self._calls.request(data, timeout=timeout)

    async def call_service(self, service: str, data: Any, *, timeout: float | None = None) -> Any:
        """Call a bridge service (see :meth:`Bridge.add_service`), such as the cache; return its answer."""
        return await self._calls.call_service(service, data, timeout=timeout)

    async def request_to_client(
        self,
        data: Any,
        *,
        client_id: str | None = None,
        agent: str | None = None,
        timeout: float | None = None,
    ) -> Any:
        """Send a custom request to another client through the bridge; see :meth:`zmqcross.Client.request_to_client`."""
        return await self._calls.request_to_client(data, client_id=client_id, agent=agent, timeout=timeout)

    async def request_to_guild(
        self, data: Any, *, guild_id: int | None = None, timeout: float | None = None
    ) -> Any:
        """Send a custom request to the cluster that owns ``guild_id`` (or ``data["guild_id"]``)."""
        return await self._calls.request_to_guild(data, guild_id=guild_id, timeout=timeout)

    async def fleet_status(self, *, timeout: float | None = None) -> FleetStatus:
        """The bridge's view of the whole fleet: machines, their clusters and states (see :meth:`Bridge.status`)."""
        return await self._calls.fleet_status(timeout=timeout)

    async def wait_ready(
        self, *, clusters: Sequence[int] | None = None, timeout: float | None = None
    ) -> FleetStatus:
        """Wait until every cluster of the fleet (or each of ``clusters``) is ready; return that status.

        Clusters become ready one after another, as their IDENTIFYs get their turns: a
        ``broadcast_eval`` made as soon as this cluster is ready fails on the others
        ("cluster 1 is starting, not ready"); wait for them first::

            await bot.machine.wait_ready(timeout=120)
            counts = await bot.machine.broadcast_eval("len(bot.guilds)")

        ``timeout`` None waits as long as it takes. When it runs out,
        :class:`~zmqcross.RequestTimeout` names each cluster not ready and why: starting
        or failed on a machine (with its exit code and restarts), or not running on any
        machine. A cluster id outside the plan raises :class:`~zmqcross.ConfigurationError`.
        """
        return await self._calls.wait_ready(clusters=clusters, timeout=timeout)

    def _next_id(self) -> int:
        return self.cluster.next_id()

    async def _exchange(
        self, msg: Message, request_id: int, timeout: float, what: str
    ) -> Message | ZmqcrossError:
        return await self.cluster.call(msg, request_id, timeout, what)
