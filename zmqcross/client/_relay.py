"""A client's fleet-facing side: evals and guild requests, fleet status and reshards, and,
for a machine, relaying the bridge's work to its clusters and their requests to the bridge.

Mixed into :class:`zmqcross.Client`; the link to the bridge (sockets, registration,
heartbeats) stays in :mod:`zmqcross.client`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..calls import FleetCalls
from ..errors import ClientNotFound, ConnectionLost, ZmqcrossError
from ..events import EventEmitter
from ..planning import ShardData
from ..protocol import (
    RESHARD_SERVICE,
    STATUS_SERVICE,
    Assignment,
    EvalRequest,
    GuildRequest,
    Leaving,
    Message,
    Register,
    Request,
    Send,
    Welcome,
    encode,
    readdress,
)
from ..relaying import EvalRoute
from ..status import FleetStatus
from ..transport import OpenRequests
from ._link import _READY

if TYPE_CHECKING:
    from ..cluster.manager import ClusterManager

__all__ = ["FleetClient"]

log = logging.getLogger("zmqcross.client")


class FleetClient(FleetCalls):
    """Evals, guild requests, fleet administration, and a machine's relaying."""

    # Provided by zmqcross.client.Client, which mixes this class in.
    _open: OpenRequests
    _events: EventEmitter
    _state: str
    _machine_id: str
    _request_timeout: float
    _manager: ClusterManager | None
    _tasks: list[asyncio.Task[None]]

    if TYPE_CHECKING:

        def _send(self, msg: Message) -> None: ...

        def _send_frames(self, frames: list[bytes]) -> None: ...

        def _answer(self, msg: Message) -> None: ...

        def _register_message(self, request_id: int, lifetime: float) -> Register: ...

        def set_hosting(self, shard_data: ShardData | None) -> None: ...

    async def fleet_status(self, *, timeout: float | None = None) -> FleetStatus:
        """The bridge's view of the whole fleet (see :meth:`Bridge.status`)."""
        return FleetStatus.from_json(await self.call_service(STATUS_SERVICE, None, timeout=timeout))

    async def reshard(
        self,
        *,
        total_shards: int | None = None,
        shards_per_cluster: int | None = None,
        total_machines: int | None = None,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        """Ask the bridge to switch the fleet to a new plan (see :meth:`Bridge.reshard`); needs ``admin``."""
        options = {
            name: value
            for name, value in (
                ("total_shards", total_shards),
                ("shards_per_cluster", shards_per_cluster),
                ("total_machines", total_machines),
            )
            if value is not None
        }
        return await self.call_service(RESHARD_SERVICE, options, timeout=timeout)  # type: ignore[no-any-return]

    async def leave(self, reason: str = "draining") -> None:
        """Tell the bridge this machine is draining: its clusters go to a standby now.

        The client stays connected so that work already in flight can still be answered;
        :meth:`close` ends it.
        """
        if self._state == _READY:
            self._send(Leaving(reason=reason))

    def update_hosting(self, shard_data: ShardData | None) -> None:
        """Record what this machine now runs and tell the bridge at once (after a rolling restart)."""
        self.set_hosting(shard_data)
        if self._state == _READY:
            self._tasks.append(asyncio.get_running_loop().create_task(self._refresh_registration()))

    async def _refresh_registration(self) -> None:
        # Registering again from the same connection updates what the bridge knows of us
        # without dropping the link: sends keep working meanwhile.
        request_id = self._open.next_id()
        outcome = self._open.future(
            request_id=request_id, timeout=self._request_timeout, what="registration update"
        )
        try:
            self._send(self._register_message(request_id, self._request_timeout))
        except ZmqcrossError as exc:
            self._open.finish(request_id, exc)
        result = await outcome
        if isinstance(result, Welcome):
            if result.notice:
                log.warning("the bridge says: %s", result.notice)
        else:
            log.warning("could not update the bridge on what this machine runs: %s", result)

    def _on_assignment(self, msg: Assignment) -> None:
        data = ShardData(
            total_shards=msg.total_shards,
            shard_list=msg.shard_list,
            cluster_list=msg.cluster_list,
            total_clusters=msg.total_clusters,
            plan_version=msg.plan_version,
        )
        log.info(
            "the bridge assigns clusters %s of plan %s: %s",
            list(data.cluster_list),
            data.plan_version,
            msg.reason,
        )
        self._events.emit("assignment", data, msg.reason)

    def listen(self, manager: ClusterManager) -> None:
        """Make this client the agent of ``manager``'s clusters.

        Evals and guild requests from the bridge go to the clusters; requests made inside
        the bots (``Shard``) go to the bridge; re-registrations report the clusters run here.
        """
        self._manager = manager
        manager.upstream = self._upstream
        self.set_hosting(manager.shard_data)

    def _on_eval(self, route: EvalRoute) -> None:
        if self._manager is None:
            self._answer(readdress(self._no_clusters(), route.id))
        elif route.deadline < time.time():
            log.debug("dropped eval %d: its deadline passed in transit", route.id)
        else:
            self._manager.dispatch_eval(route, self._answer)

    def _on_cluster_work(self, msg: GuildRequest) -> None:
        if self._manager is None:
            self._answer(readdress(self._no_clusters(), msg.id))
        elif msg.deadline < time.time():
            log.debug("dropped %s %d: its deadline passed in transit", msg.type, msg.id)
        else:
            self._manager.dispatch_guild(msg, self._answer)

    def _no_clusters(self) -> ClientNotFound:
        return ClientNotFound(f"client {self._machine_id!r} runs no clusters (no client.listen(manager))")

    def _upstream(self, msg: Message, respond: Callable[[Message | ZmqcrossError], object]) -> None:
        # A bot's own request: sent to the bridge under this client's id, answered back down.
        if isinstance(msg, Send):
            if self._state == _READY:
                self._answer(msg)
            return
        if not isinstance(msg, (EvalRequest, GuildRequest, Request)):
            return
        request_id = self._open.next_id()
        forward = dataclasses.replace(msg, id=request_id)
        frames = encode(forward)
        self._open.add(
            request_id=request_id,
            timeout=max(msg.deadline - time.time(), 0.0),
            what=f"{msg.type} from a cluster",
            on_done=respond,
            frames=frames,
        )
        try:
            self._send_frames(frames)
        except ConnectionLost as exc:
            self._open.finish(request_id, exc)
