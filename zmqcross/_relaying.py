"""Evals on their way down and back: the few fields each hop reads, the frames it writes. Pure.

A machine stands between the bridge and its clusters. Of an ``eval`` it needs the id,
the deadline and the target clusters; of the bridge's view of a machine's ``eval_reply``,
the slots. The script, the context and the result frames pass through as the bytes they
came as. Building the full messages for that was over a third of a machine's Python time
per eval (measured warm in the benchmark's shape, two clusters per machine: decoding the
eval 11 us and each reply 9 us, of about 70 us per eval). A cluster, too, runs an eval
from its checked header.

A cluster's answer on its pipe is not a wire-protocol message at all: the pipe is the
machine's own, and the machine knows which cluster is at its far end, so the answer is a
fixed 10-byte head (a tag byte, the request id, ok) and the result frame
(:func:`answer_frames`, :func:`read_answer`: 0.4 us to read against 5.9 us for a JSON
``eval_reply`` here). It names no cluster, so a cluster cannot answer for another.

The header readers check exactly as :func:`~zmqcross.protocol.decode` would, so a
malformed message still gets its precise :class:`~zmqcross.errors.ProtocolError`.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any, NamedTuple

import orjson

from .errors import ProtocolError
from .protocol import EvalReply, Slot, check_header

__all__ = [
    "ANSWER_TAG",
    "EvalRoute",
    "ReplySlots",
    "answer_frames",
    "eval_route",
    "forward_eval",
    "full_reply",
    "read_answer",
    "reply_slots",
]

ANSWER_TAG = b"A"
"""First byte of a cluster's eval answer on its pipe (every JSON header starts with ``{``)."""

_ANSWER = struct.Struct(">cQ?")


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


def answer_frames(request_id: int, ok: bool, result: bytes) -> list[bytes]:
    """A cluster's answer to the eval ``request_id`` on its pipe: the fixed head, then the result frame."""
    return [_ANSWER.pack(ANSWER_TAG, request_id, ok), result]


def read_answer(frames: Sequence[bytes]) -> tuple[int, bool, bytes] | None:
    """``(request id, ok, result)`` of a cluster's eval answer; None for anything else (a JSON message)."""
    head = frames[0]
    if head[:1] != ANSWER_TAG:
        return None
    if len(head) != _ANSWER.size or len(frames) != 2:
        raise ProtocolError(
            f"an eval answer is a {_ANSWER.size}-byte head and one result frame, "
            f"not a {len(head)}-byte head and {len(frames) - 1} frame(s)"
        )
    _, request_id, ok = _ANSWER.unpack(head)
    return request_id, ok, frames[1]
