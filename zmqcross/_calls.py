"""The calls a fleet member makes through the bridge, whatever carries them.

A machine's :class:`~zmqcross.Client` sends them on its DEALER socket; a bot's
:class:`~zmqcross.Shard` sends them up its cluster's pipe, and its machine forwards
them. Both hold a :class:`FleetCalls` that builds the same messages; each gives it only
how a request id is drawn and how a message leaves and its answer comes back
(``next_id`` and ``exchange``), and delegates its public calls to it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from ._fanout import eval_outcome, eval_request, guild_of
from ._readiness import READY_POLL_INTERVAL, describe_unready, unready, wanted
from .errors import ConnectionLost, RequestTimeout, ZmqcrossError
from .protocol import STATUS_SERVICE, GuildRequest, Message, Request, dump, result_of
from .status import FleetStatus

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

    async def fleet_status(self, *, timeout: float | None = None) -> FleetStatus:
        """The bridge's view of the whole fleet (see :meth:`Bridge.status`)."""
        return FleetStatus.from_json(await self.call_service(STATUS_SERVICE, None, timeout=timeout))

    async def wait_ready(
        self, *, clusters: Sequence[int] | None = None, timeout: float | None = None
    ) -> FleetStatus:
        """Wait until every cluster of the plan (or each of ``clusters``) is ready on some machine.

        Asks the bridge for the fleet's status every :data:`READY_POLL_INTERVAL` seconds and
        returns the first status in which they all are. ``timeout`` None waits as long as it
        takes; otherwise :class:`RequestTimeout` says which clusters are not ready and why
        (starting on a machine, failed there, not running on any machine). A bridge that
        does not answer for a while (restarting) is asked again until the deadline.
        """
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + float(timeout)
        reasons: dict[int, str] | None = None  # from the latest status that arrived
        failure: ZmqcrossError | None = None
        while True:
            left = self.request_timeout if deadline is None else deadline - loop.time()
            try:
                # A floor, so the last query before the deadline can still be answered.
                status = await self.fleet_status(timeout=max(min(left, self.request_timeout), 0.05))
            except (RequestTimeout, ConnectionLost) as exc:
                failure = exc
            else:
                failure = None
                reasons = unready(status, wanted(status, clusters))
                if not reasons:
                    return status
            if timeout is not None and deadline is not None and loop.time() >= deadline:
                raise RequestTimeout(_not_ready(reasons, failure, float(timeout)))
            left = READY_POLL_INTERVAL if deadline is None else deadline - loop.time()
            await asyncio.sleep(max(min(READY_POLL_INTERVAL, left), 0.0))

    async def _request(self, data: Any, *, timeout: float | None, what: str, **route: str | None) -> Any:
        timeout = self.timeout_or_default(timeout)
        request_id = self._next_request_id()
        msg = Request(id=request_id, deadline=time.time() + timeout, data=dump(data), **route)
        return result_of(await self._exchange(msg, request_id, timeout, what))

    def timeout_or_default(self, timeout: float | None) -> float:
        """``timeout`` as a float, or the default request timeout for None."""
        return self.request_timeout if timeout is None else float(timeout)


def _not_ready(reasons: dict[int, str] | None, failure: ZmqcrossError | None, waited: float) -> str:
    # The latest status that arrived says most; a failed query after it is only a footnote.
    if reasons is None:
        return f"no fleet status within {waited:g} s: {failure.message if failure else 'no answer'}"
    message = describe_unready(reasons, waited=waited)
    if failure is not None:
        message += f" (the last status query failed: {failure.message})"
    return message
