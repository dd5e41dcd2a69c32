"""The fleet as a bot sees it: ``bot.machine = Shard(bot.cluster)``.

Every call goes up the cluster's pipe to its machine agent, which sends it to the
bridge as its own request; answers come back the same way. Data travels as data: a
payload full of quotes and backslashes arrives as it was sent.
"""

from __future__ import annotations

from typing import Any

from .calls import FleetCalls
from .cluster.child import ClusterClient
from .errors import ZmqcrossError
from .protocol import DEFAULT_TIMEOUT, Message, Send, dump

__all__ = ["Shard"]


class Shard(FleetCalls):
    """Cross-machine calls from inside a bot, through its :class:`ClusterClient`.

    The calls (``broadcast_eval``, ``request``, ``call_service``, ``request_to_client``,
    ``request_to_guild``) are :class:`~zmqcross.Client`'s, carried by the pipe.
    """

    def __init__(self, cluster: ClusterClient, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.cluster = cluster
        self._request_timeout = float(timeout)

    async def send(self, data: Any) -> None:
        """Send a custom message to the bridge (its ``client_message`` event)."""
        await self.cluster.send(Send(data=dump(data)))

    def _next_request_id(self) -> int:
        return self.cluster.next_id()

    async def _exchange(
        self, msg: Message, request_id: int, timeout: float, what: str
    ) -> Message | ZmqcrossError:
        return await self.cluster.call(msg, request_id, timeout, what)
