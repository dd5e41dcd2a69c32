"""Evals on their way down and back: the few fields each hop reads, the frames it writes. Pure.

A machine stands between the bridge and its clusters. Of an ``eval`` it needs the id,
the deadline and the target clusters; of the bridge's view of a machine's ``eval_reply``,
the slots. The script, the context and the result frames pass through as the bytes they
came as. Building the full messages for that was over a third of a machine's Python time
per eval (measured warm in the benchmark's shape, two clusters per machine: decoding the
eval 11 us and each reply 9 us, of about 70 us per eval). A cluster, too, runs an eval
from its checked header.

A cluster's answers on its pipe are not wire-protocol messages at all: the pipe is the
machine's own, and the machine knows which cluster is at its far end. A record of answers
is a head (a tag byte, then 9 bytes per answer: the request id and ok) and one result
frame per answer (:func:`answers_frames`, :func:`read_answers`): one answer is a 10-byte
head and its result, 0.4 us to read against 5.9 us for a JSON ``eval_reply`` here. Under
load a cluster answers every eval of one read in one record, so the machine reads one
record per burst, not one per answer. The head names no cluster, so a cluster cannot
answer for another.

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
    "ANSWER_ENTRY_BYTES",
    "ANSWER_TAG",
    "EvalRoute",
    "ReplySlots",
    "answer_frames",
    "answers_frames",
    "eval_route",
    "forward_eval",
    "full_reply",
    "read_answers",
    "reply_slots",
]

ANSWER_TAG = b"A"
"""First byte of a cluster's eval answer on its pipe (every JSON header starts with ``{``)."""

_ENTRY = struct.Struct(">Q?")
"""One answer in a record's head: the request id and ok."""

ANSWER_ENTRY_BYTES = _ENTRY.size
"""What one answer adds to its record's head."""


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
    """A record of one answer to the eval ``request_id``: the 10-byte head, then the result frame."""
    return answers_frames([(request_id, ok, result)])


def answers_frames(answers: Sequence[tuple[int, bool, bytes]]) -> list[bytes]:
    """A record of ``(request id, ok, result)`` answers: the head, then each result frame."""
    head = ANSWER_TAG + b"".join([_ENTRY.pack(request_id, ok) for request_id, ok, _ in answers])
    return [head, *[result for _, _, result in answers]]


def read_answers(frames: Sequence[bytes]) -> list[tuple[int, bool, bytes]] | None:
    """The ``(request id, ok, result)`` answers of a record; None for anything else (a JSON message)."""
    head = frames[0]
    if head[:1] != ANSWER_TAG:
        return None
    count = len(frames) - 1
    if count < 1 or len(head) != 1 + _ENTRY.size * count:
        raise ProtocolError(
            f"an eval answer record is a tag byte, {_ENTRY.size} bytes per answer and one result "
            f"frame each: not a {len(head)}-byte head and {count} result frame(s)"
        )
    return [
        (request_id, ok, result)
        for (request_id, ok), result in zip(_ENTRY.iter_unpack(head[1:]), frames[1:], strict=True)
    ]
