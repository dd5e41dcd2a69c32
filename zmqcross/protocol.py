"""The zmqcross wire protocol: ZeroMQ frames <-> typed messages. No sockets, no asyncio.

A message is a list of frames::

    [header, *body]

``header`` is a JSON object whose ``"type"`` names the message kind and whose other
keys are that kind's small fields (ids, deadlines, names). ``body`` frames are opaque
payloads: JSON data the original sender encoded once (request data, replies, eval
results). A relay passes body frames along without decoding them; only the final
consumer calls :func:`load`. On a ROUTER socket libzmq adds the peer's routing id in
front; that frame belongs to the transport and never reaches this module.

Every kind the fabric carries is a frozen dataclass below, joined in :data:`Message`.
:func:`decode` checks the named limits first, then the header's JSON, kind, field
names and field types, and raises :class:`~zmqcross.errors.ProtocolError` (never
anything else) when the frames are not a valid message.

Deadlines are wall-clock UNIX times (``time.time()``) so that they survive a hop to
another machine and a stay in a ZeroMQ queue; machines need clocks kept in step (NTP).
"""

from __future__ import annotations

import dataclasses
import traceback as _traceback
import typing
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

from ._codec import Codec
from .errors import (
    MessageTooLarge,
    ProtocolError,
    RemoteError,
    SerializationError,
    ZmqcrossError,
    error_code,
    error_from_wire,
)

__all__ = [
    "BATCH_BYTES",
    "BATCH_MESSAGES",
    "DEFAULT_LIMITS",
    "DEFAULT_TIMEOUT",
    "HANDOVER_STEPS",
    "MAX_FRAMES",
    "MAX_FRAME_BYTES",
    "MAX_HEADER_BYTES",
    "MAX_MESSAGE_BYTES",
    "PROTOCOL_VERSION",
    "RESHARD_SERVICE",
    "RESTART_CLUSTER_SERVICE",
    "RESTART_SERVICE",
    "STATUS_SERVICE",
    "Assignment",
    "Batch",
    "Beacon",
    "ErrorInfo",
    "ErrorReply",
    "EvalReply",
    "EvalRequest",
    "Goodbye",
    "GuildRequest",
    "Handover",
    "Heartbeat",
    "Hosting",
    "Lease",
    "Leaving",
    "Limits",
    "Message",
    "Ping",
    "Pong",
    "Register",
    "Reply",
    "Request",
    "Reregister",
    "Send",
    "ShardDataRequest",
    "Slot",
    "Welcome",
    "answer_frames",
    "batches",
    "check_header",
    "check_limits",
    "decode",
    "decode_header",
    "dump",
    "encode",
    "encode_each",
    "load",
    "read_header",
    "readdress",
    "result_of",
]

PROTOCOL_VERSION = 2
"""Sent in :class:`Register`; a bridge refuses a peer speaking another version.

2: :class:`Batch` (a version-1 peer would drop the answers it carries)."""

MAX_FRAMES = 4096
"""Frames in one message. A gathered eval result uses one frame per cluster."""

MAX_FRAME_BYTES = 64 * 1024 * 1024
"""Bytes in one frame; also set as each socket's ``MAXMSGSIZE`` (libzmq's limit is per frame)."""

MAX_MESSAGE_BYTES = 256 * 1024 * 1024
"""Bytes in one whole message: ``MAXMSGSIZE`` alone lets 4096 frames of 64 MiB through."""

MAX_HEADER_BYTES = 64 * 1024
"""Bytes in the JSON header frame. Payloads belong in body frames."""

BATCH_MESSAGES = 256
"""Most messages one :class:`Batch` carries (a receiver refuses more)."""

BATCH_BYTES = 1024 * 1024
"""A batch is closed once it holds this many bytes; a message this large travels alone."""

DEFAULT_TIMEOUT = 10.0
"""Seconds a request waits for its answer unless the caller says otherwise."""

STATUS_SERVICE = "zmqcross.status"
"""The bridge's built-in service answering ``Client.fleet_status()``; also what it asks each machine."""

RESHARD_SERVICE = "zmqcross.reshard"
"""The bridge's built-in service behind ``Client.reshard()``; needs the ``admin`` permission."""

RESTART_SERVICE = "zmqcross.restart"
"""The bridge's built-in service behind ``Client.restart()``; needs the ``admin`` permission."""

RESTART_CLUSTER_SERVICE = "zmqcross.restart_cluster"
"""What the bridge asks a machine during a restart: replace cluster ``data["cluster"]``."""


@dataclass(frozen=True, slots=True)
class Limits:
    """The size limits a bridge or client enforces on what it receives and sends."""

    max_frames: int = MAX_FRAMES
    max_frame_bytes: int = MAX_FRAME_BYTES
    max_message_bytes: int = MAX_MESSAGE_BYTES
    max_header_bytes: int = MAX_HEADER_BYTES

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if type(value) is not int or value < 1:
                raise ValueError(f"Limits.{f.name} must be a positive integer, not {value!r}")
        if self.max_header_bytes > self.max_frame_bytes:
            raise ValueError("Limits.max_header_bytes cannot exceed max_frame_bytes")


DEFAULT_LIMITS = Limits()

JSON = Any
"""Any value :func:`dump` can encode: dict, list, str, int, float, bool, None."""


# --------------------------------------------------------------------------- payloads


def _default(value: Any) -> Any:
    if isinstance(value, (set, frozenset)):
        return list(value)
    raise TypeError(f"a {type(value).__module__}.{type(value).__qualname__} is not JSON data")


def dump(value: Any, *, default: Callable[[Any], Any] | None = None) -> bytes:
    """Encode ``value`` as a JSON body frame; :class:`SerializationError` if it cannot be."""
    try:
        return orjson.dumps(value, default=default or _default, option=orjson.OPT_NON_STR_KEYS)
    except orjson.JSONEncodeError as exc:
        # orjson keeps the default hook's own error as the cause; it names the bad value.
        detail = str(exc.__cause__) if exc.__cause__ is not None and str(exc.__cause__) else str(exc)
        raise SerializationError(f"cannot send this value as JSON: {detail}") from None


def load(frame: bytes) -> Any:
    """Decode a JSON body frame; :class:`ProtocolError` if it is not JSON."""
    try:
        return orjson.loads(frame)
    except orjson.JSONDecodeError as exc:
        raise ProtocolError(f"body frame is not valid JSON: {exc}") from None


# --------------------------------------------------------------------------- structs


@dataclass(frozen=True, slots=True, kw_only=True)
class ErrorInfo:
    """A failure as it travels: ``{code, type, message, traceback}``.

    ``code`` names the zmqcross error class to raise on arrival; ``type`` is the
    original exception's class name, ``traceback`` its formatted traceback.
    """

    code: str
    type: str
    message: str
    traceback: str | None = None

    @classmethod
    def from_exception(cls, exc: BaseException, *, with_traceback: bool = True) -> ErrorInfo:
        """Describe ``exc`` for the wire, keeping a traceback carried from further away."""
        trace = getattr(exc, "remote_traceback", None)
        if trace is None and with_traceback and exc.__traceback__ is not None:
            trace = "".join(_traceback.format_exception(exc))
        name = getattr(exc, "remote_type", None) or type(exc).__name__
        message = exc.message if isinstance(exc, ZmqcrossError) else str(exc)
        if isinstance(exc, RemoteError) and message.startswith(f"{name}: "):
            message = message[len(name) + 2 :]  # relayed again: do not prefix the type twice
        return cls(code=error_code(exc), type=name, message=message, traceback=trace)

    def to_exception(self) -> ZmqcrossError:
        """The exception to raise on the receiving side."""
        return error_from_wire(self.code, self.type, self.message, self.traceback)


@dataclass(frozen=True, slots=True, kw_only=True)
class Hosting:
    """What a machine actually runs, sent when it (re-)registers.

    A restarted bridge rebuilds its shard map from these instead of handing out
    chunks afresh (the original forgets its map when the bridge restarts).
    """

    plan_version: str
    total_shards: int
    cluster_list: tuple[int, ...]
    shard_list: tuple[tuple[int, ...], ...]


# --------------------------------------------------------------------------- messages
# Each kind is a frozen, slotted dataclass with a literal ``type``. Fields typed
# ``bytes`` are body frames (in order); ``tuple[bytes, ...]`` takes the remaining
# frames; every other field lives in the JSON header.


@dataclass(frozen=True, slots=True, kw_only=True)
class Register:
    """Peer -> bridge: join the fabric. Answered by :class:`Welcome` or :class:`ErrorReply`."""

    type: Literal["register"] = field(default="register", init=False)
    id: int
    deadline: float
    protocol: int
    token: str
    machine_id: str
    agent: str
    initial_data: JSON = None
    hosting: Hosting | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Welcome:
    """Bridge -> peer: registration accepted, with the heartbeat terms to keep."""

    type: Literal["welcome"] = field(default="welcome", init=False)
    reply_to: int
    client_id: str
    epoch: str
    heartbeat_interval: float
    heartbeat_timeout: float
    permissions: tuple[str, ...]
    plan_version: str | None = None
    notice: str | None = None
    refused_claim: bool = False  # the clusters it said it runs are someone else's now: stop them
    lease: float | None = None  # seconds the peer may run clusters from when it asked to register


@dataclass(frozen=True, slots=True, kw_only=True)
class Ping:
    """Peer -> bridge heartbeat; any traffic counts, this keeps an idle link alive."""

    type: Literal["ping"] = field(default="ping", init=False)
    sent_at: float
    mono: float | None = None  # the sender's monotonic clock at sending, echoed for its lease


@dataclass(frozen=True, slots=True, kw_only=True)
class Pong:
    """Bridge -> peer answer to :class:`Ping`, echoing ``sent_at`` for a round-trip time."""

    type: Literal["pong"] = field(default="pong", init=False)
    sent_at: float
    mono: float | None = None
    lease: float | None = None  # seconds the peer may run its clusters from ``mono`` on


@dataclass(frozen=True, slots=True, kw_only=True)
class Reregister:
    """Bridge -> peer: "I do not know you" (the bridge restarted); ``reply_to`` was not run."""

    type: Literal["reregister"] = field(default="reregister", init=False)
    reason: str
    reply_to: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Goodbye:
    """Either way: the sender is leaving, or (from the bridge) the peer is dismissed."""

    type: Literal["goodbye"] = field(default="goodbye", init=False)
    reason: str
    retry: bool = True
    """False when the peer must not come back (it was replaced); True when it may re-register."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Beacon:
    """Bridge -> everyone over PUB, every heartbeat interval.

    ``epoch`` changes when the bridge restarts, so a peer re-registers at once
    instead of waiting for a failed heartbeat. PUB may drop a beacon; the next
    one repeats everything it said.
    """

    type: Literal["beacon"] = field(default="beacon", init=False)
    epoch: str
    seq: int
    plan_version: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Send:
    """Either way: a one-way custom message; ``data`` is a JSON body frame."""

    type: Literal["send"] = field(default="send", init=False)
    data: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class Request:
    """Either way: a custom request; ``data`` is a JSON body frame.

    ``target`` (a client id) or ``agent`` asks the bridge to relay it to one client;
    ``origin`` names the client it came from when the bridge relays it. ``service`` sends
    it to a bridge service (such as the cache) instead of the ``client_request`` event.
    """

    type: Literal["request"] = field(default="request", init=False)
    id: int
    deadline: float
    data: bytes
    target: str | None = None
    agent: str | None = None
    origin: str | None = None
    service: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ShardDataRequest:
    """Machine -> bridge: which clusters should I run? Answered with shard data JSON."""

    type: Literal["shard_data"] = field(default="shard_data", init=False)
    id: int
    deadline: float
    max_clusters: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Reply:
    """Either way: the answer to request ``reply_to``; ``data`` is a JSON body frame."""

    type: Literal["reply"] = field(default="reply", init=False)
    reply_to: int
    data: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class ErrorReply:
    """Either way: request ``reply_to`` failed (or, with no ``reply_to``, a message did)."""

    type: Literal["error"] = field(default="error", init=False)
    error: ErrorInfo
    reply_to: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Slot:
    """One cluster's outcome in an :class:`EvalReply`: its result frame holds a value or an error."""

    cluster: int
    ok: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class EvalRequest:
    """Run a script on clusters: caller -> bridge -> machines -> clusters.

    Exactly one of ``script`` (source text) and ``function`` (a shipped function's source,
    bound to ``function_name``, None for a lambda) is set. ``clusters``, ``shards`` and
    ``guild_id`` narrow the targets (at most one of them).
    On the way down, the bridge and then each machine rewrite ``clusters`` to their share.
    """

    type: Literal["eval"] = field(default="eval", init=False)
    id: int
    deadline: float
    script: str | None = None
    function: str | None = None
    function_name: str | None = None
    context: JSON = None
    clusters: tuple[int, ...] | None = None
    shards: tuple[int, ...] | None = None
    guild_id: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class EvalReply:
    """Outcomes of an eval, one :class:`Slot` and one result frame per cluster, in slot order.

    A result frame is the JSON the cluster encoded (a value, or for a failed slot an
    ``{code, type, message, traceback}`` object). Machines and the bridge only regroup
    these frames; the final caller is the only one that decodes them.
    """

    type: Literal["eval_reply"] = field(default="eval_reply", init=False)
    reply_to: int
    slots: tuple[Slot, ...]
    results: tuple[bytes, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class GuildRequest:
    """A custom request for the cluster that owns ``guild_id``; ``data`` is a JSON body frame."""

    type: Literal["guild_request"] = field(default="guild_request", init=False)
    id: int
    deadline: float
    guild_id: int
    data: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class Heartbeat:
    """Cluster -> its manager over the pipe: alive, whether Discord is ready, how many guilds."""

    type: Literal["heartbeat"] = field(default="heartbeat", init=False)
    sent_at: float
    ready: bool
    guilds: int | None = None
    waiting: str | None = None  # what a starting cluster waits for before it may IDENTIFY
    shards: JSON = None  # each shard's health: ShardHealth.wire rows
    rss: int | None = None  # the process's resident memory, bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class Lease:
    """Manager -> cluster over the pipe: run your Discord sessions until ``until`` (this host's
    monotonic clock), unless renewed; then close them (the bridge may give the shards away)."""

    type: Literal["lease"] = field(default="lease", init=False)
    until: float


HANDOVER_STEPS = frozenset({"record", "keep", "retire", "retired", "release", "ready"})
"""The steps a :class:`Handover` message can carry."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Handover:
    """One step of handing shards from old clusters to new ones (see :mod:`zmqcross._handover`).

    Manager -> cluster: ``record`` (a successor is coming: count what you handle), ``keep``
    (it failed: serve on, stop counting), ``retire`` (stop handling events; answer with ``retired``), ``release`` (go live, skipping
    the events in ``fingerprints``). Cluster -> manager, and machine -> bridge -> machines:
    ``retired`` (cluster ``cluster_id`` of plan ``plan_version`` handled ``fingerprints``) and
    ``ready`` (new cluster ``cluster_id`` of plan ``plan_version`` is ready).
    ``fingerprints`` is a body frame of little-endian 64-bit integers.
    """

    type: Literal["handover"] = field(default="handover", init=False)
    step: str  # one of HANDOVER_STEPS
    cluster_id: int
    plan_version: str = ""
    fingerprints: bytes = b""


@dataclass(frozen=True, slots=True, kw_only=True)
class Assignment:
    """Bridge -> machine: run these clusters (a standby taking over, a reshard, a changed plan).

    A machine with ``rolling_restarts`` replaces its clusters one at a time; one without
    keeps what it runs and the bridge reports it as stale.
    """

    type: Literal["assignment"] = field(default="assignment", init=False)
    total_shards: int
    shard_list: tuple[tuple[int, ...], ...]
    cluster_list: tuple[int, ...]
    total_clusters: int
    plan_version: str
    reason: str
    identify: JSON = None  # IdentifyParams.to_json(): how the fleet paces IDENTIFYs
    handover: JSON = None  # HandoverPlan.to_json(): which old clusters this machine's new ones replace


@dataclass(frozen=True, slots=True, kw_only=True)
class Batch:
    """Several messages for one peer in one send: ``sizes[i]`` of ``frames`` belong to message ``i``.

    Answers to a burst of work leave a process as one send instead of one per message;
    the receiver handles the inner messages in order, exactly as if each had come alone.
    Batches do not nest. Built by :func:`batches`; :meth:`messages` splits one.
    """

    type: Literal["batch"] = field(default="batch", init=False)
    sizes: tuple[int, ...]
    frames: tuple[bytes, ...]

    def messages(self) -> list[list[bytes]]:
        """The inner messages' frames, in order (sizes were checked by :func:`decode`)."""
        out = []
        start = 0
        frames = self.frames
        for size in self.sizes:
            out.append(list(frames[start : start + size]))
            start += size
        return out


@dataclass(frozen=True, slots=True, kw_only=True)
class Leaving:
    """Machine -> bridge: draining. Hand my clusters to a standby now; I finish what is in flight."""

    type: Literal["leaving"] = field(default="leaving", init=False)
    reason: str


Message = (
    Register
    | Welcome
    | Ping
    | Pong
    | Reregister
    | Goodbye
    | Beacon
    | Send
    | Request
    | ShardDataRequest
    | Reply
    | ErrorReply
    | EvalRequest
    | EvalReply
    | GuildRequest
    | Heartbeat
    | Lease
    | Handover
    | Assignment
    | Leaving
    | Batch
)
"""Every message the fabric can carry."""


# --------------------------------------------------------------------------- codecs

_STRUCTS: dict[type, Codec] = {}
for _cls in (ErrorInfo, Hosting, Slot):
    _STRUCTS[_cls] = Codec(_cls, _STRUCTS)
_KINDS: dict[str, Codec] = {}
for _cls in typing.get_args(Message):
    _codec = Codec(_cls, _STRUCTS)
    assert _codec.kind is not None
    _KINDS[_codec.kind] = _codec
_CODEC_BY_CLASS = {codec.cls: codec for codec in _KINDS.values()}


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


# --------------------------------------------------------------------------- encode / decode


def encode(msg: Message) -> list[bytes]:
    """The frames for ``msg``: a JSON header, then its body frames.

    Raises :class:`SerializationError` if a header field cannot be JSON.
    """
    codec = _CODEC_BY_CLASS[type(msg)]
    header = {"type": codec.kind}
    header.update(codec.to_json(msg))
    try:
        frames = [orjson.dumps(header, option=orjson.OPT_NON_STR_KEYS)]
    except orjson.JSONEncodeError as exc:
        raise SerializationError(f"cannot encode a {codec.kind!r} message: {exc}") from None
    for name in codec.body:
        frames.append(getattr(msg, name))
    if codec.rest is not None:
        frames.extend(getattr(msg, codec.rest))
    return frames


def encode_each(msg: Message, name: str, values: Iterable[Any], **fields: Any) -> list[list[bytes]]:
    """The frames of ``msg`` once per value of its header field ``name``, in order.

    Equal to ``[encode(dataclasses.replace(msg, **fields, **{name: v})) for v in values]``
    with the header built once and no message rebuilt: a fan-out re-addresses a caller's
    eval (``fields``: its own id and deadline, no other target list) and sends it to each
    machine, differing only in the clusters it names. ``name`` and ``fields`` are header
    fields of the message; a field set to None is left out, as :func:`encode` leaves it.
    """
    codec = _CODEC_BY_CLASS[type(msg)]
    header = {"type": codec.kind}
    header.update(codec.to_json(msg))
    for field_name, value in fields.items():
        if field_name not in codec.header_names:
            raise TypeError(f"a {codec.kind!r} message has no field {field_name!r}")
        if value is None:
            header.pop(field_name, None)
        else:
            header[field_name] = value
    body = [getattr(msg, field_name) for field_name in codec.body]
    if codec.rest is not None:
        body.extend(getattr(msg, codec.rest))
    out = []
    for value in values:
        header[name] = value
        try:
            out.append([orjson.dumps(header, option=orjson.OPT_NON_STR_KEYS), *body])
        except orjson.JSONEncodeError as exc:
            raise SerializationError(f"cannot encode a {codec.kind!r} message: {exc}") from None
    return out


def check_limits(frames: Sequence[bytes], limits: Limits = DEFAULT_LIMITS) -> None:
    """Raise :class:`MessageTooLarge` if ``frames`` break any of ``limits``."""
    count = len(frames)
    # Nearly every message is far inside every limit: one C-level pass proves it.
    if (
        count <= limits.max_frames
        and (not count or len(frames[0]) <= limits.max_header_bytes)
        and sum(map(len, frames)) <= min(limits.max_frame_bytes, limits.max_message_bytes)
    ):
        return
    if count > limits.max_frames:
        raise MessageTooLarge(f"message has {count} frames; the limit is {limits.max_frames}")
    total = 0
    for index, frame in enumerate(frames):
        size = len(frame)
        if size > limits.max_frame_bytes:
            raise MessageTooLarge(
                f"frame {index} is {size} bytes; the limit is {limits.max_frame_bytes} (max_frame_bytes)"
            )
        total += size
    if total > limits.max_message_bytes:
        raise MessageTooLarge(
            f"message is {total} bytes; the limit is {limits.max_message_bytes} (max_message_bytes)"
        )
    if count and len(frames[0]) > limits.max_header_bytes:
        raise MessageTooLarge(
            f"header is {len(frames[0])} bytes; the limit is {limits.max_header_bytes} (max_header_bytes)"
        )


def decode(frames: Sequence[bytes], limits: Limits = DEFAULT_LIMITS) -> Message:
    """The message in ``frames``, or :class:`ProtocolError` saying what is wrong with them.

    When the header is readable enough to carry a request id, the error's
    ``request_id`` holds it, so the receiver can answer that request.
    """
    return decode_header(read_header(frames, limits), frames)


def read_header(frames: Sequence[bytes], limits: Limits = DEFAULT_LIMITS) -> dict[str, Any]:
    """The first half of :func:`decode`: ``frames`` checked against ``limits``, their header parsed.

    A relay reads the header's ``"type"`` and handles the kinds it only passes on
    without building them (:mod:`zmqcross._relaying`); :func:`decode_header` does the rest.
    """
    if not frames:
        raise ProtocolError("empty message")
    check_limits(frames, limits)
    try:
        header = orjson.loads(frames[0])
    except orjson.JSONDecodeError:
        raise ProtocolError("header frame is not valid JSON") from None
    if type(header) is not dict:
        raise ProtocolError("header frame must be a JSON object")
    return header


def decode_header(header: dict[str, Any], frames: Sequence[bytes]) -> Message:
    """The second half of :func:`decode`: the message of ``header`` (from :func:`read_header`) and ``frames``."""
    request_id = header.get("id")
    if type(request_id) is not int:
        request_id = None
    kind = header.get("type")
    codec = _KINDS.get(kind) if type(kind) is str else None
    if codec is None:
        known = ", ".join(sorted(_KINDS))
        raise ProtocolError(f"unknown message type {_show(kind)} (known: {known})", request_id=request_id)
    body = frames[1:]
    fixed = len(codec.body)
    if len(body) < fixed or (codec.rest is None and len(body) > fixed):
        expected = f"{fixed}" if codec.rest is None else f"at least {fixed}"
        raise ProtocolError(
            f"a {kind!r} message carries {expected} body frame(s), not {len(body)}", request_id=request_id
        )
    msg = codec.fast_decode(header, body)
    if msg is None:  # something is wrong: let the careful decoder say what
        try:
            values = codec.from_json(header, f"{kind!r} message")
        except ProtocolError as exc:
            exc.request_id = request_id
            raise
        for name, frame in zip(codec.body, body[:fixed], strict=True):
            values[name] = bytes(frame)
        if codec.rest is not None:
            values[codec.rest] = tuple(bytes(frame) for frame in body[fixed:])
        msg = codec.cls(**values)
    if isinstance(msg, EvalReply) and len(msg.slots) != len(msg.results):
        raise ProtocolError(
            f"an 'eval_reply' has {len(msg.slots)} slots but {len(msg.results)} result frames"
        )
    if isinstance(msg, Batch):
        _check_batch(msg)
    return msg  # type: ignore[no-any-return]


def check_header(header: dict[str, Any], frames: Sequence[bytes]) -> None:
    """Check ``header`` and ``frames`` as :func:`decode_header` would, without building the message."""
    kind = header.get("type")
    codec = _KINDS.get(kind) if type(kind) is str and kind != "batch" else None
    if codec is not None and codec.fast_check(header):
        extra = len(frames) - 1 - len(codec.body)  # frames past the fixed body ones
        fits = extra == 0 or (extra > 0 and codec.rest is not None)
        if fits and (kind != "eval_reply" or len(header["slots"]) == extra):
            return
    decode_header(header, frames)  # raises the ProtocolError that says what is wrong


def _check_batch(batch: Batch) -> None:
    if not 1 <= len(batch.sizes) <= BATCH_MESSAGES:
        raise ProtocolError(f"a 'batch' carries 1 to {BATCH_MESSAGES} messages, not {len(batch.sizes)}")
    if any(size < 1 for size in batch.sizes) or sum(batch.sizes) != len(batch.frames):
        raise ProtocolError(
            f"a 'batch' of {len(batch.frames)} frames cannot hold messages of {list(batch.sizes)} frames"
        )


def batches(messages: Sequence[list[bytes]]) -> list[list[bytes]]:
    """What to send for ``messages`` (each one message's frames), in order.

    Consecutive small messages are packed into :class:`Batch` messages of at most
    :data:`BATCH_MESSAGES` messages and about :data:`BATCH_BYTES`; a large message, or
    one that ends up alone, is sent as it is.
    """
    out: list[list[bytes]] = []
    group: list[list[bytes]] = []
    size = 0

    def close() -> None:
        nonlocal size
        if len(group) == 1:
            out.append(group[0])
        elif group:
            frames = [frame for message in group for frame in message]
            out.append(encode(Batch(sizes=tuple(len(m) for m in group), frames=tuple(frames))))
        group.clear()
        size = 0

    for message in messages:
        length = sum(map(len, message))
        if length >= BATCH_BYTES:
            close()
            out.append(message)
            continue
        if len(group) == BATCH_MESSAGES or size + length > BATCH_BYTES:
            close()
        group.append(message)
        size += length
    close()
    return out


def result_of(outcome: Message | ZmqcrossError) -> Any:
    """The value a request ended with: the decoded :class:`Reply`, or raise the error it carried."""
    if isinstance(outcome, Reply):
        return load(outcome.data)
    if isinstance(outcome, ErrorReply):
        raise outcome.error.to_exception()
    if isinstance(outcome, ZmqcrossError):
        raise outcome
    raise ProtocolError(f"a {outcome.type!r} message is not an answer to this request")


def readdress(outcome: Message | ZmqcrossError, reply_to: int) -> Message:
    """The answer ``outcome`` as an answer to request ``reply_to`` (a relay's own id for it).

    Body frames are kept as they are: a relay changes the header, never the payload.
    """
    if isinstance(outcome, (Reply, ErrorReply, EvalReply)):
        return dataclasses.replace(outcome, reply_to=reply_to)
    if isinstance(outcome, ZmqcrossError):
        return ErrorReply(reply_to=reply_to, error=ErrorInfo.from_exception(outcome, with_traceback=False))
    error = ProtocolError(f"a {outcome.type!r} message is not an answer")
    return ErrorReply(reply_to=reply_to, error=ErrorInfo.from_exception(error, with_traceback=False))


def answer_frames(msg: Message, limits: Limits = DEFAULT_LIMITS) -> list[bytes]:
    """``msg`` encoded and checked against ``limits``. An answer over them (a gathered eval
    of many big results) becomes an :class:`ErrorReply` saying so, so that its caller hears
    why at once instead of waiting out its timeout; anything else over them raises."""
    return fit_answer(encode(msg), getattr(msg, "reply_to", None), limits)


def fit_answer(frames: list[bytes], reply_to: int | None, limits: Limits = DEFAULT_LIMITS) -> list[bytes]:
    """An encoded answer to ``reply_to`` as :func:`answer_frames` sends it: itself, or the
    :class:`ErrorReply` saying it is too large (raises for a message that answers nothing)."""
    try:
        check_limits(frames, limits)
    except MessageTooLarge as exc:
        if reply_to is None:
            raise
        error = MessageTooLarge(f"the answer to request {reply_to} is too large to send: {exc.message}")
        return encode(
            ErrorReply(reply_to=reply_to, error=ErrorInfo.from_exception(error, with_traceback=False))
        )
    return frames
