"""A machine's hot path: evals and guild requests to its clusters' pipes, answers back.

Runs on the relay core's thread, as lean as it can be: it runs for every eval on every
machine. An eval goes to each ready cluster here under one id, with one timer and one
encoding; a hop answers a little before its caller gives up (:func:`~zmqcross._fanout.hop_deadline`),
so a silent cluster costs its own slot, not the call. Each cluster answers on its own
pipe, many answers to a record, each a fixed head and its result frame
(:func:`~zmqcross._relaying.read_answers`): an answer fills that pipe's cluster's slot,
the first answer wins, an answer to what the pipe was not asked is ignored, and the
result passes through untouched (one over the frame limit becomes an error in its slot);
the gathered answer is written straight as frames. Anything a cluster sends that is not
an answer to this work (heartbeats, its bots' own requests, handover steps) goes to the
manager on its event loop, decoded.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
from collections.abc import Callable

import orjson

from .._fanout import error_frame, hop_deadline
from .._relaying import EvalRoute, forward_eval, read_answers
from ..errors import MessageTooLarge, ProtocolError, RequestTimeout, ZmqcrossError
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
from ._io import PipeConn, record_pieces
from ._loop import CoreTimer, RelayCore
from ._routes import EMPTY_ROUTES, RouteTable, eval_targets, guild_target

__all__ = ["ClusterRelay"]

log = logging.getLogger("zmqcross.relay")

Respond = Callable[[list[bytes], int], object]
"""Where an answer goes: its frames and the request it answers (answers are written as frames)."""

_ANSWERS = ("reply", "error")
_TIMEOUT = RequestTimeout("the cluster did not answer before the deadline")


class _Eval:
    """One eval waiting on this machine's clusters."""

    __slots__ = ("outcomes", "reply_to", "respond", "timer", "waiting")

    def __init__(self, reply_to: int, respond: Respond, waiting: dict[PipeConn, int]) -> None:
        self.reply_to = reply_to
        self.respond = respond
        self.waiting = waiting  # pipe -> the cluster it answers for, until it has
        self.outcomes: dict[int, tuple[bool, bytes]] = {}
        self.timer: CoreTimer | None = None


def _gathered(reply_to: int, outcomes: dict[int, tuple[bool, bytes]]) -> list[bytes]:
    order = sorted(outcomes)
    slots = [{"cluster": cid, "ok": outcomes[cid][0]} for cid in order]
    header = orjson.dumps({"type": "eval_reply", "reply_to": reply_to, "slots": slots})
    return [header, *(outcomes[cid][1] for cid in order)]


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
        self._evals: dict[int, _Eval] = {}
        self._guilds: dict[int, tuple[PipeConn, int, Respond, CoreTimer]] = {}
        self._ids = itertools.count(1)  # one sequence for every request sent down any pipe

    @property
    def in_flight(self) -> int:
        """Evals and guild requests waiting on clusters (read from any thread)."""
        return len(self._evals) + len(self._guilds)

    # ------------------------------------------------------------------ work from the bridge

    def dispatch_eval(self, route: EvalRoute, respond: Respond) -> None:
        """Run an eval on this machine's clusters among ``route.clusters``; ``respond`` gets one answer."""
        _, routes, failures = eval_targets(self.routes, route.clusters, route.header.get("guild_id"))
        fan_id = next(self._ids)
        ev = _Eval(route.id, respond, {pipe: clusters[0] for pipe, clusters in routes.items()})
        for cid, error in failures:
            ev.outcomes[cid] = (False, error_frame(error))
        if not routes:
            respond(_gathered(route.id, ev.outcomes), route.id)
            return
        core = self._core
        now = core.time()
        deadline = hop_deadline(route.deadline, now)
        ev.timer = core.call_later(deadline - now, self._expire, fan_id, _TIMEOUT)
        self._evals[fan_id] = ev
        # The script and context pass as they came; one record's pieces serve every pipe.
        pieces = record_pieces(forward_eval(route, fan_id, deadline))
        for pipe in routes:  # each is open: eval_targets took only open pipes
            pipe.post(pieces)

    def _answer(self, conn: PipeConn, fan_id: int, ok: bool, result: bytes) -> None:
        ev = self._evals.get(fan_id)
        if ev is None:
            return  # late: its eval was answered already
        cid = ev.waiting.pop(conn, None)
        if cid is None:
            return  # this pipe was not asked, or answered already
        limit = self._limits.max_frame_bytes
        if len(result) > limit:  # the bridge would refuse this machine's whole answer
            size = len(result)
            too_big = MessageTooLarge(
                f"cluster {cid}'s result is {size} bytes; the limit is {limit} (max_frame_bytes)"
            )
            ok, result = False, error_frame(too_big)
        ev.outcomes[cid] = (ok, result)
        if not ev.waiting:
            self._finish(fan_id, ev)

    def _finish(self, fan_id: int, ev: _Eval) -> None:
        del self._evals[fan_id]
        if ev.timer is not None:
            ev.timer.cancel()
        ev.respond(_gathered(ev.reply_to, ev.outcomes), ev.reply_to)

    def _expire(self, fan_id: int, error: ZmqcrossError) -> None:
        ev = self._evals.get(fan_id)
        if ev is not None:
            frame = error_frame(error)
            for cid in ev.waiting.values():
                ev.outcomes[cid] = (False, frame)
            ev.waiting.clear()
            self._finish(fan_id, ev)

    def dispatch_guild(self, msg: GuildRequest, respond: Respond) -> None:
        """Hand a guild request to the cluster running that guild's shard; ``respond`` gets its answer."""
        target = guild_target(self.routes, msg.guild_id)
        if isinstance(target, ZmqcrossError):
            respond(encode(readdress(target, msg.id)), msg.id)
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
            respond(encode(readdress(error, reply_to)), reply_to)

    # ------------------------------------------------------------------ from the clusters

    def from_pipe(self, conn: PipeConn, frames: list[bytes]) -> None:
        """A record from a cluster: an answer to this work is handled here, the rest delivered."""
        try:
            answers = read_answers(frames)
            if answers is not None:  # the hot one: fixed heads, the results pass untouched
                for fan_id, ok, result in answers:
                    self._answer(conn, fan_id, ok, result)
                return
            header = read_header(frames, self._limits)
            kind = header.get("type")
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
                respond(encode(readdress(msg, asked_as)), asked_as)
                return
        self._deliver(conn, msg)

    def fail_pipe(self, conn: PipeConn, error: ZmqcrossError) -> None:
        """A cluster is gone: its slots in open evals and its guild requests end with ``error``."""
        frame = error_frame(error)
        for fan_id, ev in list(self._evals.items()):
            cid = ev.waiting.pop(conn, None)
            if cid is not None:
                ev.outcomes[cid] = (False, frame)
                if not ev.waiting:
                    self._finish(fan_id, ev)
        for sub_id, (pipe, reply_to, respond, timer) in list(self._guilds.items()):
            if pipe is conn:
                del self._guilds[sub_id]
                timer.cancel()
                respond(encode(readdress(error, reply_to)), reply_to)

    def fail_all(self, error: ZmqcrossError) -> None:
        """End every open eval and guild request with ``error`` (the manager closed)."""
        for fan_id in list(self._evals):
            self._expire(fan_id, error)
        for sub_id in list(self._guilds):
            _, reply_to, respond, timer = self._guilds.pop(sub_id)
            timer.cancel()
            respond(encode(readdress(error, reply_to)), reply_to)
