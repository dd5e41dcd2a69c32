"""A machine's relaying: the bridge's work down to its clusters, the bots' requests up.

After ``client.listen(manager)``, evals and guild requests from the bridge go to the
:class:`~zmqcross.ClusterManager`'s clusters and their answers back to the bridge;
requests made inside the bots (:class:`~zmqcross.Shard`) go to the bridge under this
client's id and their answers back down the pipe. Eval results pass as bytes, untouched
(:mod:`zmqcross._relaying`).

The hot path (:meth:`MachineRelay.on_eval`, :meth:`MachineRelay.on_guild`) runs on the
relay core's thread and hands the work to the manager's :class:`~zmqcross.relay.ClusterRelay`
there; everything else here runs on the event loop.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable

from .._relaying import EvalRoute
from .._requests import OpenRequests
from ..cluster.manager import ClusterManager
from ..errors import ClientNotFound, ConnectionLost, ProtocolError, ZmqcrossError
from ..protocol import (
    ErrorInfo,
    ErrorReply,
    EvalRequest,
    GuildRequest,
    Handover,
    Message,
    Reply,
    Request,
    Send,
    dump,
    encode,
    load,
    readdress,
)
from ..relay import ClusterRelay
from ..status import ClusterStatus
from ._channel import Channel
from ._link import Link

__all__ = ["MachineRelay"]

log = logging.getLogger("zmqcross.client")


class MachineRelay:
    """Relays between the bridge and one :class:`ClusterManager` (none until :meth:`listen`).

    Answers leave through ``channel``; the bots' requests are tracked in ``open_requests``
    with the client's own, and their custom messages go up only while ``link`` is ready.
    """

    def __init__(self, channel: Channel, link: Link, *, open_requests: OpenRequests, machine_id: str) -> None:
        self._answer = channel.answer  # from the loop
        self._post = channel.post  # from the relay core's thread
        self._send_frames = channel.send_frames
        self._link = link
        self._open = open_requests
        self._machine_id = machine_id
        self._manager: ClusterManager | None = None
        self._hot: ClusterRelay | None = None  # the manager's hot path, read on the core's thread

    @property
    def manager(self) -> ClusterManager | None:
        """The clusters this machine relays to, if any."""
        return self._manager

    def listen(self, manager: ClusterManager) -> None:
        """Relay the bridge's work to ``manager``'s clusters and their requests to the bridge."""
        self._manager = manager
        self._hot = manager.relay
        manager.upstream = self._upstream
        manager.lease = lambda: self._link.lease_until

    def unlisten(self) -> None:
        """Relay to no clusters any more: the bridge's work is refused with ClientNotFound."""
        if self._manager is not None:
            self._manager.upstream = None
            self._manager.lease = None
        self._manager = None
        self._hot = None

    def statuses(self) -> list[ClusterStatus]:
        """Every cluster's status (none without a manager)."""
        return self._manager.statuses() if self._manager is not None else []

    def send_to_clusters(self, data: bytes) -> None:
        """Pass a custom message from the bridge on to every cluster's bots."""
        if self._manager is not None:
            self._manager.send_to_clusters(data)

    def on_eval(self, route: EvalRoute) -> None:
        """An eval from the bridge, read from its header: to the clusters it names (core thread)."""
        hot = self._hot
        if hot is None:
            self._post(encode(readdress(self._no_clusters(), route.id)), route.id)
        elif route.deadline < time.time():
            log.debug("dropped eval %d: its deadline passed in transit", route.id)
        else:
            hot.dispatch_eval(route, self._post)

    def on_guild(self, msg: GuildRequest) -> None:
        """A guild request from the bridge: to the cluster running that guild's shard (core thread)."""
        hot = self._hot
        if hot is None:
            self._post(encode(readdress(self._no_clusters(), msg.id)), msg.id)
        elif msg.deadline < time.time():
            log.debug("dropped %s %d: its deadline passed in transit", msg.type, msg.id)
        else:
            hot.dispatch_guild(msg, self._post)

    def on_handover(self, msg: Handover) -> None:
        """Another machine's handover step, passed on by the bridge: to the manager rolling."""
        if self._manager is not None:
            self._manager.handover_notice(msg)

    async def restart(self, msg: Request) -> None:
        """The bridge asks for a new process for one cluster (a code deploy): answer when done."""
        try:
            body = load(msg.data) if msg.data else None
            cluster = body.get("cluster") if isinstance(body, dict) else None
            if type(cluster) is not int:
                raise ProtocolError('a cluster restart names its cluster: {"cluster": <id>}')
            if self._manager is None:
                raise self._no_clusters()
            left = msg.deadline - time.time() - 1.0  # answer before the bridge gives up
            timeout = min(self._manager.spawn_timeout, left) if left > 0 else self._manager.spawn_timeout
            status = await self._manager.restart(cluster, timeout=timeout)
        except ZmqcrossError as exc:
            self._answer(
                ErrorReply(reply_to=msg.id, error=ErrorInfo.from_exception(exc, with_traceback=False))
            )
        except Exception as exc:  # a bug: say so rather than leave the bridge waiting
            log.exception("restarting a cluster failed")
            self._answer(ErrorReply(reply_to=msg.id, error=ErrorInfo.from_exception(exc)))
        else:
            self._answer(Reply(reply_to=msg.id, data=dump(status.to_json())))

    def _no_clusters(self) -> ClientNotFound:
        return ClientNotFound(f"client {self._machine_id!r} runs no clusters (no client.listen(manager))")

    def _upstream(self, msg: Message, respond: Callable[[Message | ZmqcrossError], object]) -> None:
        # A bot's own request: sent to the bridge under this client's id, answered back down.
        if isinstance(msg, (Send, Handover)):  # one-way: a custom message, a handover step
            if self._link.connected:
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
