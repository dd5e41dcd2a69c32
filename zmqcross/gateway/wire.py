"""Discord Gateway v10 on the wire, server side: opcodes, close codes, frames. No sockets.

What the server sends is one JSON object per WebSocket message. How it travels depends
on the ``compress`` query parameter the client connected with:

* none: a text frame per message.
* ``zlib-stream``: ONE zlib compressor for the whole connection, each message flushed
  with ``Z_SYNC_FLUSH`` (so it ends in ``00 00 ff ff``) and sent as a binary frame. The
  client keeps one decompressor and waits for that suffix, so a fresh compressor per
  message breaks it on the second message and ``zlib.compress()`` (no sync marker)
  makes it wait forever.
* ``zstd-stream``: one zstd stream per connection, each message flushed to a block
  boundary. Only when the ``zstandard`` package is importable; otherwise the server
  answers with plain text frames, which discord.py accepts in every mode.

:func:`check_identify` and :func:`check_resume` judge a client's IDENTIFY and RESUME, and
a :class:`Session` numbers dispatches and decides what a RESUME replays, so the server's
socket loop only acts on their verdicts.
"""

from __future__ import annotations

import collections
import enum
import zlib
from dataclasses import dataclass
from typing import Any, Final, Protocol

import orjson

try:
    import zstandard  # type: ignore[import-not-found, unused-ignore]
except ImportError:  # optional: discord.py only asks for zstd-stream when it has it too
    zstandard = None

__all__ = [
    "DEFAULT_HEARTBEAT_INTERVAL",
    "MAX_CLIENT_PAYLOAD_BYTES",
    "MAX_REPLAY_EVENTS",
    "ZSTD_AVAILABLE",
    "CloseCode",
    "FrameEncoder",
    "Identify",
    "Op",
    "Resume",
    "Session",
    "check_identify",
    "check_resume",
    "dispatch_payload",
    "encoder_for",
    "for_intents",
    "payload",
]

DEFAULT_HEARTBEAT_INTERVAL: Final = 41.25
"""Seconds between client heartbeats that HELLO asks for (what Discord sends)."""
MAX_CLIENT_PAYLOAD_BYTES: Final = 4096
"""Discord refuses client payloads over 4096 bytes; so does this server (aiohttp closes with 1009)."""
MAX_REPLAY_EVENTS: Final = 256
"""Dispatches a session keeps for RESUME; a client further behind gets INVALID_SESSION."""
ZSTD_AVAILABLE: Final = zstandard is not None


class Op(enum.IntEnum):
    """Gateway opcodes (the ``op`` key)."""

    DISPATCH = 0
    HEARTBEAT = 1
    IDENTIFY = 2
    PRESENCE_UPDATE = 3
    VOICE_STATE_UPDATE = 4
    RESUME = 6
    RECONNECT = 7
    REQUEST_GUILD_MEMBERS = 8
    INVALID_SESSION = 9
    HELLO = 10
    HEARTBEAT_ACK = 11


class CloseCode(enum.IntEnum):
    """Gateway close codes. discord.py gives up on 4004 and 4010-4014 and resumes on the others."""

    UNKNOWN_ERROR = 4000
    UNKNOWN_OPCODE = 4001
    DECODE_ERROR = 4002
    NOT_AUTHENTICATED = 4003
    AUTHENTICATION_FAILED = 4004
    ALREADY_AUTHENTICATED = 4005
    INVALID_SEQ = 4007
    RATE_LIMITED = 4008
    SESSION_TIMED_OUT = 4009
    INVALID_SHARD = 4010
    SHARDING_REQUIRED = 4011
    INVALID_API_VERSION = 4012
    INVALID_INTENTS = 4013
    DISALLOWED_INTENTS = 4014


def payload(op: Op, data: Any = None) -> bytes:
    """A non-dispatch gateway message (HELLO, HEARTBEAT_ACK, INVALID_SESSION...) as JSON bytes."""
    return orjson.dumps({"op": int(op), "d": data, "s": None, "t": None})


def dispatch_payload(event: str, data: Any, sequence: int) -> bytes:
    """A dispatch (op 0) message as JSON bytes; ``data`` may be an ``orjson.Fragment``."""
    return orjson.dumps({"op": 0, "d": data, "s": sequence, "t": event})


class FrameEncoder(Protocol):
    """Turns one JSON message into one WebSocket frame's payload, keeping stream state."""

    binary: bool
    """True: send as a binary frame (compressed); False: a text frame."""

    def encode(self, message: bytes, /) -> bytes: ...


class _Plain:
    binary = False

    def encode(self, message: bytes, /) -> bytes:
        return message


class _ZlibStream:
    binary = True

    def __init__(self) -> None:
        self._compressor = zlib.compressobj()

    def encode(self, message: bytes, /) -> bytes:
        return self._compressor.compress(message) + self._compressor.flush(zlib.Z_SYNC_FLUSH)


class _ZstdStream:
    binary = True

    def __init__(self) -> None:
        assert zstandard is not None
        self._compressor = zstandard.ZstdCompressor().compressobj()

    def encode(self, message: bytes, /) -> bytes:
        assert zstandard is not None
        block: bytes = self._compressor.compress(message) + self._compressor.flush(
            zstandard.COMPRESSOBJ_FLUSH_BLOCK
        )
        return block


def encoder_for(compress: str | None) -> FrameEncoder:
    """The encoder for a connection's ``compress`` query parameter (None: plain text).

    Raises ValueError for a compression Discord does not offer.
    """
    if compress is None or compress == "":
        return _Plain()
    if compress == "zlib-stream":
        return _ZlibStream()
    if compress == "zstd-stream":
        return _ZstdStream() if ZSTD_AVAILABLE else _Plain()
    raise ValueError(f"unsupported compress={compress!r} (expected zlib-stream or zstd-stream)")


@dataclass(frozen=True, slots=True)
class Identify:
    """An accepted IDENTIFY: which shard of how many the connection serves."""

    shard_id: int
    shard_count: int
    intents: int = 0


@dataclass(frozen=True, slots=True)
class Resume:
    """An acceptable-looking RESUME; the server still has to find the session."""

    session_id: str
    sequence: int


def _token_matches(sent: object, expected: str | None) -> bool:
    if expected is None:
        return True
    # The gateway gets the bare token; tolerate the REST form "Bot <token>" too.
    return isinstance(sent, str) and sent.removeprefix("Bot ") == expected


def check_identify(data: Any, *, token: str | None) -> Identify | CloseCode:
    """Judge an IDENTIFY ``d``: the shard it asks for, or the close code to answer with.

    ``token`` None accepts any token. A missing ``shard`` means shard 0 of 1, as on Discord.
    """
    if not isinstance(data, dict) or not isinstance(data.get("token"), str):
        return CloseCode.DECODE_ERROR
    if not _token_matches(data["token"], token):
        return CloseCode.AUTHENTICATION_FAILED
    shard = data.get("shard", [0, 1])
    if (
        not isinstance(shard, list)
        or len(shard) != 2
        or not all(type(n) is int for n in shard)
        or not 0 <= shard[0] < shard[1]
    ):
        return CloseCode.INVALID_SHARD
    intents = data.get("intents", 0)
    return Identify(shard_id=shard[0], shard_count=shard[1], intents=intents if type(intents) is int else 0)


def check_resume(data: Any, *, token: str | None) -> Resume | CloseCode:
    """Judge a RESUME ``d``: the session and sequence it resumes from, or the close code."""
    if not isinstance(data, dict) or not isinstance(data.get("session_id"), str):
        return CloseCode.DECODE_ERROR
    if not _token_matches(data.get("token"), token):
        return CloseCode.AUTHENTICATION_FAILED
    sequence = data.get("seq")
    # discord.py resumes with seq None when it never saw a dispatch; nothing was seen.
    return Resume(session_id=data["session_id"], sequence=sequence if type(sequence) is int else 0)


GUILD_MEMBERS_INTENT: Final = 1 << 1
GUILD_MESSAGES_INTENT: Final = 1 << 9
GUILD_MESSAGE_TYPING_INTENT: Final = 1 << 11
MESSAGE_CONTENT_INTENT: Final = 1 << 15
# Guild events a session receives only with this intent (Discord's intents table).
_EVENT_INTENTS: Final = {
    "MESSAGE_CREATE": GUILD_MESSAGES_INTENT,
    "MESSAGE_UPDATE": GUILD_MESSAGES_INTENT,
    "MESSAGE_DELETE": GUILD_MESSAGES_INTENT,
    "MESSAGE_DELETE_BULK": GUILD_MESSAGES_INTENT,
    "TYPING_START": GUILD_MESSAGE_TYPING_INTENT,
    "GUILD_MEMBER_ADD": GUILD_MEMBERS_INTENT,
    "GUILD_MEMBER_UPDATE": GUILD_MEMBERS_INTENT,
    "GUILD_MEMBER_REMOVE": GUILD_MEMBERS_INTENT,
}
_CONTENT_FIELDS: Final = ("content", "embeds", "attachments", "components", "poll")


def for_intents(event: str, data: Any, intents: int, *, bot_id: str) -> Any:
    """``data`` as a session with ``intents`` gets ``event``, or None when it does not get it.

    Discord sends guild message, typing and member events only to sessions with their intent,
    and without MESSAGE_CONTENT empties ``content``, ``embeds``, ``attachments``,
    ``components`` and ``poll`` of messages, except the bot's own and those mentioning it.
    """
    needed = _EVENT_INTENTS.get(event)
    if needed is not None and not intents & needed:
        return None
    if (
        event in ("MESSAGE_CREATE", "MESSAGE_UPDATE")
        and isinstance(data, dict)
        and not intents & MESSAGE_CONTENT_INTENT
        and (data.get("author") or {}).get("id") != bot_id
        and not any(isinstance(m, dict) and m.get("id") == bot_id for m in data.get("mentions") or [])
    ):
        data = {**data, **{k: "" if k == "content" else [] for k in _CONTENT_FIELDS if k in data}}
        data.pop("poll", None)
    return data


class Session:
    """One identified shard session: numbers its dispatches, keeps the tail a RESUME replays.

    ``s`` rises by one per dispatch for the whole session, across the connections that
    resume it, which is what discord.py sends back in RESUME's ``seq``.
    """

    __slots__ = ("_replay", "intents", "sequence", "session_id", "shard_count", "shard_id")

    def __init__(self, session_id: str, shard: Identify, *, replay_limit: int = MAX_REPLAY_EVENTS) -> None:
        self.session_id = session_id
        self.shard_id = shard.shard_id
        self.shard_count = shard.shard_count
        self.intents = shard.intents
        self.sequence = 0
        """The ``s`` of the last dispatch."""
        self._replay: collections.deque[tuple[int, bytes]] = collections.deque(maxlen=replay_limit)

    def dispatch(self, event: str, data: Any, *, keep: bool = True) -> bytes:
        """Number and encode dispatch ``event``; ``keep`` it for a RESUME (not READY: a client
        that missed READY has no session to resume)."""
        self.sequence += 1
        message = dispatch_payload(event, data, self.sequence)
        if keep:
            self._replay.append((self.sequence, message))
        return message

    def missed_since(self, sequence: int) -> list[bytes] | None:
        """The dispatches after ``sequence`` for a RESUME, or None when some are no longer kept."""
        if not 1 <= sequence <= self.sequence:
            return None
        if sequence == self.sequence:
            return []
        if not self._replay or self._replay[0][0] > sequence + 1:
            return None
        return [message for seq, message in self._replay if seq > sequence]
