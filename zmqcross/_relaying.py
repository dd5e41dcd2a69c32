"""Evals on their way down and back: the few fields each hop reads, the frames it writes. Pure.

A machine stands between the bridge and its clusters. Of an ``eval`` it needs the id,
the deadline and the target clusters; of each cluster's ``eval_reply``, the slots. The
script, the context and the result frames pass through as the bytes they came as.
Building the full messages for that was over a third of a machine's Python time per
eval (measured warm in the benchmark's shape, two clusters per machine: decoding the
eval 11 us and each reply 9 us, of about 70 us per eval). A cluster, too, runs an eval
from its checked header and writes its one-slot answer directly.

Both readers check the header exactly as :func:`~zmqcross.protocol.decode` would, so a
malformed message still gets its precise :class:`~zmqcross.errors.ProtocolError`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import orjson

from .errors import ProtocolError
from .protocol import EvalReply, Slot, check_header

__all__ = [
    "EvalRoute",
    "ReplySlots",
    "eval_reply_frames",
    "eval_route",
    "forward_eval",
    "full_reply",
    "reply_slots",
]


class EvalRoute(NamedTuple):
    """An ``eval`` on its way down: what routing it needs, and its checked header and body."""

    id: int
    deadline: float
    clusters: tuple[int, ...] | None
    header: dict[str, Any]
    body: Sequence[bytes]


class ReplySlots(NamedTuple):
    """An ``eval_reply`` on its way up: ``(cluster, ok)`` per slot and the result frames, in order."""

    reply_to: int
    slots: list[tuple[int, bool]]
    results: Sequence[bytes]


def eval_route(header: dict[str, Any], frames: Sequence[bytes]) -> EvalRoute:
    """The ``eval`` of ``frames``, whose ``header`` :func:`~zmqcross.protocol.read_header` parsed."""
    if header.get("type") != "eval":
        raise ProtocolError(f"expected an 'eval' message, not {header.get('type')!r}")
    check_header(header, frames)
    clusters = header.get("clusters")
    return EvalRoute(
        header["id"],
        float(header["deadline"]),
        tuple(clusters) if clusters is not None else None,
        header,
        frames[1:],
    )


def forward_eval(route: EvalRoute, request_id: int, deadline: float) -> list[bytes]:
    """The eval's frames for the next hop: its own id and deadline, and no target list
    (a cluster runs what it is sent)."""
    header = dict(route.header)
    header["id"] = request_id
    header["deadline"] = deadline
    header.pop("clusters", None)
    return [orjson.dumps(header), *route.body]


def reply_slots(header: dict[str, Any], frames: Sequence[bytes]) -> ReplySlots:
    """The ``eval_reply`` of ``frames``, whose ``header`` :func:`~zmqcross.protocol.read_header` parsed."""
    if header.get("type") != "eval_reply":
        raise ProtocolError(f"expected an 'eval_reply' message, not {header.get('type')!r}")
    check_header(header, frames)
    slots = [(slot["cluster"], slot["ok"]) for slot in header["slots"]]
    return ReplySlots(header["reply_to"], slots, frames[1:])


def full_reply(reply: ReplySlots) -> EvalReply:
    """The :class:`~zmqcross.protocol.EvalReply` that ``reply`` was read from."""
    slots = tuple(Slot(cluster=cluster, ok=ok) for cluster, ok in reply.slots)
    return EvalReply(reply_to=reply.reply_to, slots=slots, results=tuple(bytes(r) for r in reply.results))


def eval_reply_frames(reply_to: int, cluster: int, ok: bool, result: bytes) -> list[bytes]:
    """One cluster's answer to an eval (its slot and its result frame), without building an ``EvalReply``."""
    header = {"type": "eval_reply", "reply_to": reply_to, "slots": [{"cluster": cluster, "ok": ok}]}
    return [orjson.dumps(header), result]
