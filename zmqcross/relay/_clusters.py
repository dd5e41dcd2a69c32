"""A machine's hot path: evals and guild requests to its clusters' pipes, answers back.

Runs on the relay core's thread. The eval fan-out is the same bookkeeping the bridge uses
(:mod:`zmqcross._fanout`: one id, one timer and one encoding per eval, the first answer
per cluster wins, a hop answers a little before its caller gives up), on the core's clock.
Replies are regrouped from their headers: the result frames pass through untouched.
Anything a cluster sends that is not an answer to this work (heartbeats, its bots' own
requests, handover steps) goes to the manager on its event loop, decoded.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
from collections.abc import Callable

from .._fanout import FanOut, FanOuts, Gather
from .._relaying import EvalRoute, forward_eval, reply_slots
from ..errors import ProtocolError, RequestTimeout, ZmqcrossError
from ..protocol import (
    DEFAULT_LIMITS,
    GuildRequest,
    Limits,
    Message,
    decode_header,
    encode,
    read_header,
    readdress,
)
from ._io import PipeConn
from ._loop import CoreTimer, RelayCore
from ._routes import EMPTY_ROUTES, RouteTable, eval_targets, guild_target

__all__ = ["ClusterRelay"]

log = logging.getLogger("zmqcross.relay")

Respond = Callable[[Message], object]

_ANSWERS = ("reply", "error")


class ClusterRelay:
    """The hot path to one manager's clusters, on ``core``'s thread (see the module docstring).

    ``routes`` is the manager's latest :class:`RouteTable` (it replaces it from its loop);
    ``deliver(conn, msg)`` takes every other message from a cluster's pipe to the manager.
    """

    def __init__(
        self,
        core: RelayCore,
        deliver: Callable[[PipeConn, Message], None],
        *,
        limits: Limits = DEFAULT_LIMITS,
    ) -> None:
        self._core = core
        self._deliver = deliver
        self._limits = limits
        self.routes: RouteTable = EMPTY_ROUTES
        self._fanouts = FanOuts()
        self._guilds: dict[int, tuple[PipeConn, int, Respond, CoreTimer]] = {}
        self._ids = itertools.count(1)  # one sequence for every request sent down any pipe

    @property
    def in_flight(self) -> int:
        """Evals and guild requests waiting on clusters (read from any thread)."""
        return len(self._fanouts) + len(self._guilds)

    # ------------------------------------------------------------------ work from the bridge

    def dispatch_eval(self, route: EvalRoute, respond: Respond) -> None:
        """Run an eval on this machine's clusters among ``route.clusters``; ``respond`` gets one EvalReply."""
        targets, routes, failures = eval_targets(self.routes, route.clusters, route.header.get("guild_id"))
        gather = Gather(targets)
        for cid, error in failures:
            gather.fail([cid], error)
        fan_id = next(self._ids)
        core = self._core
        deadline = self._fanouts.launch(
            fan_id,
            FanOut(route.id, gather, routes, respond),
            deadline=route.deadline,
            now=core.time(),
            call_later=core.call_later,
            error=RequestTimeout("the cluster did not answer before the deadline"),
        )
        if deadline is None:
            return
        frames = forward_eval(route, fan_id, deadline)  # the script and context pass as they came
        for pipe in routes:
            pipe.send_frames(frames)

    def dispatch_guild(self, msg: GuildRequest, respond: Respond) -> None:
        """Hand a guild request to the cluster running that guild's shard; ``respond`` gets its answer."""
        target = guild_target(self.routes, msg.guild_id)
        if isinstance(target, ZmqcrossError):
            respond(readdress(target, msg.id))
            return
        pipe: PipeConn = target.pipe
        sub_id = next(self._ids)
        timeout = max(msg.deadline - self._core.time(), 0.0)
        timer = self._core.call_later(timeout, self._guild_expired, sub_id, target.cluster, timeout)
        self._guilds[sub_id] = (pipe, msg.id, respond, timer)
        pipe.send_frames(encode(dataclasses.replace(msg, id=sub_id)))

    def _guild_expired(self, sub_id: int, cluster: int, timeout: float) -> None:
        entry = self._guilds.pop(sub_id, None)
        if entry is not None:
            _, reply_to, respond, _ = entry
            error = RequestTimeout(f"request to cluster {cluster}: no answer within {timeout:.3g} s")
            respond(readdress(error, reply_to))

    # ------------------------------------------------------------------ from the clusters

    def from_pipe(self, conn: PipeConn, frames: list[bytes]) -> None:
        """A record from a cluster: an answer to this work is handled here, the rest delivered."""
        try:
            header = read_header(frames, self._limits)
            kind = header.get("type")
            if kind == "eval_reply":  # regrouped from its header (zmqcross._relaying)
                reply = reply_slots(header, frames)
                self._fanouts.absorb(reply.reply_to, conn, reply)
                return
            msg = decode_header(header, frames)
        except ProtocolError as exc:
            log.warning("%s: dropped a bad pipe message: %s", conn.name, exc.message)
            return
        if kind in _ANSWERS:
            reply_to = getattr(msg, "reply_to", None)
            entry = self._guilds.get(reply_to) if type(reply_to) is int else None
            if entry is not None and entry[0] is conn:
                del self._guilds[reply_to]  # type: ignore[arg-type]
                _, asked_as, respond, timer = entry
                timer.cancel()
                respond(readdress(msg, asked_as))
                return
        self._deliver(conn, msg)

    def fail_pipe(self, conn: PipeConn, error: ZmqcrossError) -> None:
        """A cluster is gone: its slots in open evals and its guild requests end with ``error``."""
        self._fanouts.fail_route(conn, error)
        for sub_id, (pipe, reply_to, respond, timer) in list(self._guilds.items()):
            if pipe is conn:
                del self._guilds[sub_id]
                timer.cancel()
                respond(readdress(error, reply_to))

    def waiting_on(self, conn: PipeConn) -> bool:
        """Whether any open work waits on ``conn`` (read from any thread, as a hint)."""
        return any(entry[0] is conn for entry in list(self._guilds.values())) or bool(self._fanouts)

    def fail_all(self, error: ZmqcrossError) -> None:
        """End every open eval and guild request with ``error`` (the manager closed)."""
        self._fanouts.fail_all(error)
        for sub_id in list(self._guilds):
            _, reply_to, respond, timer = self._guilds.pop(sub_id)
            timer.cancel()
            respond(readdress(error, reply_to))
